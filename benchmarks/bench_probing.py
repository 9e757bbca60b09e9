"""Probing and variability benchmarks: all-layer probes vs scikit-learn, one-pass variability.

    python -m benchmarks.bench_probing [--quick] [--device cuda] [--model DIR] [--tags FILE]

Prints markdown tables and writes ``bench-results/probing.json``.

Data: MiniLM (``tunescope.load_encoder()``, 7 hidden states 0..6, width 384) token representations of
about 20,000 words of the builtin movie-review snippets, labelled with spaCy's silver UPOS tags (17
classes). Without spaCy the tags can come from ``--tags`` (a JSON file this script writes with
``--save-tags``); with neither, synthetic features of the same shape (17 Gaussian classes) are used and
the tables say so. ``--model`` loads another copy of the encoder (e.g. a half-precision copy carried to
a GPU machine).

1. Probes on all 7 layers over the l2 grid 1e-4..1, strength chosen on validation (whole sentences held
   out: 64 % train, 16 % validation, 20 % test): ``LayerProbes`` (one batched fit) vs scikit-learn's
   ``LogisticRegression(C=1/(l2 n))`` per layer per strength (the reference in
   ``tunescope.testing.reference_probing``) vs a plain ``torch.optim.LBFGS`` on the summed objective of
   all sub-problems (zero start, no preconditioning). Same tol (1e-4) and max_iter (100) for all three.
2. Variability of all layers in one pass (``layer_variability``) vs one ``variability`` call per layer.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._common import markdown_table, save, timed
from tunescope.probing import LayerProbes
from tunescope.testing.reference_probing import sklearn_probes, sklearn_score
from tunescope.variability import layer_variability, variability

GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
MAX_ITER, TOL = 100, 1e-4


def silver_examples(n_words: int, tags_file: str | None, save_tags: str | None) -> tuple[Any, str]:
    """(TokenExamples of about ``n_words`` words, description) or (None, reason)."""
    from tunescope.data import get_task
    from tunescope.data.tokens import TokenExamples

    if tags_file:
        raw = json.loads(Path(tags_file).read_text())
        examples = TokenExamples(
            raw["words"], raw["tags"], tuple(raw["tag_names"]), raw["task"], "train", True
        )
        return _first_words(examples, n_words), f"silver UPOS tags read from {tags_file}"
    try:
        from tunescope.data.silver import silver_tags

        texts = get_task("movie-sentiment").load("train").texts
        examples = silver_tags(texts[: max(50, n_words // 12)], field="pos")
    except ImportError as err:  # MissingExtraError is an ImportError
        return None, f"no spaCy ({err})"
    examples = _first_words(examples, n_words)
    if save_tags:
        payload = {"words": examples.words, "tags": examples.tags, "tag_names": list(examples.tag_names)}
        Path(save_tags).write_text(json.dumps({**payload, "task": examples.task}))
    return examples, "spaCy en_core_web_sm silver UPOS tags"


def _first_words(examples: Any, n_words: int) -> Any:
    total, keep = 0, []
    for i, words in enumerate(examples.words):
        if total >= n_words:
            break
        keep.append(i)
        total += len(words)
    return examples.subset(keep)


def minilm_data(
    n_words: int, model: str | None, tags_file: str | None, save_tags: str | None, device: str
) -> tuple[dict[int, torch.Tensor], np.ndarray, np.ndarray, str] | None:
    """(layer -> (n_words, 384) tensors, labels, sentence of each row, description), or None."""
    from tunescope import extract, load_encoder

    examples, what = silver_examples(n_words, tags_file, save_tags)
    if examples is None:
        print(f"real data unavailable: {what}")
        return None
    encoder = load_encoder(model, device=device, dtype=torch.float32)
    reps = extract(encoder, examples.texts, pooling="tokens", words=examples.words, word_labels=examples.tags)
    assert reps.labels is not None and reps.example_index is not None
    tensors = {layer: reps[layer] for layer in reps.layers}
    return tensors, np.asarray(reps.labels), reps.example_index.numpy(), f"MiniLM tokens, {what}"


def synthetic_data(n_words: int) -> tuple[dict[int, torch.Tensor], np.ndarray, np.ndarray, str]:
    """17 Gaussian classes (Zipf-like sizes) in 7 layers of width 384 whose separation grows with depth."""
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    share = 1.0 / np.arange(1, 18)
    labels = rng.choice(17, size=n_words, p=share / share.sum())
    means = torch.randn(17, 384, generator=g)
    tensors = {}
    for layer in range(7):
        noise = torch.randn(n_words, 384, generator=g)
        tensors[layer] = noise + (0.05 + 0.03 * layer) * means[torch.from_numpy(labels)] + 2.0
    return tensors, labels, np.arange(n_words) // 20, "synthetic: 17 Gaussian classes, width 384"


def plain_lbfgs(
    train: dict[int, torch.Tensor],
    y: np.ndarray,
    val: dict[int, torch.Tensor],
    y_val: np.ndarray,
    test: dict[int, torch.Tensor],
    y_test: np.ndarray,
    device: str,
) -> dict[int, float]:
    """torch.optim.LBFGS on the sum of all (layer, l2) objectives (one shared history and line search),
    zero start, standardised float32 features; l2 chosen per layer on validation. Test accuracy per layer."""
    layers = sorted(train)

    def stack(part: dict[int, torch.Tensor]) -> torch.Tensor:
        return torch.stack([part[layer] for layer in layers]).to(device)

    x = stack(train)
    mean, std = x.mean(1, keepdim=True), x.std(1, keepdim=True).clamp_min(1e-12)

    def features(raw: torch.Tensor) -> torch.Tensor:
        z = (raw - mean) / std
        return torch.cat([z, torch.ones(*z.shape[:2], 1, device=device)], dim=-1)

    x = features(x)
    classes, codes = np.unique(y, return_inverse=True)
    target = torch.from_numpy(codes).to(device)
    n_layers, n, d1 = x.shape
    c, k = len(classes), len(GRID)
    l2 = torch.tensor(GRID, device=device).view(1, k, 1, 1)
    w = torch.zeros(n_layers, k, d1, c, device=device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w], lr=1, max_iter=MAX_ITER, tolerance_grad=TOL, history_size=10, line_search_fn="strong_wolfe"
    )

    def logits_of(z: torch.Tensor) -> torch.Tensor:
        flat = w.permute(0, 2, 1, 3).reshape(n_layers, d1, k * c)
        return torch.bmm(z, flat).view(n_layers, z.shape[1], k, c)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        log_p = torch.log_softmax(logits_of(x), dim=-1)
        nll = -log_p.gather(-1, target.view(1, n, 1, 1).expand(n_layers, n, k, 1)).mean(dim=1).sum()
        loss = nll + 0.5 * (l2 * w[:, :, :-1].square()).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():

        def accuracy(part: dict[int, torch.Tensor], labels: np.ndarray) -> np.ndarray:
            predicted = classes[logits_of(features(stack(part))).argmax(-1).cpu().numpy()]
            return (predicted == labels[None, :, None]).mean(axis=1)  # (n_layers, n_l2)

        best = accuracy(val, y_val).argmax(axis=1)
        on_test = accuracy(test, y_test)
    return {layer: float(on_test[i, best[i]]) for i, layer in enumerate(layers)}


def probe_benchmark(
    data: tuple, devices: list[str], with_plain: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(per-layer accuracy rows, timing rows): scikit-learn once on the CPU, tunescope (and the plain
    batched L-BFGS) on each device."""
    tensors, labels, sentence, source = data
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(np.unique(sentence))  # whole sentences go to one split
    place = np.empty(int(shuffled.max()) + 1, dtype=np.int64)
    place[shuffled] = np.arange(len(shuffled))
    position = place[sentence] / len(shuffled)
    train_rows, test_rows = position < 0.64, position >= 0.8
    val_rows = ~train_rows & ~test_rows

    def take(rows: np.ndarray, where: str) -> dict[int, torch.Tensor]:
        index = torch.from_numpy(np.flatnonzero(rows))
        return {layer: x[index].to(where) for layer, x in tensors.items()}

    y_train, y_val, y_test = labels[train_rows], labels[val_rows], labels[test_rows]
    print(
        f"{source}: {len(tensors)} layers, {len(labels)} rows ({train_rows.sum()} train, {val_rows.sum()} "
        f"validation, {test_rows.sum()} test), {len(np.unique(labels))} classes",
        flush=True,
    )
    start = time.perf_counter()
    reference = sklearn_probes(
        take(train_rows, "cpu"),
        y_train,
        take(val_rows, "cpu"),
        y_val,
        l2_grid=GRID,
        max_iter=MAX_ITER,
        tol=TOL,
    )
    sk_s = time.perf_counter() - start
    theirs = sklearn_score(reference, take(test_rows, "cpu"), y_test)
    print(f"scikit-learn, {len(tensors)} layers x {len(GRID)} strengths: {sk_s:.1f} s", flush=True)
    accuracy_rows = [
        {"layer": layer, "sklearn": theirs[layer], "sklearn_l2": reference[layer]["l2"]}
        for layer in sorted(tensors)
    ]
    timing_rows = [
        {
            "method": "scikit-learn LogisticRegression per layer per l2",
            "device": "cpu",
            "seconds": sk_s,
            "speed_up": 1.0,
            "max_abs_diff_points": 0.0,
        }
    ]
    for device in devices:
        train, val, test = take(train_rows, device), take(val_rows, device), take(test_rows, device)
        probes = LayerProbes(l2_grid=GRID, max_iter=MAX_ITER, tol=TOL, device=device)
        repeats = 3 if device != "cpu" else 1
        fit = partial(probes.fit, train, y_train, val, y_val)
        ours_s = timed(fit, repeats=repeats, warmup=1)
        ours = probes.score(test, y_test)
        print(f"tunescope LayerProbes on {device}: {ours_s:.2f} s; iterations {probes.n_iter_}", flush=True)
        diffs = [100 * abs(ours[layer] - theirs[layer]) for layer in ours]
        timing_rows.append(
            {
                "method": "tunescope LayerProbes (one batched fit)",
                "device": device,
                "seconds": ours_s,
                "speed_up": sk_s / ours_s,
                "max_abs_diff_points": max(diffs),
            }
        )
        for row in accuracy_rows:
            row[f"tunescope_{device}"] = ours[row["layer"]]
            row[f"l2_{device}"] = probes.l2_[row["layer"]]
        if with_plain:
            start = time.perf_counter()
            plain = plain_lbfgs(train, y_train, val, y_val, test, y_test, device)
            if device != "cpu":
                torch.cuda.synchronize()
            plain_s = time.perf_counter() - start
            print(f"plain torch.optim.LBFGS on {device}: {plain_s:.2f} s", flush=True)
            timing_rows.append(
                {
                    "method": "plain torch.optim.LBFGS on the summed objective",
                    "device": device,
                    "seconds": plain_s,
                    "speed_up": sk_s / plain_s,
                    "max_abs_diff_points": max(100 * abs(plain[layer] - theirs[layer]) for layer in plain),
                }
            )
            for row in accuracy_rows:
                row[f"plain_{device}"] = plain[row["layer"]]
    return accuracy_rows, timing_rows


def variability_benchmark(data: tuple, device: str) -> list[dict[str, Any]]:
    tensors, labels, _, _ = data
    on_device = {layer: x.to(device) for layer, x in tensors.items()}
    one_pass = timed(lambda: layer_variability(on_device, labels), repeats=3, warmup=1)
    per_layer = timed(lambda: [variability(x, labels) for x in on_device.values()], repeats=3, warmup=1)
    values = layer_variability(on_device, labels)
    check = {layer: variability(x, labels) for layer, x in on_device.items()}
    worst = max(abs(values[k] - check[k]) / abs(check[k]) for k in values)
    curve = ", ".join(f"{k}: {v:.3g}" for k, v in values.items())
    print(f"variability per layer: {curve}")
    return [
        {
            "method": "layer_variability (one pass, VariabilityStats)",
            "device": device,
            "seconds": one_pass,
            "max_rel_diff": worst,
        },
        {"method": "variability() per layer", "device": device, "seconds": per_layer, "max_rel_diff": 0.0},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4,000 words instead of 20,000")
    parser.add_argument("--words", type=int, default=None, help="number of words (overrides --quick)")
    parser.add_argument("--device", default="cpu", help="where tunescope fits: cpu, cuda or both (cpu,cuda)")
    parser.add_argument("--model", default=None, help="encoder folder (default: the embedded MiniLM)")
    parser.add_argument("--tags", default=None, help="silver tags JSON written by --save-tags")
    parser.add_argument("--save-tags", default=None, help="write the silver tags used here to this JSON")
    parser.add_argument("--synthetic", action="store_true", help="skip the encoder: synthetic features")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain torch.optim.LBFGS baseline")
    args = parser.parse_args()
    n_words = args.words or (4000 if args.quick else 20000)
    data = (
        None
        if args.synthetic
        else minilm_data(n_words, args.model, args.tags, args.save_tags, args.device.split(",")[0])
    )
    if data is None:
        data = synthetic_data(n_words)
    devices = args.device.split(",")
    accuracy_rows, timing_rows = probe_benchmark(data, devices, not args.no_plain)
    print("\n### All-layer probes: test accuracy per layer\n\n" + markdown_table(accuracy_rows))
    print(
        "\n### All-layer probes: time (regularisation chosen on validation)\n\n" + markdown_table(timing_rows)
    )
    var_rows = [row for device in devices for row in variability_benchmark(data, device)]
    print("\n### Variability of all layers\n\n" + markdown_table(var_rows))
    path = save(
        "probing",
        {
            "source": data[3],
            "n_rows": len(data[1]),
            "accuracy": accuracy_rows,
            "timing": timing_rows,
            "variability": var_rows,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
