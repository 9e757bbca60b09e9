"""What a stage's report section builder (``stages/<name>/section.py: build(sec)``) gets."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from tunescope import runfolder

__all__ = ["Section"]


class Section:
    """The run folder, its manifest, and a way to save figures: all a section builder needs."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root, self.manifest = root, manifest
        self.figures: dict[str, bytes] = {}  # written by the report once every section is built
        self.read: dict[str, dict[str, Any] | None] = {}  # table -> its manifest record, as asked for

    @property
    def confidence(self) -> float:
        """The coverage of the run's intervals (``confidence`` in the manifest's config; 0.95 if absent)."""
        return float(self.manifest.get("config", {}).get("confidence", 0.95))

    def table(
        self, name: str, *, all_seeds: bool = False, all_poolings: bool = False
    ) -> list[dict[str, str]]:
        """Rows of ``RUN/results/<name>.csv`` as strings, if the manifest vouches for the table (else empty).

        A table of a stage that ran once per fine-tuning seed (``seed`` column) gives the rows of the
        run's own seed (the model the other sections describe), unless ``all_seeds``; the spread across
        seeds is in ``<name>_seeds``. Likewise a table with a ``pooling`` column gives the rows of the
        run's first pooling, unless ``all_poolings``.

        Raises:
            RunFolderError: the table is damaged (its bytes differ from the hash in the manifest).
        """
        record = runfolder.vouched_tables(self.manifest).get(name)
        self.read[name] = None if record is None else dict(record)
        rows = runfolder.load_table(self.root, name, self.manifest)
        config = self.manifest.get("config", {})
        if not all_seeds and len({row.get("seed") for row in rows}) > 1:
            own = str(config.get("seed", rows[0]["seed"]))
            rows = [row for row in rows if row["seed"] == own]
        if not all_poolings and len({row.get("pooling") for row in rows}) > 1:
            first = str(config.get("pooling", rows[0]["pooling"])).split(",")[0]
            rows = [row for row in rows if row["pooling"] == first]
        return rows

    def figure(self, name: str, fig: Figure) -> dict[str, str]:
        """Keep ``fig`` for ``figures/<name>.png`` and return it inlined for the HTML."""
        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        data = buffer.getvalue()
        self.figures[f"{name}.png"] = data
        return {"name": name, "src": "data:image/png;base64," + base64.b64encode(data).decode()}
