"""Build ``report.html`` from a run folder's manifest and result tables."""

from __future__ import annotations

from pathlib import Path

from tunescope._io import write_text
from tunescope.pipeline import STAGES, read_manifest
from tunescope.report._section import SECTIONS, Section

__all__ = ["SECTIONS", "build_report"]


def build_report(run_dir: str | Path) -> Path:
    """Draw every section's figures and write ``RUN/report.html``; returns its path."""
    import jinja2

    from tunescope import stages as _stages  # noqa: F401  (stage titles)
    from tunescope.report import sections as _sections  # noqa: F401  (section builders)

    root = Path(run_dir)
    manifest = read_manifest(root)
    sec = Section(root, manifest)
    sections = []
    for name, stage in STAGES.items():
        builder = SECTIONS.get(name)
        content = builder(sec) if builder is not None else None
        status = manifest.get("stages", {}).get(name, {})
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
    path = root / "report.html"
    write_text(path, html)
    return path
