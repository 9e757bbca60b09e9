"""Reuse a report section drawn by an earlier build when nothing it was drawn from has changed.

Drawing the figures is most of a report build (about 10 s of matplotlib for the demo's 27 figures on
two cores), and a rerun of ``analyze`` with a warm cache changes no table. A section is a function of
the tables it read, the run's configuration and the code that drew it, so its rendered HTML is kept in
``RUN/cache/report/<stage>.json`` with:

* ``code``: a digest of tunescope's own source files (``.py``, ``.j2``) and the matplotlib and jinja2
  versions, so any edit of the drawing code redraws;
* ``config``: the manifest's ``config``;
* ``tables``: each table the section asked for and the manifest record it had (``None`` for a table
  that was not vouched for, so a table that appears later redraws too);
* ``figures``: the name and SHA-256 of each PNG it saved under ``RUN/figures``.

A kept section is used only when all four still match; its tables are then read once more through
:func:`tunescope.runfolder.load_table`, so a damaged table raises exactly as when drawing. Deleting
``RUN/cache`` only makes the next build draw again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunescope import runfolder
from tunescope._io import sha256_file, write_json

__all__ = ["code_digest", "load", "store"]

FORMAT = 1


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """SHA-256 over tunescope's source files and the drawing libraries' versions (once per process)."""
    import jinja2
    import matplotlib

    import tunescope

    digest = hashlib.sha256(f"{FORMAT} {matplotlib.__version__} {jinja2.__version__}".encode())
    package = Path(tunescope.__file__).parent
    for path in sorted(p for p in package.rglob("*") if p.suffix in {".py", ".j2"}):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _path(root: Path, stage: str) -> Path:
    return root / "cache" / "report" / f"{stage}.json"


def load(
    root: Path, stage: str, manifest: Mapping[str, Any], vouched: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any] | None:
    """The kept section of ``stage`` and its figures' bytes, or ``None`` when it must be drawn again.

    Returns ``{"content": bool, "html": str | None, "figures": {name: bytes}}``: ``content`` is whether
    the builder returned a section, ``html`` its rendered template (``None`` without one).

    Raises:
        RunFolderError: a table the section reads is damaged (as drawing it would).
    """
    try:
        entry = json.loads(_path(root, stage).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("code") != code_digest():
        return None
    if entry.get("config") != manifest.get("config"):
        return None
    tables = entry.get("tables")
    if not isinstance(tables, dict) or any(vouched.get(name) != record for name, record in tables.items()):
        return None
    figures: dict[str, bytes] = {}
    for figure in entry.get("figures", []):
        try:
            path = root / "figures" / str(figure["name"])
            if sha256_file(path) != figure["sha256"]:
                return None
            figures[path.name] = path.read_bytes()
        except (OSError, KeyError, TypeError):
            return None
    for name, record in tables.items():
        if record is not None:
            runfolder.load_table(root, name, manifest)  # raises for a damaged table, as drawing would
    html = entry.get("html")
    return {
        "content": bool(entry.get("content")),
        "html": html if isinstance(html, str) else None,
        "figures": figures,
    }


def store(
    root: Path,
    stage: str,
    manifest: Mapping[str, Any],
    tables: Mapping[str, Mapping[str, Any] | None],
    content: bool,
    html: str | None,
    figures: Mapping[str, bytes],
) -> None:
    """Keep a freshly drawn section for the next build (best effort: an unwritable cache only costs time)."""
    entry = {
        "code": code_digest(),
        "config": manifest.get("config"),
        "tables": {name: None if record is None else dict(record) for name, record in tables.items()},
        "figures": [
            {"name": name, "sha256": hashlib.sha256(data).hexdigest()} for name, data in figures.items()
        ],
        "content": content,
        "html": html,
    }
    with contextlib.suppress(OSError):
        write_json(_path(root, stage), entry)
