"""Replay benchmarks: the truncation sweep and the layer ablations from one pass per batch, against
evaluating every cut or ablated model on its own, and against the floor.

    python -m benchmarks.bench_replay [--device cpu|cuda] [--limit 1000] [--batch-size 32] [--repeats 3]

The embedded MiniLM as a classifier (6 layers, a fresh 2-label head), the first ``--limit`` examples of
the movie-sentiment validation split, ``max_length`` 128 (the stages' default), side by side in one
process, one timed run each after a warm-up:

1. Floor unit: one evaluation of the classifier with all its layers (:func:`tunescope.inference.predictions`:
   tokenising, length-sorted batches, forward, argmax).
2. Truncation sweep, ``k = L..1``: old = ``predictions(truncate(tuned, k))`` for each k (L evaluations of
   ever shorter models, what ``truncation_sweep`` ran before); new =
   :func:`tunescope.replay.replay_predictions` with ``Variant(k)``, what it runs now. Floor: one forward
   with all layers plus L heads, about 1 unit.
3. Ablations of the ``ablation`` stage (3L+1 models): old = each model copied (``restore_layers`` /
   ``reinit_layers``) and evaluated; new = the stage's replayed evaluation (copies made once, each ablation
   run from its lowest changed layer up). Floor: the layer evaluations that needs, in units of L layers
   (``(L + sum over ablations S of L - min(S) + 1) / L``, 11.5 for L = 6).

Goal: new / floor <= 1.3 for both. Both paths' predictions are checked to be identical. The old paths
run once; the unit and the new paths ``--repeats`` times, interleaved, and the fastest run of each
counts. On a CPU the ratios use this process's CPU time (``time.process_time``), which other load on
shared cores disturbs less than wall time; on a GPU, wall time. Both are printed.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from benchmarks._common import markdown_table, save
from tunescope.data import get_task
from tunescope.inference import predictions
from tunescope.models import load_classifier, load_encoder
from tunescope.replay import Variant, replay_predictions
from tunescope.stages import ablation
from tunescope.surgery import truncate


def once(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall time and this process's CPU time of one call of ``fn`` (CUDA synchronised), and its result."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--limit", type=int, default=1000, help="validation examples")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="runs of the floor unit and the new paths")
    args = parser.parse_args()
    tuned = load_classifier(
        None, num_labels=2, problem_type="single_label_classification", device=args.device
    )
    base = load_encoder(None, device=args.device)
    examples = get_task("movie-sentiment").load("validation", limit=args.limit)
    options: dict[str, Any] = {"batch_size": args.batch_size, "max_length": 128}
    n_layers = tuned.num_layers
    keeps = list(range(n_layers, 0, -1))
    plan = ablation.ablations(n_layers)

    def unit() -> tuple[float, float]:
        wall, cpu, _ = once(lambda: predictions(tuned, examples, **options))
        return wall, cpu

    def old_truncation() -> list[Any]:
        return [predictions(truncate(tuned, k), examples, **options) for k in keeps]

    def new_truncation() -> list[Any]:
        return [
            r.predictions for r in replay_predictions(tuned, examples, [Variant(k) for k in keeps], **options)
        ]

    def old_ablations() -> list[Any]:  # the stage's own one-model-at-a-time path (what ALBERT takes)
        return ablation._one_by_one(tuned, base, examples, plan, seed=0, progress=False, **options)

    def new_ablations() -> list[Any]:
        return ablation._replayed(tuned, base, examples, plan, seed=0, **options)

    predictions(tuned, examples.head(4 * args.batch_size), **options)  # warm-up
    # the baselines run once; the floor unit and the new paths run --repeats times, interleaved, and the
    # fastest of each counts (the least disturbed by other load on shared machines)
    timings: dict[str, tuple[float, float]] = {}
    found: dict[str, list[Any]] = {}
    for name, fn in [("old truncation", old_truncation), ("old ablations", old_ablations)]:
        wall, cpu, found[name] = once(fn)
        timings[name] = (wall, cpu)
    units = []
    for _ in range(args.repeats):
        units.append(unit())
        for name, fn in [("new truncation", new_truncation), ("new ablations", new_ablations)]:
            wall, cpu, found[name] = once(fn)
            best = timings.get(name, (wall, cpu))
            timings[name] = (min(wall, best[0]), min(cpu, best[1]))
    same = all(
        np.array_equal(a.predictions, b.predictions)
        for old, new in (("old truncation", "new truncation"), ("old ablations", "new ablations"))
        for a, b in zip(found[old], found[new], strict=True)
    )
    clock = 0 if args.device.startswith("cuda") else 1  # CPU: this process's CPU time, less load-sensitive
    unit_s = min(u[clock] for u in units)
    floors = {
        "truncation": 1.0,  # one all-layer forward (+ L heads)
        "ablations": (n_layers + sum(n_layers - min(s) + 1 for _, s in plan if s)) / n_layers,
    }
    rows = [
        {
            "benchmark": f"floor unit: one all-layer evaluation (best of {args.repeats})",
            "wall_s": min(u[0] for u in units),
            "cpu_s": min(u[1] for u in units),
            "vs_old": "",
            "vs_floor": 1.0,
        }
    ]
    for what in ("truncation", "ablations"):
        old, new = timings[f"old {what}"], timings[f"new {what}"]
        for label, (wall, cpu) in (("old", old), ("new", new)):
            rows.append(
                {
                    "benchmark": f"{what}, {label} (floor {floors[what]:.1f} units)",
                    "wall_s": wall,
                    "cpu_s": cpu,
                    "vs_old": (wall, cpu)[clock] / old[clock],
                    "vs_floor": (wall, cpu)[clock] / (floors[what] * unit_s),
                }
            )
    print(markdown_table(rows))
    units_text = ", ".join(f"{u[clock]:.2f}" for u in units)
    payload = {
        "rows": rows,
        "device": args.device,
        "examples": len(examples),
        "identical": same,
        "units": units,
    }
    print(
        f"\nratios from {'wall' if clock == 0 else 'CPU'} time; floor units measured: {units_text} s; "
        f"predictions identical old vs new: {same}; {len(examples)} examples on {args.device}"
    )
    print(f"path {save('replay', payload)}")


if __name__ == "__main__":
    main()
