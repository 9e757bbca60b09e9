"""Progress bars on stderr (rich), switched off with ``progress=False`` or ``TUNESCOPE_NO_PROGRESS=1``."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

__all__ = ["track"]


def track(items: Iterable[T], *, total: int | None, description: str, enabled: bool = True) -> Iterator[T]:
    """Iterate over ``items`` while showing a progress bar on stderr."""
    if not enabled or os.environ.get("TUNESCOPE_NO_PROGRESS"):
        yield from items
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
