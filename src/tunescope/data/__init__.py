"""Tasks and their data: builtin offline tasks, GLUE/SuperGLUE definitions, users' own files.

Example:
    >>> from tunescope.data import get_task
    >>> task = get_task("movie-sentiment")
    >>> task.label_names, task.metric
    (('negative', 'positive'), 'accuracy')
"""

from __future__ import annotations

from tunescope.data.examples import Examples
from tunescope.data.files import load_file
from tunescope.data.registry import TASKS, get_task
from tunescope.data.task import DataSource, LabelKind, Task

__all__ = ["Examples", "Task", "DataSource", "LabelKind", "TASKS", "get_task", "load_file"]
