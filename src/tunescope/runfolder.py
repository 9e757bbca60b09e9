"""The run folder: its manifest, its result tables, and which of them the manifest vouches for.

``analyze`` writes a run folder and ``report`` reads it; both go through this module, so there is one
definition of a trustworthy table. The manifest records, for every stage, its status, the digest of the
configuration it ran under, and for each table it wrote the path, sha256 and row count. A table is
*vouched for* when its stage is ``done`` under the manifest's current configuration and the file's bytes
still hash to the recorded value; only such tables are reused by a rerun and shown by the report. A
table whose bytes changed (cut, overwritten, edited) is *damaged*: ``analyze`` recomputes its stage with a
warning, ``report`` names it in a one-line error.

When the configuration changes, the tables, figures and report of the earlier configuration do not
belong to the run any more: they are moved to ``RUN/retired/<digest>/`` (never deleted) and a note says
so. Layout (DESIGN.md)::

    RUN/manifest.json   config, config digest, versions, model fingerprints, stage status and tables
    RUN/models/         models the run fine-tuned
    RUN/cache/          extraction cache (safetensors, content-addressed, reusable across runs), and
                        ``cache/report/``: the sections the last report drew, reused while unchanged
    RUN/results/*.csv   tidy tables
    RUN/figures/*.png   drawn by the report from the tables
    RUN/report.html     self-contained
    RUN/retired/<digest>/   what an earlier configuration wrote
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunescope._io import check_output_dir, read_csv, sha256_file, write_csv, write_json
from tunescope.errors import InputError, RunFolderError

__all__ = [
    "MANIFEST",
    "RESULTS",
    "RETIRED",
    "check_run_folder",
    "config_changes",
    "damaged_outputs",
    "load_table",
    "read_manifest",
    "retire",
    "vouched_tables",
    "write_manifest",
    "write_table",
]

MANIFEST = "manifest.json"
RESULTS = "results"
RETIRED = "retired"
_RUN_ITEMS = (MANIFEST, RESULTS, "figures", "report.html")


def check_run_folder(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """Check ``path`` can hold a run: writable, and new, empty or already a run folder.

    Raises:
        InputError: ``path`` is a file, not writable, or a non-empty folder that is not a run folder.
    """
    target = check_output_dir(path, option)
    if target.is_dir() and not (target / MANIFEST).exists():
        known = {*_RUN_ITEMS, "cache", "models", RETIRED}
        foreign = sorted(p.name for p in target.iterdir() if p.name not in known and p.name[0] != ".")
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise InputError(
                f"{option} {target} is a non-empty folder that is not a tunescope run folder (it holds "
                f"{shown}); choose a new or empty folder"
            )
    return target


def read_manifest(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a run folder.

    Raises:
        RunFolderError: there is no manifest, or it is not a JSON object.
    """
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise RunFolderError(
            f"{run_dir} is not a tunescope run folder (no {MANIFEST}); "
            f"run `tunescope analyze --out {run_dir}` first"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise RunFolderError(
            f"{path} is damaged ({_first_line(err)}); rerun `tunescope analyze --out {run_dir}` to rebuild it"
        ) from err
    except OSError as err:
        raise RunFolderError(f"cannot read {path}: {err.strerror}; check its permissions") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("stages", {}), dict):
        raise RunFolderError(
            f"{path} is not a tunescope manifest; rerun `tunescope analyze --out {run_dir}` to rebuild it"
        )
    return manifest


def write_manifest(run_dir: str | os.PathLike[str], manifest: Mapping[str, Any]) -> None:
    """Write ``RUN/manifest.json`` atomically."""
    write_json(Path(run_dir) / MANIFEST, manifest)


def write_table(
    run_dir: str | os.PathLike[str], name: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]
) -> dict[str, Any]:
    """Write ``RUN/results/<name>.csv`` atomically; returns its manifest record (path, sha256, rows)."""
    relative = f"{RESULTS}/{name}.csv"
    path = Path(run_dir) / relative
    write_csv(path, rows, columns)
    return {"path": relative, "sha256": sha256_file(path), "rows": len(rows)}


def damaged_outputs(run_dir: str | os.PathLike[str], record: Mapping[str, Any]) -> list[str]:
    """The outputs of a stage record that are missing or whose bytes no longer match their hash."""
    bad = []
    for output in record.get("outputs", []):
        if not isinstance(output, Mapping) or "sha256" not in output:  # written before hashes were kept
            bad.append(str(output.get("path") if isinstance(output, Mapping) else output))
            continue
        path = Path(run_dir) / str(output["path"])
        try:
            ok = path.is_file() and sha256_file(path) == output["sha256"]
        except OSError:
            ok = False
        if not ok:
            bad.append(str(output["path"]))
    return bad


def vouched_tables(manifest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Table name -> record, for the tables of stages done under the manifest's configuration."""
    digest = manifest.get("config_digest")
    tables: dict[str, dict[str, Any]] = {}
    for record in manifest.get("stages", {}).values():
        done = isinstance(record, Mapping) and record.get("status") == "done"
        if not done or record.get("config") != digest:
            continue
        for output in record.get("outputs", []):
            if isinstance(output, Mapping) and "path" in output:
                tables[Path(str(output["path"])).stem] = dict(output)
    return tables


def load_table(
    run_dir: str | os.PathLike[str], name: str, manifest: Mapping[str, Any] | None = None
) -> list[dict[str, str]]:
    """Rows of ``RUN/results/<name>.csv`` if the manifest vouches for it; ``[]`` if no done stage wrote it.

    Raises:
        RunFolderError: the table is missing or damaged (its bytes differ from the recorded hash).
    """
    root = Path(run_dir)
    manifest = read_manifest(root) if manifest is None else manifest
    record = vouched_tables(manifest).get(name)
    if record is None:
        return []
    path = root / str(record["path"])
    fix = f"rerun `tunescope analyze --out {root}` (same options) to recompute it"
    if not path.is_file():
        raise RunFolderError(f"{path} is missing although the manifest lists it; {fix}")
    if sha256_file(path) != record.get("sha256"):
        raise RunFolderError(f"{path} is damaged (its bytes differ from the hash in {MANIFEST}); {fix}")
    try:
        return read_csv(path)
    except (UnicodeDecodeError, csv.Error) as err:  # only if the manifest itself was edited to match
        raise RunFolderError(f"{path} is not a readable table ({_first_line(err)}); {fix}") from err


def retire(run_dir: str | os.PathLike[str], previous: Mapping[str, Any] | None, reason: str) -> str | None:
    """Move what an earlier configuration wrote (tables, figures, report) to ``RUN/retired/<digest>/``.

    Returns a note for the report saying what was moved and why, or None when there was nothing.
    """
    root = Path(run_dir)
    present = [root / item for item in _RUN_ITEMS[1:] if (root / item).exists()]
    if not present:
        return None
    digest = str((previous or {}).get("config_digest") or "unknown")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    target = root / RETIRED / f"{digest}-{stamp}"
    target.mkdir(parents=True, exist_ok=True)
    for item in present:
        shutil.move(str(item), str(target / item.name))
    if previous is not None:
        write_json(target / MANIFEST, previous)
    return f"{reason}: the earlier results were moved to {target.relative_to(root)}/."


def config_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """``"limit 256 -> 32, seed 0 -> 1"``: the options that differ between two recorded configs."""
    keys = [k for k in after if k not in {"out", "device", "stages"} and before.get(k) != after.get(k)]
    return ", ".join(f"{k} {before.get(k)!r} -> {after.get(k)!r}" for k in keys) or "the configuration"


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
