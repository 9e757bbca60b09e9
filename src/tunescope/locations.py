"""One notation for layer sets and one for places in a model, each parsed and printed by one pair.

Layer sets (``--ffn.layers``, ``--restore``, table columns such as ``ffn_removed_layers``) are printed
by :func:`format_layers`: sorted, comma-separated, a run of three or more consecutive layers as
``first-last`` (``"1-3,5"``). :func:`parse_layers` reads that and the spellings users type (``4,5,6``,
``4-6``, ``4..6``, ``layer.4``, spaces anywhere, ``none`` for the empty set), so whatever a table
says can be pasted back as an option.

Places in a model use the names of the design document: ``layer.3`` (a transformer layer, 1-based),
``layer.3.head.5`` (an attention head, 0-based within its layer) and ``layer.3.ffn`` (a layer's
feed-forward sublayer), made by :func:`location` and read by :func:`parse_location`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from tunescope.errors import InputError

__all__ = ["Location", "format_layers", "location", "parse_layers", "parse_location"]

_RANGE = re.compile(r"^(\d+)\s*(?:-|\.\.|–)\s*(\d+)$")
_LOCATION = re.compile(r"^layer\.(\d+)(?:\.head\.(\d+)|\.(ffn))?$")


def format_layers(layers: Iterable[int]) -> str:
    """A set of layers in the one notation: ``[5, 1, 2, 3]`` -> ``"1-3,5"``; no layer -> ``""``.

    Example:
        >>> format_layers([5, 1, 2, 3]), format_layers([5, 6]), format_layers([4]), format_layers([])
        ('1-3,5', '5,6', '4', '')
    """
    ordered = sorted({int(layer) for layer in layers})
    runs: list[list[int]] = []
    for layer in ordered:
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    parts = [f"{run[0]}-{run[-1]}" if len(run) >= 3 else ",".join(map(str, run)) for run in runs]
    return ",".join(parts)


def parse_layers(
    text: str | None, *, option: str = "the layer list", n_layers: int | None = None, first: int = 1
) -> tuple[int, ...] | None:
    """Read a set of layers written as :func:`format_layers` writes it, or as users type it.

    Args:
        text: e.g. ``"1-3,5"``, ``"4..6"``, ``"4, 5, 6"``, ``"layer.4"``; ``"none"`` or ``""`` is the
            empty set; ``None`` stays ``None`` (the option was not given).
        option: the option's name, for the error message (``--ffn.layers``).
        n_layers: when given, every layer must lie in ``first..n_layers``.
        first: the lowest valid layer (1 for transformer layers, 0 when the embeddings count).

    Returns:
        The layers, sorted, each once.

    Raises:
        InputError: a part is not a layer number or a range, a range runs backwards, or a layer is out
            of range.

    Example:
        >>> parse_layers("1-3, 5"), parse_layers("4..6"), parse_layers("layer.2,layer.4")
        ((1, 2, 3, 5), (4, 5, 6), (2, 4))
        >>> parse_layers("none"), parse_layers(None)
        ((), None)
    """
    if text is None:
        return None
    if text.strip().lower() in ("", "none"):
        return ()
    layers: set[int] = set()
    for raw in text.split(","):
        part = raw.strip()
        named = _LOCATION.match(part)
        span = _RANGE.match(part)
        if named and named.group(2) is None and named.group(3) is None:
            layers.add(int(named.group(1)))
        elif span:
            low, high = int(span.group(1)), int(span.group(2))
            if low > high:
                raise InputError(f"{option}: the range {part!r} runs backwards; write {high}-{low}")
            layers.update(range(low, high + 1))
        elif part.isdigit():
            layers.add(int(part))
        else:
            raise InputError(
                f"{option} takes layer numbers and ranges such as 1-3,5 (or 'none'); got {text!r}"
            )
    if n_layers is not None:
        bad = sorted(layer for layer in layers if not first <= layer <= n_layers)
        if bad:
            raise InputError(
                f"{option}: layer(s) {format_layers(bad)} out of range; this model's layers are "
                f"{first}..{n_layers}"
            )
    return tuple(sorted(layers))


@dataclass(frozen=True)
class Location:
    """A place in a model: a layer (1-based), optionally one of its heads (0-based) or its FFN."""

    layer: int
    head: int | None = None
    ffn: bool = False

    def __str__(self) -> str:
        return location(self.layer, head=self.head, ffn=self.ffn)


def location(layer: int, *, head: int | None = None, ffn: bool = False) -> str:
    """The name of a place: ``layer.3``, ``layer.3.head.5`` or ``layer.3.ffn``.

    Example:
        >>> location(3), location(3, head=5), location(3, ffn=True)
        ('layer.3', 'layer.3.head.5', 'layer.3.ffn')
    """
    if head is not None and ffn:
        raise InputError("a location is a layer, one of its heads or its FFN, not a head and the FFN")
    if head is not None:
        return f"layer.{layer}.head.{head}"
    return f"layer.{layer}.ffn" if ffn else f"layer.{layer}"


def parse_location(text: str, *, n_layers: int | None = None, n_heads: int | None = None) -> Location:
    """Read a place written as :func:`location` writes it, checking it against the model's shape.

    Raises:
        InputError: not a location name, or a layer or head out of range.

    Example:
        >>> parse_location("layer.3.head.5")
        Location(layer=3, head=5, ffn=False)
    """
    found = _LOCATION.match(text.strip())
    if not found:
        raise InputError(
            f"{text!r} is not a location; write layer.L, layer.L.head.H or layer.L.ffn (e.g. layer.3.head.5)"
        )
    layer = int(found.group(1))
    head = None if found.group(2) is None else int(found.group(2))
    if n_layers is not None and not 1 <= layer <= n_layers:
        raise InputError(f"{text}: layer {layer} out of range; this model's layers are 1..{n_layers}")
    if head is not None and n_heads is not None and not 0 <= head < n_heads:
        raise InputError(f"{text}: head {head} out of range; this model's heads are 0..{n_heads - 1}")
    return Location(layer, head, found.group(3) is not None)
