"""What a report section builder gets, and the registry that maps stage names to builders."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from tunescope.pipeline import load_table

__all__ = ["SECTIONS", "Section", "SectionBuilder", "section"]


class Section:
    """The run folder, its manifest, and a way to save figures: all a section builder needs."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root, self.manifest = root, manifest

    def table(self, name: str) -> list[dict[str, str]]:
        """Rows of ``RUN/results/<name>.csv`` as strings (empty when the stage did not write it)."""
        return load_table(self.root, name)

    def figure(self, name: str, fig: Figure) -> dict[str, str]:
        """Save ``fig`` as ``figures/<name>.png`` and return it inlined for the HTML."""
        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        data = buffer.getvalue()
        (self.root / "figures").mkdir(exist_ok=True)
        (self.root / "figures" / f"{name}.png").write_bytes(data)
        return {"name": name, "src": "data:image/png;base64," + base64.b64encode(data).decode()}


SectionBuilder = Callable[[Section], dict[str, Any] | None]
SECTIONS: dict[str, SectionBuilder] = {}


def section(name: str) -> Callable[[SectionBuilder], SectionBuilder]:
    """Register the decorated function as the builder of stage ``name``'s report section.

    The builder reads the stage's tables, draws figures with :meth:`Section.figure`, and returns the
    values ``templates/sections/<name>.html.j2`` shows, or None when the stage left nothing to show.
    """

    def register(builder: SectionBuilder) -> SectionBuilder:
        SECTIONS[name] = builder
        return builder

    return register
