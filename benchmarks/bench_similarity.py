"""Similarity benchmarks: exact all-pairs linear CKA, minibatch CKA, StreamingCKA memory.

    python -m benchmarks.bench_similarity [--quick]

Prints markdown tables and writes ``bench-results/similarity.json``. Peers (ckatorch, torch-cka,
cka-pytorch, pytorch-cka) are imported guardedly and skipped when missing: install them in a separate
environment (see docs/similarity.md), never in the project's.

1. Exact all-pairs linear CKA between two stacks of layers (cross-model and both within-model
   matrices): ``tunescope.similarity.cka_matrix`` vs ckatorch's ``cka_base`` per pair vs a naive
   per-pair loop of ``tunescope.similarity.linear_cka``; the floor is the FLOPs the cheaper exact method
   needs (symmetric products counted once) over the measured float32 matmul rate.
2. Minibatch CKA (batch 256) on the same activations: ``MinibatchCKA`` vs torch-cka, cka-pytorch and
   pytorch-cka, each fed the activations through hooks on a module that replays them.
3. ``StreamingCKA`` over a stream of token vectors, run in a subprocess to measure its peak RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from benchmarks._common import markdown_table, matmul_rate, save
from tunescope.similarity import MinibatchCKA, StreamingCKA, cka_matrix, linear_cka

BATCH = 256


def activations(n: int, n_layers: int, d: int, seed: int, realistic: bool) -> list[torch.Tensor]:
    """float32 (n, d) per layer. Random: independent Gaussians. Real-ish: a residual stream with a
    large mean, a few outlier dimensions and layer-to-layer drift (as in BERT-like encoders)."""
    g = torch.Generator().manual_seed(seed)
    if not realistic:
        return [torch.randn(n, d, generator=g) for _ in range(n_layers)]
    scale = torch.ones(d)
    scale[torch.randperm(d, generator=g)[:4]] = 20.0  # outlier dimensions
    h = torch.randn(n, d, generator=g) + 3.0 * torch.randn(d, generator=g)
    out = [h * scale]
    for _ in range(n_layers - 1):
        w = torch.randn(d, d, generator=g) / math.sqrt(d)
        h = h + 0.7 * torch.tanh(h @ w) + 0.2 * torch.randn(n, d, generator=g)
        out.append(h * scale)
    return out


def fine_tuned(reps: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """Model B: model A's layers with drift that grows with depth."""
    g = torch.Generator().manual_seed(seed)
    n_layers = len(reps)
    return [x + (i / n_layers) * x.std() * torch.randn(x.shape, generator=g) for i, x in enumerate(reps)]


def seconds(fn: Callable[[], Any], repeats: int = 1) -> tuple[float, Any]:
    """Best wall time of ``repeats`` runs (the minimum is the least disturbed by other processes)."""
    best, result = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def floor_flops(n: int, dims_a: list[int], dims_b: list[int] | None) -> float:
    """FLOPs of the cheaper exact method, each symmetric product counted once (2 FLOPs per multiply-add)."""
    la, da = len(dims_a), sum(dims_a)
    if dims_b is None:
        sample = n * n * da + n * n * la * (la + 1) / 2  # Gram syrk per layer + upper-triangle inner products
        feature = n * da * (da + 1)  # one syrk of the concatenation
    else:
        lb, db = len(dims_b), sum(dims_b)
        sample = n * n * (da + db) + n * n * la * lb
        feature = 2 * n * da * db + n * sum(d * d for d in dims_a + dims_b)
    return min(sample, feature)


def ckatorch_pairs() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    try:
        from ckatorch.core import cka_base
    except ImportError:
        return None
    return cka_base  # type: ignore[no-any-return]


def per_pair(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    left: list[torch.Tensor],
    right: list[torch.Tensor],
    pairs: list[tuple[int, int]],
) -> list[float]:
    """The per-pair loop a user writes without an all-pairs function."""
    return [float(fn(left[i], right[j])) for i, j in pairs]


def float64_matrix(left: list[torch.Tensor], right: list[torch.Tensor] | None) -> torch.Tensor:
    return cka_matrix([x.double() for x in left], None if right is None else [y.double() for y in right])


class PeakRate:
    """The best float32 matmul rate seen so far: re-measured around every timing, so that a floor is
    never inflated by other processes slowing the machine during one measurement."""

    def __init__(self) -> None:
        self.best = 0.0

    def measure(self) -> float:
        self.best = max([self.best, *(matmul_rate(torch.float32, size=4096) for _ in range(2))])
        return self.best


def bench_exact(quick: bool, rate: PeakRate) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    n, n_layers, d = (1024, 4, 768) if quick else (4096, 13, 768)
    a = activations(n, n_layers, d, seed=0, realistic=False)
    b = fine_tuned(a, seed=1)
    rows: list[dict[str, Any]] = []
    detail: dict[str, Any] = {"n": n, "n_layers": n_layers, "d": d}
    cka_base = ckatorch_pairs()
    cases: list[tuple[str, list[torch.Tensor], list[torch.Tensor] | None]] = [
        ("cross A x B", a, b),
        ("within A", a, None),
        ("within B", b, None),
    ]
    for label, left, right in cases:
        rate.measure()
        t_ours, ours = seconds(partial(cka_matrix, left, right), repeats=3)
        rate.measure()
        exact = float64_matrix(left, right)
        # within-model loops use the symmetry: upper triangle and diagonal only
        pairs = [(i, j) for i in range(n_layers) for j in range(n_layers) if right is not None or j >= i]
        others = left if right is None else right
        subset = pairs if quick else pairs[:3]
        t_naive, _ = seconds(partial(per_pair, linear_cka, left, others, subset))
        t_naive *= len(pairs) / len(subset)
        flops = floor_flops(n, [d] * n_layers, None if right is None else [d] * n_layers)
        row: dict[str, Any] = {
            "matrix": label,
            "tunescope s": t_ours,
            "naive per-pair s": t_naive,
            "ckatorch s": None,
            "vs ckatorch": None,
            "floor s": flops,  # FLOPs for now: divided by the best rate once every timing is done
            "vs floor": None,
            "max |f32 - f64|": float((ours - exact).abs().max()),
        }
        if cka_base is not None:
            t_peer, peer = seconds(partial(per_pair, cka_base, left, others, subset))
            t_peer *= len(pairs) / len(subset)
            row["ckatorch s"] = t_peer
            row["vs ckatorch"] = t_peer / t_ours
            detail[f"{label}: max |ckatorch - tunescope|"] = max(
                abs(p - float(exact[i, j])) for p, (i, j) in zip(peer, subset, strict=True)
            )
        detail[f"{label}: pairs timed for per-pair loops"] = f"{len(subset)} of {len(pairs)}"
        rows.append(row)
    best = rate.measure()
    for row in rows:
        row["floor s"] = row["floor s"] / best
        row["vs floor"] = row["tunescope s"] / row["floor s"]
    detail["float32 matmul GFLOP/s used for the floor (best seen)"] = best / 1e9
    # agreement with float64 on real-ish activations (timing is the same as for random ones)
    ra = activations(n, n_layers, d, seed=2, realistic=True)
    rb = fine_tuned(ra, seed=3)
    realistic: list[tuple[str, list[torch.Tensor], list[torch.Tensor] | None]] = [
        ("real-ish cross", ra, rb),
        ("real-ish within", ra, None),
    ]
    for label, left, right in realistic:
        got = cka_matrix(left, right)
        exact = float64_matrix(left, right)
        detail[f"{label}: max |f32 - f64|"] = float((got - exact).abs().max())
        for space in ("sample", "feature"):
            forced = cka_matrix(left, right, space=space)
            detail[f"{label} ({space} space): max |f32 - f64|"] = float((forced - exact).abs().max())
    return rows, detail


class Replay(nn.Module):
    """A 'layer' that returns stored activations for the example indices it is given."""

    def __init__(self, values: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("values", values, persistent=False)
        self.values: torch.Tensor

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.values[index]


class ReplayModel(nn.Module):
    def __init__(self, reps: list[torch.Tensor]) -> None:
        super().__init__()
        self.layers = nn.ModuleDict({f"layer{i}": Replay(x) for i, x in enumerate(reps)})

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        out = index
        for layer in self.layers.values():
            out = layer(index)
        return out


def peer_minibatch(
    name: str, a: list[torch.Tensor], b: list[torch.Tensor]
) -> Callable[[], torch.Tensor] | None:
    """A zero-argument function running peer ``name`` over all minibatches, or None if not installed."""
    from torch.utils.data import DataLoader, TensorDataset

    n = a[0].shape[0]
    names = [f"layers.layer{i}" for i in range(len(a))]
    index = torch.arange(n)
    model_a, model_b = ReplayModel(a), ReplayModel(b)
    try:
        if name == "torch-cka":
            from torch_cka import CKA as TorchCKA

            def run() -> torch.Tensor:
                loader = DataLoader(TensorDataset(index), batch_size=BATCH)
                cka = TorchCKA(model_a, model_b, "A", "B", names, names, device="cpu")
                with contextlib.redirect_stderr(io.StringIO()):
                    cka.compare(loader, loader)
                return cka.hsic_matrix  # type: ignore[no-any-return]

        elif name == "cka-pytorch":
            from cka_pytorch import CKACalculator

            def run() -> torch.Tensor:
                loader = DataLoader(TensorDataset(index, index), batch_size=BATCH)
                calc = CKACalculator(
                    model_a, model_b, names, names, device=torch.device("cpu"), verbose=False
                )
                return calc.calculate_cka_matrix(loader, num_epochs=1)  # type: ignore[no-any-return]

        elif name == "pytorch-cka":
            from cka import compute_cka

            def run() -> torch.Tensor:
                loader = DataLoader(TensorDataset(index), batch_size=BATCH)
                return compute_cka(model_a, model_b, loader, layers=names, device="cpu", progress=False)[0]  # type: ignore[no-any-return]

        else:
            raise ValueError(name)
    except ImportError:
        return None
    return run


def bench_minibatch(quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    n, n_layers, d = (1024, 4, 768) if quick else (4096, 13, 768)
    a = activations(n, n_layers, d, seed=4, realistic=False)
    b = fine_tuned(a, seed=5)

    def ours() -> torch.Tensor:
        acc = MinibatchCKA()
        for start in range(0, n, BATCH):
            rows = torch.arange(start, min(n, start + BATCH))
            acc.update([x[rows] for x in a], [y[rows] for y in b])
        return acc.compute()

    ours()  # warm-up
    t_ours, mine = seconds(ours, repeats=3)
    rows = [{"implementation": "tunescope MinibatchCKA", "seconds": t_ours, "max |diff| vs tunescope": 0.0}]
    detail: dict[str, Any] = {"n": n, "n_layers": n_layers, "d": d, "batch_size": BATCH, "skipped": []}
    for name in ("torch-cka", "cka-pytorch", "pytorch-cka"):
        run = peer_minibatch(name, a, b)
        if run is None:
            detail["skipped"].append(name)
            continue
        run()  # warm-up
        t_peer, theirs = seconds(run, repeats=3)
        diff = float((torch.as_tensor(theirs, dtype=torch.float64) - mine).abs().max())
        rows.append({"implementation": name, "seconds": t_peer, "max |diff| vs tunescope": diff})
    return rows, detail


def streaming_child(n_tokens: int, n_layers: int, d: int, batch: int) -> None:
    """Accumulate StreamingCKA over generated token vectors; print JSON with time and peak RSS."""
    g = torch.Generator().manual_seed(6)
    latent = 64
    mixes = [torch.randn(latent, d, generator=g) / math.sqrt(latent) for _ in range(n_layers)]
    offsets = [2.0 * torch.randn(d, generator=g) for _ in range(n_layers)]
    acc = StreamingCKA()
    start = time.perf_counter()
    done = 0
    while done < n_tokens:
        rows = min(batch, n_tokens - done)
        z = torch.randn(rows, latent, generator=g)
        acc.update(
            [z @ m + o + 0.5 * torch.randn(rows, d, generator=g) for m, o in zip(mixes, offsets, strict=True)]
        )
        done += rows
    matrix = acc.compute()
    elapsed = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "seconds": elapsed,
                "peak_rss_mb": peak_kib / 1024,
                "n_examples": acc.n_examples,
                "min_cka": float(matrix.min()),
            }
        )
    )


def bench_streaming(quick: bool) -> dict[str, Any]:
    n_tokens, n_layers, d, batch = (100_000 if quick else 1_000_000), 13, 384, 8192
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.bench_similarity",
        "--streaming-child",
        str(n_tokens),
        str(n_layers),
        str(d),
        str(batch),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update({"n_tokens": n_tokens, "n_layers": n_layers, "d": d, "batch": batch})
    result["tokens_per_s"] = n_tokens / result["seconds"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run of a few minutes")
    parser.add_argument(
        "--streaming-child",
        nargs=4,
        type=int,
        metavar=("TOKENS", "LAYERS", "D", "BATCH"),
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["exact", "minibatch", "streaming"])
    args = parser.parse_args(sys.argv[1:])
    if args.streaming_child:
        streaming_child(*args.streaming_child)
        return
    rate = PeakRate()
    rate32 = rate.measure()
    rate64 = max(matmul_rate(torch.float64, size=4096) for _ in range(3))
    payload: dict[str, Any] = {
        "command": "python -m benchmarks.bench_similarity" + (" --quick" if args.quick else ""),
        "quick": args.quick,
        "matmul_gflops": {"float32": rate32 / 1e9, "float64": rate64 / 1e9},
    }
    print(
        f"matmul rate: float32 {rate32 / 1e9:.1f} GFLOP/s, float64 {rate64 / 1e9:.1f} GFLOP/s "
        f"({torch.get_num_threads()} threads, torch {torch.__version__})\n"
    )
    if "exact" not in args.skip:
        rows, detail = bench_exact(args.quick, rate)
        size = f"n={detail['n']}, {detail['n_layers']} layers per model, d={detail['d']}, float32"
        print(f"### Exact all-pairs linear CKA ({size})\n")
        print(markdown_table(rows))
        if not args.quick:
            print("\nckatorch and the naive loop were timed on 3 pairs and scaled by the number of pairs.")
        print(
            "\n"
            + "\n".join(f"- {k}: {v}" for k, v in detail.items() if k not in ("n", "n_layers", "d"))
            + "\n"
        )
        payload["exact"] = {"rows": rows, **detail}
    if "minibatch" not in args.skip:
        rows, detail = bench_minibatch(args.quick)
        size = f"n={detail['n']}, {detail['n_layers']}+{detail['n_layers']} layers, d={detail['d']}"
        print(f"### Minibatch CKA, batch {BATCH} ({size})\n")
        print(markdown_table(rows))
        if detail["skipped"]:
            print(f"\nskipped (not installed): {', '.join(detail['skipped'])}")
        print()
        payload["minibatch"] = {"rows": rows, **detail}
    if "streaming" not in args.skip:
        result = bench_streaming(args.quick)
        size = f"{result['n_tokens']:,} token vectors, {result['n_layers']} layers, d={result['d']}"
        print(f"### StreamingCKA ({size}, batches of {result['batch']}, within-model)\n")
        print(markdown_table([{k: result[k] for k in ("seconds", "tokens_per_s", "peak_rss_mb")}]))
        payload["streaming"] = result
    payload["matmul_gflops"]["float32_best_seen"] = rate.best / 1e9
    path = save("similarity", payload)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
