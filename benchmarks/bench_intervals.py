"""What the intervals and the block test cost inside the stages, on the demo's analysis configuration.

    python -m benchmarks.bench_intervals [--device cpu|cuda] [--limit 1000] [--threads 2]

Runs ``analyze`` on the embedded MiniLM and a classifier of it (head trained for one epoch on 256 snippets,
encoder frozen; the intervals' cost does not depend on how well it was trained) with the demo's 1,000
analysis examples and 1,000 resamples, for the stages that state intervals without training: similarity
(block test and per-layer change), truncation, ablation, probes, domains and heads (curves and summary).
Every interval function (:mod:`tunescope.intervals`, ``bootstrap_linear_cka``, the similarity stage's
bootstrap) is wrapped in a timer while it runs, outermost calls only, and charged to the stage running;
each stage's own seconds come from the manifest. Goal: intervals <= 10% of each stage's time.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import markdown_table, save
from benchmarks.bench_heads import tuned_minilm

STAGES = ("layers", "similarity", "truncation", "ablation", "probes", "domains", "heads")


class Charged:
    """Seconds spent inside the wrapped functions, charged to the stage that is running."""

    def __init__(self) -> None:
        self.stage = ""
        self.seconds: dict[str, float] = {}
        self._depth = 0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._depth += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.seconds[self.stage] = self.seconds.get(self.stage, 0.0) + time.perf_counter() - start

        return timed


def instrument(charged: Charged) -> None:
    """Wrap every interval computation, and every stage's run to know which stage is charged."""
    import tunescope.intervals as intervals
    import tunescope.similarity as similarity
    import tunescope.similarity.bootstrap as bootstrap
    from tunescope.pipeline import STAGES as REGISTRY
    from tunescope.stages import discover
    from tunescope.stages import similarity as similarity_stage

    for module, name in (
        (intervals, "metric_interval"),
        (intervals, "difference_interval"),
        (intervals, "mean_interval"),
        (similarity, "bootstrap_linear_cka"),
        (bootstrap, "bootstrap_linear_cka"),
        (similarity_stage, "_bootstrap"),
    ):
        setattr(module, name, charged.wrap(getattr(module, name)))
    discover()
    for name, stage in list(REGISTRY.items()):
        run = stage.run

        def charged_run(ctx: Any, _run: Callable[..., Any] = run, _name: str = name) -> Any:
            charged.stage = _name
            return _run(ctx)

        object.__setattr__(stage, "run", charged_run)


def bench(device: str, limit: int) -> list[dict[str, Any]]:
    from tunescope.pipeline import AnalyzeConfig, analyze, read_manifest

    tuned = tuned_minilm(device)
    folder = Path(tempfile.mkdtemp(prefix="bench-intervals-model-"))
    tuned.model.save_pretrained(folder)
    tuned.tokenizer.save_pretrained(folder)
    charged = Charged()
    instrument(charged)
    config = AnalyzeConfig(
        out=Path(tempfile.mkdtemp(prefix="bench-intervals-run-")) / "run",
        tuned=str(folder),
        finetune=False,
        limit=limit,
        device=device,
        stages=STAGES,
        options={"heads": {"mlm_steps": 100, "random_seeds": 1}},
    )
    root = analyze(config, progress=False, report=False)
    stages = read_manifest(root)["stages"]
    rows = []
    for name in STAGES:
        seconds = float(stages[name].get("seconds", float("nan")))
        spent = charged.seconds.get(name, 0.0)
        rows.append(
            {
                "stage": name,
                "stage_seconds": round(seconds, 2),
                "interval_seconds": round(spent, 3),
                "share": round(spent / seconds, 4) if seconds else float("nan"),
                "goal": "<= 0.10",
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit", type=int, default=1000, help="analysis examples (the demo's 1000)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = bench(args.device, args.limit)
    print(markdown_table(rows))
    print(f"saved {save('intervals', {'rows': rows})}")


if __name__ == "__main__":
    main()
