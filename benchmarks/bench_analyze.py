"""``analyze`` stage by stage against its floor: the model passes a stage cannot avoid, at measured cost.

    python -m benchmarks.bench_analyze [--quick] [--out DIR] [--device cpu|cuda]

Runs ``tunescope analyze`` (the demo's configuration; ``--quick``: 1 epoch on 600 training examples,
300 analysis examples, 300 per experiment) into ``--out`` (default: a temporary folder), with a global
forward hook that counts, per stage, the tokens every transformer layer processes with and without
gradients. In the same process it then measures the two unit costs on the same machine:

* ``f``: seconds per example of a bare forward over the analysis texts (tuned model, pre-tokenised,
  length-sorted batches, ``inference_mode``);
* ``t``: seconds per example of a bare training loop (pre-tokenised, length-grouped batches, forward,
  backward, AdamW) over training snippets (:func:`benchmarks.bench_training.bare_seconds`), in the
  precision the run's models trained in (``--precision``; ``auto`` is bf16 on a CPU with AVX512-BF16).

A stage's floor is the passes it cannot avoid times those costs (``N`` analysis examples, ``L`` layers,
``E`` epochs a model trained, ``n`` its training and ``v`` its validation examples):

* ``finetune``: ``E * (n * t + v * f)`` of the run's model;
* ``layers``: one all-layer forward per model, ``2 * N * f``; ``similarity``: none (it reads those
  representations), so no ratio;
* ``truncation``: one forward, ``N * f`` (every cut is the head on one layer's output);
* ``ablation``: the tuned model once, then each variant from its lowest changed layer ``k`` up:
  ``N * f * (1 + sum over variants of (L - k + 1) / L)``;
* ``probes``: one token-level forward per model over the analysis texts, ``2 * N * f``, plus the probe
  optimisation (one :func:`tunescope.probing.fit_probe_tasks` of every probe, timed as the stage runs it:
  it is the lens's own kernel, measured against scikit-learn by ``bench_probing``);
* ``variability``: one forward per model over its training sample (``--variability.limit``);
* ``domains``: one forward per model over each out-of-domain set;
* training stages (``ffn``, ``selection``) and ``heads``: the layer-tokens they were counted processing,
  priced at the per-token rates of ``f`` (no gradient) and ``t`` (gradient): their passes are the
  experiment itself (each arm trained once, each curve point evaluated once).

Goals (issue 13): every inference stage <= 1.3x its floor; every training run's seconds per example
<= 1.2x ``t`` (the table of trained models). Numbers are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import markdown_table, save
from benchmarks.bench_training import bare_seconds
from tunescope import pipeline
from tunescope.data import get_task
from tunescope.finetune import FinetuneConfig, resolve_precision
from tunescope.models import load_classifier, load_encoder

INFERENCE = ("layers", "truncation", "ablation", "probes", "variability", "domains")

_stage = ["(setup)"]
_tokens: dict[str, dict[bool, int]] = defaultdict(lambda: {True: 0, False: 0})
_optimisation = [0.0]  # seconds inside fit_probe_tasks during the run


def _is_layer(module: torch.nn.Module) -> bool:
    name = type(module).__name__
    return name.endswith("Layer") and "Embedding" not in name or name == "TransformerBlock"


def _count(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
    if not _is_layer(module):
        return
    hidden = args[0] if args else kwargs.get("hidden_states", kwargs.get("x"))
    if isinstance(hidden, torch.Tensor) and hidden.dim() == 3:
        _tokens[_stage[0]][torch.is_grad_enabled()] += hidden.shape[0] * hidden.shape[1]


def run_analysis(out: Path, quick: bool, device: str) -> pipeline.AnalyzeConfig:
    """``analyze`` with the layer-token counter on; returns its config."""
    settings: dict[str, Any] = {"out": out, "device": device}
    if quick:
        settings.update(limit=300, train_limit=600, experiment_train_limit=300, epochs=1, patience=None)
    config = pipeline.AnalyzeConfig(**settings)
    original = pipeline._run_stage

    def counted(stage: pipeline.Stage, ctx: pipeline.RunContext) -> list[pipeline.Table]:
        _stage[0] = stage.name
        try:
            return original(stage, ctx)
        finally:
            _stage[0] = "(between)"

    import tunescope.probing as probing

    fit = probing.fit_probe_tasks

    def timed_fit(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fit(*args, **kwargs)
        finally:
            _optimisation[0] += time.perf_counter() - start

    handle = torch.nn.modules.module.register_module_forward_hook(_count, with_kwargs=True)
    pipeline._run_stage = counted
    probing.fit_probe_tasks = timed_fit  # type: ignore[assignment]
    try:
        pipeline.analyze(config, progress=False)
    finally:
        pipeline._run_stage = original
        probing.fit_probe_tasks = fit  # type: ignore[assignment]
        handle.remove()
    return config


def unit_costs(out: Path, config: pipeline.AnalyzeConfig, device: str) -> dict[str, float]:
    """``f`` and ``t`` (seconds per example) and the per-layer-token rates, measured now."""
    task = get_task(config.task)
    texts = task.load(config.split, limit=config.limit).texts
    tuned = out / "models" / "tuned"
    encoder = load_encoder(str(tuned) if tuned.exists() else config.model, device=device)
    tok = encoder.tokenizer
    ids = tok(list(texts), truncation=True, max_length=config.max_length or 128)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    size = config.batch_size
    batches = [
        tok.pad({"input_ids": [ids[i] for i in order[s : s + size]]}, return_tensors="pt").to(device)
        for s in range(0, len(ids), size)
    ]
    with torch.inference_mode():
        encoder.model(**batches[0])  # warm-up
        start = time.perf_counter()
        for batch in batches:
            encoder.model(**batch)
        forward = time.perf_counter() - start
    padded = sum(b["input_ids"].numel() for b in batches)
    # as many snippets as an experiment trains on: over a few batches, first-step costs inflate ``t``
    train = task.load("train", limit=config.experiment_train_limit or 2000)
    lengths = tok(list(train.texts), truncation=True, max_length=128)["input_ids"]
    precision = resolve_precision(config.precision, device)  # the bare loop trains as the run's models did
    recipe = FinetuneConfig(batch_size=size, max_length=config.max_length or 128, precision=precision)
    training = bare_seconds(config.model, train, recipe, device)
    from tunescope.finetune.loop import _batches

    train_tokens = sum(
        len(b) * max(len(lengths[i]) for i in b) for b in _batches([len(x) for x in lengths], recipe, 1)
    )
    layers = encoder.num_layers
    return {
        "f": forward / len(ids),
        "t": training / len(train),
        "f_token": forward / (padded * layers),
        "t_token": training / (train_tokens * layers),
    }


def _record(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "tunescope_finetune.json").read_text())


def floors(out: Path, config: pipeline.AnalyzeConfig, unit: dict[str, float]) -> dict[str, float]:
    """Each stage's floor in seconds (see the module docstring)."""
    manifest = json.loads((out / "manifest.json").read_text())
    f, t = unit["f"], unit["t"]
    n_analysis = len(get_task(config.task).load(config.split, limit=config.limit))
    tuned = out / "models" / "tuned"
    layers = load_classifier(str(tuned) if tuned.exists() else config.model).num_layers
    result: dict[str, float] = {}
    if tuned.exists():
        rec = _record(tuned)
        epochs = rec["stopped_epoch"]
        result["finetune"] = epochs * (rec["train_examples"] * t + rec["validation_examples"] * f)
    result["layers"] = 2 * n_analysis * f
    result["truncation"] = n_analysis * f
    from tunescope.stages.ablation import ablations

    variants = ablations(layers)[1:]
    result["ablation"] = n_analysis * f * (1 + sum((layers - min(ls) + 1) / layers for _, ls in variants))
    result["probes"] = 2 * n_analysis * f + _optimisation[0]
    var = config.options_for("variability")
    n_train = len(get_task(config.task).load("train"))
    result["variability"] = 2 * min(var.limit or n_train, n_train) * f
    domains = manifest["stages"].get("domains", {})
    if domains.get("status") == "done":
        ood = config.options_for("domains").ood_tasks or ()
        n_ood = sum(len(get_task(name).load(config.split, limit=config.limit)) for name in ood) or n_analysis
        result["domains"] = 2 * n_ood * f
    for name in ("ffn", "selection", "heads"):
        counted = _tokens.get(name, {True: 0, False: 0})
        result[name] = counted[False] * unit["f_token"] + counted[True] * unit["t_token"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a smaller run (see the module docstring)")
    parser.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or Path(tmp) / "run")
        began = time.perf_counter()
        config = run_analysis(out, args.quick, args.device)
        total = time.perf_counter() - began
        unit = unit_costs(out, config, args.device)
        floor = floors(out, config, unit)
        manifest = json.loads((out / "manifest.json").read_text())
        rows = []
        for name, record in manifest["stages"].items():
            seconds = record.get("seconds", float("nan"))
            bound = floor.get(name)
            counted = _tokens.get(name, {True: 0, False: 0})
            rows.append(
                {
                    "stage": name,
                    "status": record.get("status"),
                    "seconds": seconds,
                    "floor_s": bound if bound is not None else float("nan"),
                    "ratio": seconds / bound if bound else float("nan"),
                    "goal": "<= 1.3" if name in INFERENCE else "",
                    "layer_tokens_no_grad": counted[False],
                    "layer_tokens_grad": counted[True],
                }
            )
        trained = []
        for folder in sorted((out / "models").glob("*")):
            if not (folder / "tunescope_finetune.json").exists():
                continue
            rec = _record(folder)
            per_example = rec["train_seconds"] / max(1, rec["train_examples"] * rec["stopped_epoch"])
            trained.append(
                {
                    "model": folder.name,
                    "examples": rec["train_examples"],
                    "epochs": rec["stopped_epoch"],
                    "train_s": rec["train_seconds"],
                    "ms_per_example": 1000 * per_example,
                    "bare_ms_per_example": 1000 * unit["t"],
                    "ratio": per_example / unit["t"],
                    "goal": "<= 1.2 (full); partial arms train fewer parameters",
                }
            )
        print(f"analyze: {total:.0f} s in all ({'quick' if args.quick else 'demo'} configuration)")
        print(
            f"unit costs: f = {1000 * unit['f']:.2f} ms/example forward, "
            f"t = {1000 * unit['t']:.2f} ms/example training; "
            f"probe optimisation {_optimisation[0]:.1f} s\n"
        )
        print(markdown_table(rows))
        print()
        print(markdown_table(trained))
        print(
            "saved",
            save(
                "bench_analyze",
                {
                    "quick": args.quick,
                    "total_seconds": total,
                    "unit": unit,
                    "probe_optimisation_seconds": _optimisation[0],
                    "stages": rows,
                    "trained": trained,
                },
            ),
        )


if __name__ == "__main__":
    main()
