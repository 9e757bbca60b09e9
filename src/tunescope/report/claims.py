"""Report sentences built from a run's numbers and their intervals, never from the literature alone.

A section states a difference only with its interval, and a difference whose interval contains 0 as
"no measurable difference"; a sentence that cites a paper's finding says whether this run agrees,
disagrees or cannot tell (:func:`verdict`). The helpers take the values of table rows (strings or
numbers) and return text; they compute no statistic.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["Difference", "difference", "interval_text", "points", "verdict"]


def _f(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def interval_text(low: Any, high: Any, *, scale: float = 1.0, digits: int = 3) -> str:
    """``"[0.812, 0.861]"`` (``scale`` 100 gives points), or ``""`` when the interval is undefined."""
    lo, hi = _f(low) * scale, _f(high) * scale
    if math.isnan(lo) or math.isnan(hi):
        return ""
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def points(value: Any) -> str:
    """A metric difference in points (hundredths): ``0.019`` -> ``"1.9 points"``."""
    return f"{abs(_f(value)) * 100:.1f} points"


class Difference:
    """A difference of two metrics (``value = other - reference``) and its interval, as words.

    Attributes:
        value, low, high: The difference and its interval bounds (metric units).
        measurable: Whether the interval excludes 0 (False when it is undefined).
    """

    def __init__(self, value: Any, low: Any, high: Any) -> None:
        self.value, self.low, self.high = _f(value), _f(low), _f(high)
        defined = not (math.isnan(self.low) or math.isnan(self.high))
        self.measurable = defined and (self.low > 0 or self.high < 0)

    @property
    def gain(self) -> bool:
        """A measurable increase."""
        return self.measurable and self.value > 0

    @property
    def loss(self) -> bool:
        """A measurable decrease."""
        return self.measurable and self.value < 0

    def interval(self) -> str:
        """The interval in signed points, ``"[-3.1, -0.8] points"`` (``""`` when undefined)."""
        text = interval_text(self.low, self.high, scale=100, digits=1)
        return f"{text} points" if text else ""

    def words(self, *, loss: str = "costs", gain: str = "gains") -> str:
        """``"costs 1.9 points [-3.1, -0.8]"``, ``"gains ..."``, or ``"makes no measurable difference"``.

        Example:
            >>> Difference(-0.019, -0.031, -0.008).words()
            'costs 1.9 points [-3.1, -0.8]'
            >>> Difference(0.003, -0.004, 0.011).words()
            'makes no measurable difference (+0.3 points [-0.4, 1.1])'
        """
        bounds = interval_text(self.low, self.high, scale=100, digits=1)
        if not self.measurable:
            shown = f"{self.value * 100:+.1f} points"
            return f"makes no measurable difference ({shown}{' ' + bounds if bounds else ''})"
        verb = loss if self.value < 0 else gain
        return f"{verb} {points(self.value)} {bounds}"


def difference(
    row: dict[str, Any], value: str = "delta", low: str = "delta_ci_low", high: str = "delta_ci_high"
) -> Difference:
    """The :class:`Difference` in a table row's ``value``, ``low`` and ``high`` columns."""
    return Difference(row.get(value), row.get(low), row.get(high))


def verdict(agrees: bool | None) -> str:
    """``"this run agrees"``, ``"this run disagrees"`` or ``"this run cannot tell"`` (``None``)."""
    if agrees is None:
        return "this run cannot tell"
    return "this run agrees" if agrees else "this run disagrees"
