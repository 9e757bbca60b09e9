"""Build ``report.html`` from a run folder's manifest and the result tables it vouches for."""

from __future__ import annotations

import contextlib
import importlib
import importlib.resources
from pathlib import Path
from typing import Any

from tunescope import runfolder
from tunescope._io import write_bytes, write_text
from tunescope.pipeline import STAGES, Stage, ordered
from tunescope.report import _reuse
from tunescope.report._section import Section

__all__ = ["build_report"]


def build_report(run_dir: str | Path) -> Path:
    """Draw every section's figures and write ``RUN/report.html``; returns its path.

    Only tables the manifest vouches for are shown (:func:`tunescope.runfolder.vouched_tables`); a stage
    that ran but wrote only empty tables gets a section saying so instead of silently vanishing. Figures
    of sections no longer shown are removed from ``RUN/figures``. A section whose tables, configuration
    and drawing code are those of the previous build is taken from ``RUN/cache/report`` instead of being
    drawn again (:mod:`tunescope.report._reuse`).

    Raises:
        RunFolderError: ``run_dir`` is not a run folder, or a table it vouches for is damaged.
        InputError: ``run_dir`` cannot be written.
    """
    import jinja2
    import markupsafe

    from tunescope.stages import discover

    discover()
    root = Path(run_dir)
    manifest = runfolder.read_manifest(root)
    runfolder.check_output_dir(root, "run folder")
    sec = Section(root, manifest)
    vouched = runfolder.vouched_tables(manifest)
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("tunescope.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    sections = []
    for name in ordered():
        stage = STAGES[name]
        status = manifest.get("stages", {}).get(name, {})
        build, template = _section_of(stage)
        content: dict[str, Any] | None
        html: str | None
        if build is None:
            content, html = None, None
        elif (kept := _reuse.load(root, name, manifest, vouched)) is not None:
            sec.figures.update(kept["figures"])
            content, html = ({} if kept["content"] else None), kept["html"]
        else:
            content, html = _draw(sec, env, name, build, template)
        if content is None:
            content = _empty(status, vouched)
        if content is None:
            continue
        section = {
            "name": name,
            "title": stage.title,
            "description": stage.description,
            "seconds": status.get("seconds"),
            "seeds": _seed_spreads(sec, status),
            **content,
        }
        if "empty" not in content and html is not None:
            section["html"] = markupsafe.Markup(html)
        sections.append(section)
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


def _draw(
    sec: Section, env: Any, name: str, build: Any, template: str | None
) -> tuple[dict[str, Any] | None, str | None]:
    """Run a section builder and render its template; keep the result for the next build."""
    sec.read, before = {}, set(sec.figures)
    content = build(sec)
    html = None
    if content is not None and template is not None:
        html = str(env.from_string(template).render(section=content))
    drawn = {figure: data for figure, data in sec.figures.items() if figure not in before}
    _reuse.store(sec.root, name, sec.manifest, sec.read, content is not None, html, drawn)
    return content, html


def _seed_spreads(sec: Section, status: dict[str, Any]) -> list[dict[str, Any]]:
    """The stage's ``<table>_seeds`` tables (spread across fine-tuning seeds), as the stage wrote them."""
    spreads = []
    for output in status.get("outputs", []):
        name = Path(str(output.get("path", ""))).stem if isinstance(output, dict) else ""
        if not name.endswith("_seeds"):
            continue
        rows = sec.table(name)
        if rows:
            key = list(rows[0])[: list(rows[0]).index("column")]
            spreads.append({"table": name[: -len("_seeds")], "key": key, "rows": rows})
    return spreads


def _section_of(stage: Stage) -> tuple[Any, str | None]:
    """The stage's section builder (``<package>.section.build``) and template (``section.html.j2``)."""
    if stage.package is None:
        return None, None
    try:
        module = importlib.import_module(f"{stage.package}.section")
    except ModuleNotFoundError as err:
        if err.name != f"{stage.package}.section":
            raise
        return None, None
    template = importlib.resources.files(stage.package) / "section.html.j2"
    text = template.read_text(encoding="utf-8") if template.is_file() else None
    return getattr(module, "build", None), text


def _empty(status: dict[str, Any], vouched: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The section of a stage that is done and vouched for but whose tables hold no rows."""
    outputs = [str(o.get("path", "")) for o in status.get("outputs", []) if isinstance(o, dict)]
    tables = [Path(p).stem for p in outputs if Path(p).stem in vouched]
    if status.get("status") != "done" or not tables or any(vouched[t].get("rows") for t in tables):
        return None
    return {"empty": f"The stage ran but its table(s) {', '.join(t + '.csv' for t in tables)} hold no rows."}
