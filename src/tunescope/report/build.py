"""Build ``report.html`` from a run folder's manifest and the result tables it vouches for."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from tunescope import runfolder
from tunescope._io import write_bytes, write_text
from tunescope.pipeline import STAGES
from tunescope.report._section import SECTIONS, Section

__all__ = ["SECTIONS", "build_report"]


def build_report(run_dir: str | Path) -> Path:
    """Draw every section's figures and write ``RUN/report.html``; returns its path.

    Only tables the manifest vouches for are shown (:func:`tunescope.runfolder.vouched_tables`); a stage
    that ran but wrote only empty tables gets a section saying so instead of silently vanishing. Figures
    of sections no longer shown are removed from ``RUN/figures``.

    Raises:
        RunFolderError: ``run_dir`` is not a run folder, or a table it vouches for is damaged.
        InputError: ``run_dir`` cannot be written.
    """
    import jinja2

    from tunescope import stages as _stages  # noqa: F401  (stage titles)
    from tunescope.report import sections as _sections  # noqa: F401  (section builders)

    root = Path(run_dir)
    manifest = runfolder.read_manifest(root)
    runfolder.check_output_dir(root, "run folder")
    sec = Section(root, manifest)
    vouched = runfolder.vouched_tables(manifest)
    sections = []
    for name, stage in STAGES.items():
        status = manifest.get("stages", {}).get(name, {})
        builder = SECTIONS.get(name)
        content = builder(sec) if builder is not None else None
        if content is None:
            content = _empty(status, vouched)
        if content is not None:
            sections.append(
                {
                    "name": name,
                    "title": stage.title,
                    "description": stage.description,
                    "seconds": status.get("seconds"),
                    **content,
                }
            )
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("tunescope.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    html = env.get_template("report.html.j2").render(manifest=manifest, sections=sections)
    figures = root / "figures"
    for name, data in sec.figures.items():
        write_bytes(figures / name, data)
    if figures.is_dir():
        for stale in figures.glob("*.png"):
            if stale.name not in sec.figures:
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
    path = root / "report.html"
    write_text(path, html)
    return path


def _empty(status: dict[str, Any], vouched: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The section of a stage that is done and vouched for but whose tables hold no rows."""
    outputs = [str(o.get("path", "")) for o in status.get("outputs", []) if isinstance(o, dict)]
    tables = [Path(p).stem for p in outputs if Path(p).stem in vouched]
    if status.get("status") != "done" or not tables or any(vouched[t].get("rows") for t in tables):
        return None
    return {"empty": f"The stage ran but its table(s) {', '.join(t + '.csv' for t in tables)} hold no rows."}
