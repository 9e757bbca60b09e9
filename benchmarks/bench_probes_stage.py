"""The ``probes`` stage on the demo's configuration: before and after batching, against its floor.

    python -m benchmarks.bench_probes_stage [--limit 1000] [--threads 2] [--tuned DIR] [--old-rev REV]

Prints a markdown table and writes ``bench-results/probes_stage.json``.

Both stages run ``analyze`` with ``stages=("probes",)`` as the demo does: the first 1,000 movie-sentiment
validation texts, silver ``pos`` and ``dep`` labels from spaCy, the embedded MiniLM as ``base`` and a
second model as ``tuned`` (``--tuned``, e.g. ``runs/demo/models/tuned``; by default a copy of MiniLM with
every weight moved by 1 % of its tensor's standard deviation, seeded: other features, the same costs).

1. **old**: the stage of ``--old-rev`` (default ``fdbcf77``, before batching: one spaCy pipeline per label
   set, one optimisation per (model, label set, control), no tag cache), from that revision's ``src/``
   (``git archive``) in a subprocess;
2. **new**: this checkout's stage in a subprocess alike (every probe in one optimisation, one spaCy pass,
   tags cached in ``RUN/cache/silver``).

Each runs twice: *cold* on an empty run folder, then *warm* on a new run folder holding a copy of the
first one's cache (what a rerun of the stage costs: the representations, and for the new stage the tags,
come from the cache). Both tables are compared row by row.

3. **floor**: what the stage cannot avoid, measured with this checkout: one token-level extraction per
   model of the probe texts (train and test words, no cache; the forward passes) plus the probe
   optimisation (one ``fit_probe_tasks`` of every probe on those representations). spaCy's tagging is
   reported beside it (one pass for both label sets; the old stage's one pass per label set).

Ratios: each stage's seconds over the floor.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import markdown_table, save

ROOT = Path(__file__).resolve().parent.parent
OLD_REV = "fdbcf77"
FIELDS = ("pos", "dep")


class Clock:
    """Wall and CPU seconds of a block (CPU: this process, all its threads; less sensitive than wall time
    to other work on a shared machine)."""

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu

    def seconds(self) -> dict[str, float]:
        return {"wall": self.wall, "cpu": self.cpu}


def perturbed_minilm(folder: Path) -> str:
    """A copy of the embedded MiniLM, every weight moved by 1 % of its tensor's standard deviation."""
    import torch

    from tunescope import load_encoder

    encoder = load_encoder(None, device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in encoder.model.parameters():
            p.add_(0.01 * p.std().nan_to_num() * torch.randn(p.shape, generator=g))
    encoder.model.save_pretrained(folder)
    encoder.tokenizer.save_pretrained(folder)
    return str(folder)


def old_source(rev: str, into: Path) -> Path | None:
    """``src/`` of revision ``rev`` unpacked under ``into`` (None, with a message, when git cannot)."""
    try:
        tar = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "src"], check=True, capture_output=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        print(f"old stage skipped: git archive {rev} failed ({err})")
        return None
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(into, filter="data")
    return into / "src"


def child(src: Path, *args: str) -> dict[str, Any]:
    """Run this script's ``--child`` with ``src`` first on the path; its JSON result."""
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1", "TUNESCOPE_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "benchmarks.bench_probes_stage", "--child", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run_stage(run: str, tuned: str, limit: int, threads: int, cache: str | None) -> dict[str, Any]:
    """In the child: ``analyze`` the probes stage into ``run`` (seeded with a copy of ``cache``)."""
    import torch

    import tunescope
    from tunescope._io import read_csv
    from tunescope.pipeline import AnalyzeConfig, analyze, read_manifest

    torch.set_num_threads(threads)
    if cache is not None:
        shutil.copytree(cache, Path(run) / "cache")
    config = AnalyzeConfig(
        out=Path(run),
        tuned=tuned,
        finetune=False,
        limit=limit,
        stages=("probes",),
        device="cpu",
        options={"probes": {"tasks": FIELDS}},
    )
    with Clock() as clock:
        root = analyze(config, progress=False)
    stage = read_manifest(root)["stages"]["probes"]
    rows = read_csv(root / "results" / "probes.csv")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "stage_wall": stage["seconds"],
        **clock.seconds(),
        "peak_rss_mb": rss,
        "rows": rows,
        "src": tunescope.__file__,
    }


def floor(tuned: str, limit: int, threads: int) -> dict[str, Any]:
    """In the child (this checkout): the stage's unavoidable parts, each timed."""
    import numpy as np
    import torch

    from tunescope import load_encoder
    from tunescope.data import get_task
    from tunescope.data.silver import silver_tag_sets
    from tunescope.data.tokens import split_sentences
    from tunescope.extract import extract
    from tunescope.probing import ProbeTask, fit_probe_tasks
    from tunescope.stages.probes import _texts_to_tag

    torch.set_num_threads(threads)
    texts = _texts_to_tag(get_task("movie-sentiment").load("validation", limit=limit).texts)
    silver_tag_sets(texts[:2], ("pos",))  # import spaCy before timing either
    with Clock() as spacy_per_field:
        for field in FIELDS:
            silver_tag_sets(texts, (field,), split="validation")
    with Clock() as spacy_one_pass:
        tagged = silver_tag_sets(texts, FIELDS, split="validation")
    first = tagged[FIELDS[0]]
    train_ids, test_ids = split_sentences([len(w) for w in first.words], seed=0)
    parts = [first.subset(ids.tolist()) for ids in (train_ids, test_ids)]
    encoders = {"base": load_encoder(None, device="cpu"), "tuned": load_encoder(tuned, device="cpu")}
    options: dict[str, Any] = {"batch_size": 32, "max_length": 128, "progress": False}  # the stage's
    with Clock() as extraction:
        reps = {
            (model, i): extract(enc, part.texts, pooling="tokens", words=part.words, **options)
            for model, enc in encoders.items()
            for i, part in enumerate(parts)
        }
    tasks = {}
    for field in FIELDS:
        examples = tagged[field]
        sides = [examples.subset(ids.tolist()) for ids in (train_ids, test_ids)]
        for model in encoders:
            data = []
            for i, part in enumerate(sides):
                r = reps[model, i]
                pairs = list(zip(r.example_index.tolist(), r.word_index.tolist(), strict=True))
                labels = np.asarray([part.tag_names[part.tags[e][w]] for e, w in pairs])
                data.append((r, labels, [part.words[e][w] for e, w in pairs]))
            (train, y_train, w_train), (test, y_test, w_test) = data
            tasks[field, model] = ProbeTask(train, y_train, test, y_test, word_types=(w_train, w_test))
    with Clock() as optimisation:
        fit_probe_tasks(tasks, device="cpu", seed=0)
    return {
        "extraction": extraction.seconds(),
        "optimisation": optimisation.seconds(),
        "spacy_one_pass": spacy_one_pass.seconds(),
        "spacy_per_label_set": spacy_per_field.seconds(),
        "n_words": sum(len(w) for p in parts for w in p.words),
    }


def largest_difference(a: list[dict[str, str]], b: list[dict[str, str]]) -> float:
    """The largest absolute difference between two probes tables' numbers (inf when their rows differ)."""
    if len(a) != len(b) or any(list(x) != list(y) for x, y in zip(a, b, strict=True)):
        return math.inf
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        for column, value in x.items():
            try:
                u, v = float(value), float(y[column])
            except ValueError:
                if value != y[column]:
                    return math.inf
                continue
            if not (math.isnan(u) and math.isnan(v)):
                worst = max(worst, abs(u - v))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=1000, help="analysis texts (the demo: 1000)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the demo machine: 2)")
    parser.add_argument("--tuned", default=None, help="the second model (default: a perturbed MiniLM)")
    parser.add_argument("--old-rev", default=OLD_REV, help="git revision of the stage before batching")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "stage":
            run, tuned, limit, threads, cache = rest
            result = run_stage(run, tuned, int(limit), int(threads), None if cache == "-" else cache)
        else:
            tuned, limit, threads = rest
            result = floor(tuned, int(limit), int(threads))
        print(json.dumps(result))
        return

    work = Path(tempfile.mkdtemp(prefix="bench-probes-stage-"))
    tuned = args.tuned or perturbed_minilm(work / "tuned")
    sources = {"new": ROOT / "src"}
    old = old_source(args.old_rev, work / "old")
    if old is not None:
        sources = {"old": old, **sources}
    common = (tuned, str(args.limit), str(args.threads))
    print(f"{args.limit} texts, {args.threads} threads, tuned = {tuned}", flush=True)
    base = child(ROOT / "src", "floor", *common)
    floor_s = {k: base["extraction"][k] + base["optimisation"][k] for k in ("wall", "cpu")}
    print(f"floor: {json.dumps(base)}", flush=True)
    rows, tables = [], {}
    for name, src in sources.items():
        cold = child(src, "stage", str(work / f"{name}-cold"), *common, "-")
        warm = child(src, "stage", str(work / f"{name}-warm"), *common, str(work / f"{name}-cold" / "cache"))
        tables[name] = cold["rows"]
        for run, result in (("cold", cold), ("warm", warm)):
            rows.append(
                {
                    "stage": name,
                    "run": run,
                    "wall_s": result["wall"],
                    "cpu_s": result["cpu"],
                    "floor_wall_s": floor_s["wall"],
                    "floor_cpu_s": floor_s["cpu"],
                    "wall_ratio": result["wall"] / floor_s["wall"],
                    "cpu_ratio": result["cpu"] / floor_s["cpu"],
                    "peak_rss_mb": result["peak_rss_mb"],
                }
            )
            print(f"{name} {run}: {result['wall']:.1f} s (tunescope from {result['src']})", flush=True)
    speedups = {}
    if "old" in tables:
        for run in ("cold", "warm"):
            (before,) = (r for r in rows if (r["stage"], r["run"]) == ("old", run))
            (after,) = (r for r in rows if (r["stage"], r["run"]) == ("new", run))
            speedups[run] = {k: before[f"{k}_s"] / after[f"{k}_s"] for k in ("wall", "cpu")}
    difference = largest_difference(tables["old"], tables["new"]) if "old" in tables else None
    print("\n### The probes stage, old and new, against its floor\n\n" + markdown_table(rows))
    labels = {
        "extraction": "extraction (2 models, train + test words)",
        "optimisation": "probe optimisation (one fit_probe_tasks)",
        "spacy_one_pass": "spaCy, one pass for pos and dep (new, cold)",
        "spacy_per_label_set": "spaCy, one pass per label set (old)",
    }
    parts = [{"part": text, "wall_s": base[k]["wall"], "cpu_s": base[k]["cpu"]} for k, text in labels.items()]
    print("\n### The floor and spaCy\n\n" + markdown_table(parts))
    if difference is not None:
        print(f"\nlargest difference between the old and the new probes.csv: {difference:.3g}")
    for run, ratio in speedups.items():
        print(f"old / new, {run}: {ratio['wall']:.2f}x wall, {ratio['cpu']:.2f}x CPU")
    path = save(
        "probes_stage",
        {
            "limit": args.limit,
            "threads": args.threads,
            "tuned": args.tuned or "perturbed MiniLM",
            "old_rev": args.old_rev if old is not None else None,
            "n_words": base["n_words"],
            "stages": rows,
            "floor": parts,
            "old_new_largest_difference": difference,
            "old_over_new": speedups,
        },
    )
    print(f"\nwrote {path}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
