"""The fault suite: every command x every kind of fault a user can cause, through real processes.

Each case runs ``tunescope ...`` as its own process (forked from a server that has done the imports,
see ``_forkserver.py``) in a fresh folder, and asserts what the user is promised: exit code 2 and
exactly one line on stderr that starts with ``error:`` (no traceback), and nothing new or changed on
disk; or, for interruptions and damaged run folders, a clean resume that loses no completed work and
leaves no temporary behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tunescope.testing.tiny import save_model, tiny_model

SERVER = Path(__file__).with_name("_forkserver.py")
FAST = ["--device", "cpu", "--batch-size", "8"]
ANALYZE = ["--limit", "16", "--train-limit", "16", *FAST]
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass
class Run:
    rc: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


class Cli:
    """Runs ``tunescope`` commands as forked processes of one long-lived server."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TUNESCOPE_NO_PROGRESS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.count = 0

    def run(
        self,
        *argv: str,
        cwd: Path,
        faults: tuple[dict[str, Any], ...] = (),
        umask: int = 0o022,
        env: dict[str, str] | None = None,
    ) -> Run:
        self.count += 1
        out, err = self.scratch / f"{self.count}.out", self.scratch / f"{self.count}.err"
        request = {
            "argv": list(argv),
            "cwd": str(cwd),
            "stdout": str(out),
            "stderr": str(err),
            "umask": umask,
            "faults": list(faults),
            "env": env or {},
        }
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        json.loads(self.proc.stdout.readline())  # {"pid": ...}
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError("the fork server died")
        return Run(json.loads(answer)["rc"], out.read_text(), err.read_text())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    runner = Cli(tmp_path_factory.mktemp("cli-io"))
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny base model, a tiny trained-head classifier, and damaged copies of them."""
    root = tmp_path_factory.mktemp("assets")
    save_model(tiny_model("bert", num_layers=2), root / "model")
    save_model(tiny_model("bert", num_layers=2, task="classifier"), root / "clf")
    weights = root / "model" / "model.safetensors"
    for name, damage in {
        "cut-weights": lambda b: b[: len(b) // 2],
        "tiny-weights": lambda b: b[:10],
        "noise-weights": lambda b: os.urandom(len(b)),
    }.items():
        shutil.copytree(root / "model", root / name)
        (root / name / "model.safetensors").write_bytes(damage(weights.read_bytes()))
    config = json.loads((root / "model" / "config.json").read_text())
    for name, text in {
        "typed-config": json.dumps({**config, "hidden_size": "abc"}),
        "cut-config": (root / "model" / "config.json").read_text()[:40],
        "list-config": "[1, 2]",
    }.items():
        shutil.copytree(root / "model", root / name)
        (root / name / "config.json").write_text(text)
    (root / "empty-dir").mkdir()
    (root / "a-file.txt").write_text("not a model\n")
    data = root / "data"
    data.mkdir()
    rows = "\n".join(f"{'a good film' if i % 2 else 'a bad film'} {i},{i % 2}" for i in range(12))
    (data / "good.csv").write_text("text,label\n" + rows + "\n")
    (data / "tabs.csv").write_text("text\tlabel\na good film\t1\na bad film\t0\n")
    (data / "ragged.csv").write_text("text,label\na good film,1\na bad film,0,extra\n")
    (data / "quote.csv").write_text('text,label\n"a good film,1\na bad film,0\nok,1\n')
    (data / "latin1.csv").write_bytes("text,label\ncaf\xe9 film,1\nbad,0\n".encode("latin-1"))
    (data / "empty.csv").write_text("")
    one = root / "one-class" / "SST-2"
    one.mkdir(parents=True)
    lines = "".join(f"a good film number {i}\t1\n" for i in range(12))
    for split in ("train", "dev"):
        (one / f"{split}.tsv").write_text("sentence\tlabel\n" + lines)
    unlabelled = root / "unlabelled" / "SST-2"  # GLUE test files carry no labels
    unlabelled.mkdir(parents=True)
    (unlabelled / "test.tsv").write_text("index\tsentence\n" + "".join(f"{i}\ta film\n" for i in range(4)))
    return root


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file and folder under ``folder`` with its size and content hash."""
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_dir():
            found[rel + "/"] = (0, "")
        else:
            found[rel] = (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def assert_one_line_error(run: Run, *phrases: str) -> None:
    assert run.rc == 2, f"exit {run.rc}; stderr:\n{run.err}"
    assert "Traceback" not in run.err, run.err
    assert len(run.err_lines) == 1, f"expected one line on stderr, got:\n{run.err}"
    line = run.err_lines[0]
    assert line.startswith("error: "), line
    for phrase in phrases:
        assert phrase.lower() in line.lower(), f"{phrase!r} not in {line!r}"


def orphans(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if p.name.endswith(".tmp") or p.name.startswith(".tmp")]


# --------------------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing written
# --------------------------------------------------------------------------------------------------------
COMMANDS: dict[str, Callable[[str], list[str]]] = {
    "info": lambda m: ["info", m],
    "extract": lambda m: ["extract", m, "--limit", "8", "--out", "reps.safetensors", *FAST],
    "compare": lambda m: ["compare", m, "{assets}/model", "--limit", "8", "--out", "cmp", *FAST],
    "analyze": lambda m: ["analyze", m, "--stages", "layers", "--out", "run", *ANALYZE],
    "analyze-tuned": lambda m: [
        "analyze",
        "{assets}/model",
        "--tuned",
        m,
        "--stages",
        "layers",
        "--out",
        "run",
        *ANALYZE,
    ],
    "variability": lambda m: ["variability", m, "--limit", "16", "--out", "var", *FAST],
    "probe": lambda m: ["probe", m, "--limit", "8", "--out", "probe", *FAST],
    "finetune": lambda m: [
        "finetune",
        m,
        "--task",
        "movie-sentiment",
        "--train-limit",
        "16",
        "--validation-limit",
        "8",
        "--out",
        "ft",
        *FAST,
    ],
    "truncate": lambda m: ["truncate", m, "--task", "movie-sentiment", "--limit", "8", "--out", "tr", *FAST],
    "compress": lambda m: ["compress", m, "--drop-top", "1", "--out", "small", *FAST],
    "heads": lambda m: ["heads", m, "--task", "movie-sentiment", "--limit", "8", "--out", "h", *FAST],
}

BAD_MODELS = {
    "missing": ("{assets}/no-such-model", "no model folder"),
    "file": ("{assets}/a-file.txt", "is a file"),
    "no-config": ("{assets}/empty-dir", "config.json"),
    "hub-offline": ("someone/some-model", "offline"),
    "cut-weights": ("{assets}/cut-weights", "model.safetensors"),
    "tiny-weights": ("{assets}/tiny-weights", "model.safetensors"),
    "noise-weights": ("{assets}/noise-weights", "model.safetensors"),
    "typed-config": ("{assets}/typed-config", "config.json"),
    "cut-config": ("{assets}/cut-config", "config.json"),
    "list-config": ("{assets}/list-config", "config.json"),
}


def _fill(argv: list[str], assets: Path) -> list[str]:
    return [a.replace("{assets}", str(assets)) for a in argv]


@pytest.mark.parametrize("fault", list(BAD_MODELS))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_model(cli: Cli, assets: Path, tmp_path: Path, command: str, fault: str) -> None:
    model, phrase = BAD_MODELS[fault]
    before = snapshot(tmp_path)
    run = cli.run(*_fill(COMMANDS[command](model), assets), cwd=tmp_path)
    assert_one_line_error(run, phrase)
    assert snapshot(tmp_path) == before


BAD_OPTIONS: dict[str, tuple[list[str], str]] = {
    # numbers
    "analyze-limit-below-rsa": (
        [
            "analyze",
            "{assets}/model",
            "--no-finetune",
            "--stages",
            "similarity",
            "--out",
            "run",
            "--limit",
            "2",
            *FAST,
        ],
        "needs at least 3",
    ),
    "analyze-limit-negative": (["analyze", "--out", "run", "--limit", "-1"], "--limit"),
    "analyze-epochs-0": (["analyze", "--out", "run", "--epochs", "0"], "--epochs"),
    "analyze-lr-negative": (["analyze", "--out", "run", "--lr", "-1"], "--lr"),
    "analyze-budget-0": (["analyze", "--out", "run", "--budget", "0"], "--variability.budget"),
    "analyze-batch-0": (["analyze", "--out", "run", "--batch-size", "0"], "--batch-size"),
    "analyze-ffn-layers-out-of-range": (
        [
            "analyze",
            "{assets}/model",
            "--stages",
            "finetune,ffn",
            "--ffn-layers",
            "9",
            "--out",
            "run",
            *ANALYZE,
        ],
        "--ffn.layers",
    ),
    "analyze-ffn-layers-text": (["analyze", "--out", "run", "--ffn-layers", "a,b"], "--ffn.layers"),
    "extract-layers-text": (
        ["extract", "{assets}/model", "--layers", "x", "--out", "r.safetensors"],
        "--layers",
    ),
    "extract-batch-0": (
        [
            "extract",
            "{assets}/model",
            "--batch-size",
            "0",
            "--limit",
            "4",
            "--out",
            "r.safetensors",
            "--device",
            "cpu",
        ],
        "batch",
    ),
    "finetune-epochs-0": (
        ["finetune", "{assets}/model", "--task", "movie-sentiment", "--epochs", "0", "--out", "ft"],
        "--epochs",
    ),
    "finetune-lr-negative": (
        ["finetune", "{assets}/model", "--task", "movie-sentiment", "--lr", "-1", "--out", "ft"],
        "--lr",
    ),
    "finetune-batch-0": (
        ["finetune", "{assets}/model", "--task", "movie-sentiment", "--batch-size", "0", "--out", "ft"],
        "--batch-size",
    ),
    "finetune-train-layers-range": (
        [
            "finetune",
            "{assets}/model",
            "--task",
            "movie-sentiment",
            "--train-layers",
            "7",
            "--out",
            "ft",
            *FAST,
        ],
        "7",
    ),
    "truncate-keep-0": (["truncate", "{assets}/clf", "--keep", "0", "--out", "tr"], "--keep"),
    "truncate-keep-too-many": (["truncate", "{assets}/clf", "--keep", "5", "--out", "tr", *FAST], "--keep"),
    "compress-drop-top-0": (["compress", "{assets}/clf", "--drop-top", "0", "--out", "c"], "--drop-top"),
    "compress-remove-ffn-range": (
        ["compress", "{assets}/clf", "--remove-ffn", "9", "--out", "c", *FAST],
        "--remove-ffn",
    ),
    "compress-nothing": (["compress", "{assets}/clf", "--out", "c"], "nothing to do"),
    "variability-budget-0": (["variability", "{assets}/model", "--budget", "0", "--out", "v"], "--budget"),
    "heads-step-1": (
        ["heads", "{assets}/clf", "--task", "movie-sentiment", "--prune-curve", "--step", "1", "--out", "h"],
        "--step",
    ),
    "heads-prune-1": (
        ["heads", "{assets}/clf", "--task", "movie-sentiment", "--prune", "1", "--export", "e", "--out", "h"],
        "--prune",
    ),
    "heads-prune-no-export": (
        ["heads", "{assets}/clf", "--task", "movie-sentiment", "--prune", "0.3", "--out", "h"],
        "--export",
    ),
    "heads-prune-empties-layer": (
        [
            "heads",
            "{assets}/clf",
            "--task",
            "movie-sentiment",
            "--prune",
            "0.9",
            "--export",
            "e",
            "--out",
            "h",
            *FAST,
        ],
        "at least one",
    ),
    "compress-prune-heads-range": (
        ["compress", "{assets}/clf", "--prune-heads", "layer.9.head.0", "--out", "c", *FAST],
        "--prune-heads",
    ),
    "compress-prune-heads-no-task": (
        ["compress", "{assets}/clf", "--prune-heads", "0.3", "--out", "c"],
        "--task",
    ),
    # names
    "analyze-stage": (["analyze", "--stages", "nope", "--out", "run"], "unknown stage"),
    "analyze-task": (["analyze", "{assets}/model", "--task", "nope", "--out", "run", *FAST], "unknown task"),
    "analyze-pooling": (["analyze", "--pooling", "tokens", "--out", "run"], "pooling"),
    "analyze-ood": (["analyze", "{assets}/model", "--ood-tasks", "nope", "--out", "run", *ANALYZE], "nope"),
    "analyze-probe-task": (
        ["analyze", "{assets}/model", "--probe-tasks", "nope", "--out", "run", *ANALYZE],
        "nope",
    ),
    "compare-measure": (
        ["compare", "{assets}/model", "{assets}/model", "--measure", "nope", "--out", "c"],
        "unknown similarity measure",
    ),
    "compare-rsa": (
        ["compare", "{assets}/model", "{assets}/model", "--rsa", "nope", "--out", "c"],
        "--similarity.rsa",
    ),
    "heads-objective": (
        ["heads", "{assets}/clf", "--task", "movie-sentiment", "--objective", "nope", "--out", "h"],
        "unknown --objective",
    ),
    "heads-rank-by": (
        [
            "heads",
            "{assets}/clf",
            "--task",
            "movie-sentiment",
            "--prune-curve",
            "--rank-by",
            "nope",
            "--out",
            "h",
        ],
        "unknown --rank-by",
    ),
    "heads-task-on-base": (
        ["heads", "{assets}/model", "--task", "movie-sentiment", "--objective", "task", "--out", "h"],
        "trained classifier head",
    ),
    "heads-mlm-no-fit": (
        [
            "heads",
            "{assets}/model",
            "--task",
            "movie-sentiment",
            "--objective",
            "mlm",
            "--no-fit-mlm-head",
            "--out",
            "h",
            *FAST,
        ],
        "masked-LM head",
    ),
    "extract-pooling": (
        ["extract", "{assets}/model", "--pooling", "nope", "--out", "r.safetensors"],
        "pooling",
    ),
    "device": (
        ["extract", "{assets}/model", "--device", "tpu", "--limit", "4", "--out", "r.safetensors"],
        "device",
    ),
    "usage-option": (["extract", "--no-such-option"], "no such option"),
    "usage-command": (["no-such-command"], "no such command"),
    # data
    "data-missing": (
        [
            "extract",
            "{assets}/model",
            "--data",
            "{assets}/data/nope.csv",
            "--text",
            "text",
            "--out",
            "r.safetensors",
            *FAST,
        ],
        "not found",
    ),
    "data-tabs-as-csv": (
        [
            "extract",
            "{assets}/model",
            "--data",
            "{assets}/data/tabs.csv",
            "--text",
            "text",
            "--out",
            "r.safetensors",
            *FAST,
        ],
        "tab-separated",
    ),
    "data-ragged": (
        [
            "extract",
            "{assets}/model",
            "--data",
            "{assets}/data/ragged.csv",
            "--text",
            "text",
            "--label",
            "label",
            "--out",
            "r.safetensors",
            *FAST,
        ],
        "line 3",
    ),
    "data-unclosed-quote": (
        [
            "extract",
            "{assets}/model",
            "--data",
            "{assets}/data/quote.csv",
            "--text",
            "text",
            "--label",
            "label",
            "--out",
            "r.safetensors",
            *FAST,
        ],
        "never closed",
    ),
    "data-not-utf8": (
        [
            "extract",
            "{assets}/model",
            "--data",
            "{assets}/data/latin1.csv",
            "--text",
            "text",
            "--out",
            "r.safetensors",
            *FAST,
        ],
        "utf-8",
    ),
    "data-empty": (
        [
            "extract",
            "{assets}/model",
            "--data",
            "{assets}/data/empty.csv",
            "--text",
            "text",
            "--out",
            "r.safetensors",
            *FAST,
        ],
        "empty",
    ),
    "data-no-text-flag": (
        ["extract", "{assets}/model", "--data", "{assets}/data/good.csv", "--out", "r.safetensors"],
        "--text",
    ),
    "data-wrong-column": (
        [
            "extract",
            "{assets}/model",
            "--data",
            "{assets}/data/good.csv",
            "--text",
            "sentence",
            "--out",
            "r.safetensors",
            *FAST,
        ],
        "--text",
    ),
    "data-task-and-file": (
        [
            "extract",
            "{assets}/model",
            "--task",
            "movie-sentiment",
            "--data",
            "{assets}/data/good.csv",
            "--text",
            "text",
            "--out",
            "r.safetensors",
        ],
        "not both",
    ),
    "glue-missing": (
        [
            "extract",
            "{assets}/model",
            "--task",
            "rte",
            "--data-dir",
            "{assets}/empty-dir",
            "--out",
            "r.safetensors",
            *FAST,
        ],
        "rte",
    ),
    "variability-one-class": (
        [
            "variability",
            "{assets}/model",
            "--task",
            "sst2",
            "--data-dir",
            "{assets}/one-class",
            "--out",
            "v",
            *FAST,
        ],
        "only the class",
    ),
    "analyze-one-class-train": (
        [
            "analyze",
            "{assets}/model",
            "--task",
            "sst2",
            "--data-dir",
            "{assets}/one-class",
            "--stages",
            "finetune",
            "--out",
            "run",
            *ANALYZE,
        ],
        "only the class",
    ),
    "heads-unlabelled": (
        [
            "heads",
            "{assets}/clf",
            "--task",
            "sst2",
            "--data-dir",
            "{assets}/unlabelled",
            "--split",
            "test",
            "--out",
            "h",
            *FAST,
        ],
        "needs labels",
    ),
    "finetune-one-class": (
        [
            "finetune",
            "{assets}/model",
            "--task",
            "sst2",
            "--data-dir",
            "{assets}/one-class",
            "--out",
            "ft",
            *FAST,
        ],
        "class",
    ),
    # output locations
    "analyze-out-file": (["analyze", "--out", "{assets}/a-file.txt"], "is a file"),
    "analyze-out-under-file": (["analyze", "--out", "{assets}/a-file.txt/run"], "under the file"),
    "analyze-out-foreign-folder": (["analyze", "--out", "{assets}/data"], "not a tunescope run folder"),
    "compare-out-file": (
        ["compare", "{assets}/model", "{assets}/model", "--out", "{assets}/a-file.txt"],
        "is a file",
    ),
    "extract-out-folder": (["extract", "{assets}/model", "--out", "{assets}/empty-dir"], "is a folder"),
    "extract-out-under-file": (
        ["extract", "{assets}/model", "--out", "{assets}/a-file.txt/r.safetensors"],
        "under the file",
    ),
    "extract-cache-dir-file": (
        ["extract", "{assets}/model", "--cache-dir", "{assets}/a-file.txt", "--out", "r.safetensors"],
        "--cache-dir",
    ),
    "finetune-out-file": (
        ["finetune", "{assets}/model", "--task", "movie-sentiment", "--out", "{assets}/a-file.txt"],
        "is a file",
    ),
    "finetune-out-foreign-folder": (
        ["finetune", "{assets}/model", "--task", "movie-sentiment", "--out", "{assets}/data", *FAST],
        "data",
    ),
    "truncate-out-file": (
        ["truncate", "{assets}/clf", "--task", "movie-sentiment", "--out", "{assets}/a-file.txt"],
        "is a file",
    ),
    "compress-out-file": (
        ["compress", "{assets}/clf", "--drop-top", "1", "--out", "{assets}/a-file.txt"],
        "is a file",
    ),
    "compress-out-not-empty": (
        ["compress", "{assets}/clf", "--drop-top", "1", "--out", "{assets}/data"],
        "not empty",
    ),
    "heads-out-file": (
        ["heads", "{assets}/clf", "--task", "movie-sentiment", "--out", "{assets}/a-file.txt"],
        "is a file",
    ),
    "heads-out-not-empty": (
        ["heads", "{assets}/clf", "--task", "movie-sentiment", "--out", "{assets}/data"],
        "not empty",
    ),
    "heads-export-not-empty": (
        [
            "heads",
            "{assets}/clf",
            "--task",
            "movie-sentiment",
            "--prune",
            "0.3",
            "--export",
            "{assets}/data",
            "--out",
            "h",
        ],
        "--export",
    ),
    "probe-out-file": (["probe", "{assets}/model", "--out", "{assets}/a-file.txt"], "is a file"),
    "variability-out-file": (["variability", "{assets}/model", "--out", "{assets}/a-file.txt"], "is a file"),
    "report-not-a-run": (["report", "{assets}/data"], "not a tunescope run folder"),
    "report-missing": (["report", "{assets}/no-such-run"], "not a tunescope run folder"),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_option(cli: Cli, assets: Path, tmp_path: Path, case: str) -> None:
    argv, phrase = BAD_OPTIONS[case]
    before, assets_before = snapshot(tmp_path), snapshot(assets)
    run = cli.run(*_fill(argv, assets), cwd=tmp_path)
    assert_one_line_error(run, phrase)
    assert snapshot(tmp_path) == before
    assert snapshot(assets) == assets_before


@pytest.mark.skipif(AS_ROOT, reason="root can write into read-only folders")
@pytest.mark.parametrize("command", ["analyze", "extract", "finetune", "compress", "report"])
def test_read_only_output(cli: Cli, assets: Path, tmp_path: Path, command: str) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    argv = {
        "analyze": ["analyze", "--out", str(locked / "run")],
        "extract": ["extract", f"{assets}/model", "--out", str(locked / "r.safetensors")],
        "finetune": ["finetune", f"{assets}/model", "--task", "movie-sentiment", "--out", str(locked / "ft")],
        "compress": ["compress", f"{assets}/clf", "--drop-top", "1", "--out", str(locked / "c")],
        "report": ["report", str(locked)],
    }[command]
    if command == "report":
        (locked / "manifest.json").write_text(json.dumps({"config": {}, "stages": {}}))
    locked.chmod(0o555)
    try:
        run = cli.run(*argv, cwd=tmp_path)
        assert_one_line_error(run, "not writable" if command != "report" else "writable")
    finally:
        locked.chmod(0o755)


# --------------------------------------------------------------------------------------------------------
# run folders: stale, damaged, interrupted, killed
# --------------------------------------------------------------------------------------------------------
RUN_STAGES = ["--no-finetune", "--stages", "layers,similarity,variability"]


@pytest.fixture(scope="module")
def finished_run(cli: Cli, assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete run folder (three quick stages on the tiny model), copied by the tests that damage it."""
    work = tmp_path_factory.mktemp("finished")
    run = cli.run("analyze", f"{assets}/model", *RUN_STAGES, "--out", "run", *ANALYZE, cwd=work)
    assert run.rc == 0, run.err
    return work / "run"


def _copy(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


DAMAGES: dict[str, Callable[[bytes], bytes]] = {
    "cut-in-half": lambda b: b[: len(b) // 2],
    "cut-at-a-line": lambda b: b[: b.index(b"\n", len(b) // 2) + 1],
    "bytes": lambda b: os.urandom(len(b)),
    "emptied": lambda b: b"",
    "header-only": lambda b: b[: b.index(b"\n") + 1],
}


@pytest.mark.parametrize(
    ("table", "damage"),
    [("cka", damage) for damage in DAMAGES] + [("variability", "cut-at-a-line"), ("layer_stats", "bytes")],
)
def test_damaged_table_is_named_by_report_and_recomputed_by_analyze(
    cli: Cli, assets: Path, finished_run: Path, tmp_path: Path, table: str, damage: str
) -> None:
    run_dir = _copy(finished_run, tmp_path)
    path = run_dir / "results" / f"{table}.csv"
    good = path.read_bytes()
    path.write_bytes(DAMAGES[damage](good))
    report = cli.run("report", str(run_dir), cwd=tmp_path)
    assert_one_line_error(report, f"{table}.csv", "damaged", "tunescope analyze")
    again = cli.run("analyze", f"{assets}/model", *RUN_STAGES, "--out", str(run_dir), *ANALYZE, cwd=tmp_path)
    assert again.rc == 0, again.err
    assert "Traceback" not in again.err
    assert any("recomputing" in line for line in again.err_lines), again.err
    assert path.read_bytes() == good  # the same seed and data give the same table again
    assert cli.run("report", str(run_dir), cwd=tmp_path).rc == 0
    assert not orphans(run_dir)


@pytest.mark.parametrize("damage", ["cut-in-half", "bytes", "emptied"])
def test_damaged_manifest(cli: Cli, assets: Path, finished_run: Path, tmp_path: Path, damage: str) -> None:
    run_dir = _copy(finished_run, tmp_path)
    manifest = run_dir / "manifest.json"
    manifest.write_bytes(DAMAGES[damage](manifest.read_bytes()))
    assert_one_line_error(cli.run("report", str(run_dir), cwd=tmp_path), "manifest.json", "damaged")
    again = cli.run("analyze", f"{assets}/model", *RUN_STAGES, "--out", str(run_dir), *ANALYZE, cwd=tmp_path)
    assert again.rc == 0, again.err
    assert any("manifest.json" in line for line in again.err_lines), again.err
    retired = list((run_dir / "retired").iterdir())
    assert len(retired) == 1 and (retired[0] / "results" / "cka.csv").exists()  # moved aside, not lost
    assert json.loads(manifest.read_text())["stages"]["similarity"]["status"] == "done"


def test_config_change_retires_stale_tables(
    cli: Cli, assets: Path, finished_run: Path, tmp_path: Path
) -> None:
    run_dir = _copy(finished_run, tmp_path)
    run = cli.run(
        "analyze",
        f"{assets}/model",
        "--no-finetune",
        "--stages",
        "layers",
        "--out",
        str(run_dir),
        "--limit",
        "12",
        *FAST,
        cwd=tmp_path,
    )
    assert run.rc == 0, run.err
    assert any("configuration changed" in line and "limit" in line for line in run.err_lines), run.err
    assert sorted(p.name for p in (run_dir / "results").iterdir()) == ["layer_stats.csv"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["config"]["limit"] == 12 and set(manifest["stages"]) == {"layers"}
    html = (run_dir / "report.html").read_text()
    assert 'id="layers"' in html and 'id="similarity"' not in html and 'id="variability"' not in html
    assert not [p for p in (run_dir / "figures").iterdir() if "cka" in p.name or "variab" in p.name]
    (retired,) = (run_dir / "retired").iterdir()
    assert (retired / "results" / "cka.csv").exists() and (retired / "manifest.json").exists()


def test_empty_table_gets_a_section(cli: Cli, assets: Path, finished_run: Path, tmp_path: Path) -> None:
    from tunescope import runfolder

    run_dir = _copy(finished_run, tmp_path)
    manifest = runfolder.read_manifest(run_dir)
    record = runfolder.write_table(run_dir, "layer_stats", [], ["model", "layer"])
    manifest["stages"]["layers"]["outputs"] = [record]
    runfolder.write_manifest(run_dir, manifest)
    assert cli.run("report", str(run_dir), cwd=tmp_path).rc == 0
    assert "layer_stats.csv hold no rows" in (run_dir / "report.html").read_text()


def test_ctrl_c_records_the_stage_and_resumes(cli: Cli, assets: Path, tmp_path: Path) -> None:
    argv = ["analyze", f"{assets}/model", *RUN_STAGES, "--out", "run", *ANALYZE]
    interrupt = {"patch": "tunescope.similarity:cka_matrix", "when": 1, "action": "sigint_before"}
    run = cli.run(*argv, cwd=tmp_path, faults=(interrupt,))
    assert run.rc == 130
    assert run.err_lines == ["interrupted: completed work is kept; rerun the same command to resume"]
    stages = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    assert stages["layers"]["status"] == "done" and stages["similarity"]["status"] == "interrupted"
    assert not (tmp_path / "run" / "results" / "cka.csv").exists()
    layers = (tmp_path / "run" / "results" / "layer_stats.csv").read_bytes()
    again = cli.run(*argv, cwd=tmp_path)
    assert again.rc == 0, again.err
    assert any("resuming" in line and "layers" in line for line in again.err_lines), again.err
    assert (tmp_path / "run" / "results" / "layer_stats.csv").read_bytes() == layers  # not recomputed
    stages = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    assert all(stages[s]["status"] == "done" for s in ("layers", "similarity", "variability"))


def test_ctrl_c_during_fine_tuning(cli: Cli, assets: Path, tmp_path: Path) -> None:
    argv = [
        "finetune",
        f"{assets}/model",
        "--task",
        "movie-sentiment",
        "--train-limit",
        "16",
        "--validation-limit",
        "8",
        "--epochs",
        "2",
        "--out",
        "ft",
        *FAST,
    ]
    interrupt = {"patch": "tunescope.finetune.loop:_validate", "when": 2, "action": "sigint_before"}
    run = cli.run(*argv, cwd=tmp_path, faults=(interrupt,))
    assert run.rc == 130 and run.err_lines[-1].startswith("interrupted:"), run.err
    again = cli.run(*argv, cwd=tmp_path)
    assert again.rc == 0, again.err
    assert any("resum" in line for line in again.err_lines), again.err
    assert not orphans(tmp_path)


KILLS = {
    "table-mid-write": ("tunescope._io:_cell", 1, "sigkill_before"),
    "table-before-rename": ("tunescope._io:apply_umask", 3, "sigkill_before"),
    "manifest-write": ("tunescope.runfolder:write_json", 2, "sigkill_before"),
    "shard-write": ("safetensors.torch:save_file", 1, "sigkill_after"),
    "report-write": ("tunescope.report.build:write_text", 1, "sigkill_before"),
}


@pytest.mark.parametrize("point", list(KILLS))
def test_kill_9_during_analyze(
    cli: Cli, assets: Path, finished_run: Path, tmp_path: Path, point: str
) -> None:
    patch, when, action = KILLS[point]
    argv = ["analyze", f"{assets}/model", *RUN_STAGES, "--out", "run", *ANALYZE]
    killed = cli.run(*argv, cwd=tmp_path, faults=({"patch": patch, "when": when, "action": action},))
    assert killed.rc == -9
    for table in (tmp_path / "run" / "results").glob("*.csv"):  # whatever is there is whole
        assert table.read_text().endswith("\n")
    again = cli.run(*argv, cwd=tmp_path)
    assert again.rc == 0, again.err
    assert not orphans(tmp_path), orphans(tmp_path)
    tables = sorted(p.name for p in (finished_run / "results").glob("*.csv"))
    assert sorted(p.name for p in (tmp_path / "run" / "results").glob("*.csv")) == tables
    for name in tables:  # the same tables as a run that was never killed (finished_run: same options)
        again_bytes = (tmp_path / "run" / "results" / name).read_bytes()
        assert again_bytes == (finished_run / "results" / name).read_bytes()


@pytest.mark.parametrize(
    "patch",
    ["safetensors.torch:save_file", "tunescope._io:_canonical_header", "tunescope._io:apply_umask"],
)
def test_kill_9_during_extract_output(cli: Cli, assets: Path, tmp_path: Path, patch: str) -> None:
    argv = ["extract", f"{assets}/model", "--limit", "8", "--out", "reps.safetensors", *FAST]
    killed = cli.run(*argv, cwd=tmp_path, faults=({"patch": patch, "when": 1, "action": "sigkill_after"},))
    assert killed.rc == -9
    assert not (tmp_path / "reps.safetensors").exists()
    assert orphans(tmp_path)  # the dead process's temporary is there ...
    assert cli.run(*argv, cwd=tmp_path).rc == 0
    assert not orphans(tmp_path)  # ... and the next write into the folder removed it


def test_kill_9_during_export(cli: Cli, assets: Path, tmp_path: Path) -> None:
    argv = ["compress", f"{assets}/clf", "--drop-top", "1", "--out", "small", *FAST]
    save = {
        "patch": "transformers.modeling_utils:PreTrainedModel.save_pretrained",
        "when": 1,
        "action": "sigkill_after",
    }
    assert cli.run(*argv, cwd=tmp_path, faults=(save,)).rc == -9
    assert not (tmp_path / "small").exists()
    run = cli.run(*argv, cwd=tmp_path)
    assert run.rc == 0, run.err
    assert not orphans(tmp_path), orphans(tmp_path)


# --------------------------------------------------------------------------------------------------------
# what is written: the user's umask, the same bytes twice
# --------------------------------------------------------------------------------------------------------
def _modes(folder: Path) -> set[tuple[str, int]]:
    return {("dir" if p.is_dir() else "file", stat.S_IMODE(p.stat().st_mode)) for p in folder.rglob("*")}


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_get_the_users_umask(cli: Cli, assets: Path, tmp_path: Path, umask: int) -> None:
    run = cli.run(
        "analyze",
        f"{assets}/model",
        "--stages",
        "finetune,layers",
        "--out",
        "run",
        *ANALYZE,
        cwd=tmp_path,
        umask=umask,
    )
    assert run.rc == 0, run.err
    assert (
        cli.run(
            "extract",
            f"{assets}/model",
            "--limit",
            "8",
            "--out",
            "reps.safetensors",
            "--cache-dir",
            "cache",
            *FAST,
            cwd=tmp_path,
            umask=umask,
        ).rc
        == 0
    )
    assert (
        cli.run(
            "compress", f"{assets}/clf", "--drop-top", "1", "--out", "small", *FAST, cwd=tmp_path, umask=umask
        ).rc
        == 0
    )
    expected = {("file", 0o666 & ~umask), ("dir", 0o777 & ~umask)}
    for folder in ("run", "cache", "small"):
        assert _modes(tmp_path / folder) <= expected, (folder, _modes(tmp_path / folder))
    assert stat.S_IMODE((tmp_path / "reps.safetensors").stat().st_mode) == 0o666 & ~umask


def test_extraction_bytes_are_reproducible(cli: Cli, assets: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        run = cli.run(
            "extract",
            f"{assets}/model",
            "--limit",
            "8",
            "--pooling",
            "tokens",
            "--out",
            f"{name}.safetensors",
            *FAST,
            cwd=tmp_path,
        )
        assert run.rc == 0, run.err
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
