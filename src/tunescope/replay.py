"""Layer replay: evaluate variants of one task model on the same batches, sharing the layers they agree on.

A truncation sweep evaluates the model cut after layer k for every k; a layer ablation evaluates the
model with some of its layers replaced. Every such variant computes exactly what the model itself
computes below its lowest changed layer. :func:`replay_predictions` therefore runs the model once per
batch with forward hooks on its ``L`` layer modules, keeping each layer's raw output (whatever object
the layer returns: a tensor in transformers 5, a tuple in 4.x), and then evaluates each
:class:`Variant` on the same batch with the model's own forward, its layer ``ModuleList`` swapped
(:func:`layers_swapped`) for

* stand-ins for layers ``1..replayed`` that return the recorded outputs and compute nothing, then
* the variant's ``top`` modules; none: the model ends after layer ``replayed``, which is how
  :func:`tunescope.surgery.truncate` cuts it.

The embeddings, whatever the encoder does between layers (DeBERTa-v2's convolution after layer 1) and
the task head (pooler and classifier) stay the model's own code, so each variant's logits are the
logits of the model it stands for: the same operations on the same inputs. Per batch this costs one
full forward, plus per variant the embeddings, its ``top`` layers and the head.

ALBERT runs one shared layer module at every position (its encoder indexes layer groups, not a list of
``L`` layers), so there is no per-position list to swap: :func:`supported` is false there and callers
evaluate one model at a time instead.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import transformers
from torch import nn

from tunescope.errors import InputError, UnsupportedArchitectureError
from tunescope.models.adapters import get_adapter
from tunescope.models.loading import Encoder, _split

if TYPE_CHECKING:
    from tunescope.data import Examples
    from tunescope.data.tokens import TokenExamples
    from tunescope.inference import Predictions

__all__ = ["Replayed", "Variant", "layers_swapped", "replay_predictions", "supported"]


@dataclass(frozen=True)
class Variant:
    """A model made of the recorded model's layers ``1..replayed``, then ``top``, then the model's head.

    Attributes:
        replayed: How many bottom layers the variant shares with the model (``0..L``); their outputs
            are taken from the model's own pass over the batch, not computed again.
        top: Modules that run as layers ``replayed + 1 ..`` (each called as the model calls its layers,
            e.g. a restored copy of a layer, or the model's own layer). Empty: the variant ends after
            layer ``replayed`` (the model truncated to ``replayed`` layers).

    Example:
        >>> Variant(2).replayed, Variant(2).top  # the model cut after layer 2
        (2, ())
    """

    replayed: int
    top: tuple[nn.Module, ...] = ()


@dataclass(frozen=True)
class Replayed:
    """What one :class:`Variant` predicted, and how long a batch through it took.

    Attributes:
        predictions: As :func:`tunescope.inference.predictions` gives them, in the examples' order.
        seconds_per_batch: The time one batch takes through the variant as a model of its own,
            assembled from the shared passes: tokenisation (its share per batch) and collation, the
            variant's own pass (embeddings, ``top`` layers, head, reading the logits back) and the
            time the model's pass spent in the replayed layers ``1..replayed``. Timestamps are CUDA
            events on a GPU (nothing waits inside the forward), wall-clock time elsewhere.
    """

    predictions: Predictions
    seconds_per_batch: float


class _Replay(nn.Module):
    """Stands in for one layer: returns what that layer returned in the recorded pass."""

    def __init__(self, output: Any) -> None:
        super().__init__()
        self.output = output

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.output


def _slot(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList] | None:
    """``(parent, attribute, ModuleList)`` of the model's layers, or ``None`` where replay cannot apply.

    Found at the adapter's ``layer_list`` paths, as :func:`tunescope.surgery.truncate` finds it; ``None``
    for a family that shares layer modules (ALBERT) or a list that is not one module per position.
    """
    adapter = get_adapter(model)
    if adapter.shared_layers():
        return None
    found = adapter.layer_stack(model)
    if found is None:
        return None
    stack = found[2]
    distinct = len({id(layer) for layer in stack}) == len(stack)
    return found if len(stack) == adapter.num_layers(model.config) and distinct else None


def supported(model: Encoder | transformers.PreTrainedModel) -> bool:
    """Whether :func:`replay_predictions` applies: one layer module per position in a ``ModuleList``.

    False for ALBERT, whose positions share one layer module.

    Example:
        >>> from tunescope.testing.tiny import tiny_model
        >>> supported(tiny_model("bert")), supported(tiny_model("albert"))
        (True, False)
    """
    return _slot(_split(model)) is not None


@contextlib.contextmanager
def layers_swapped(
    model: Encoder | transformers.PreTrainedModel, modules: Sequence[nn.Module]
) -> Iterator[None]:
    """Run ``model`` with ``modules`` as its layer list; the original list is put back afterwards.

    ``modules[:k]`` of the model's own layers is the model truncated to ``k`` layers (the structure
    :func:`tunescope.surgery.truncate` gives its copy, DistilBERT's cached layer count included).

    Raises:
        UnsupportedArchitectureError: The family shares layer modules (ALBERT; see :func:`supported`).

    Example:
        >>> from tunescope.surgery import count_parameters, truncate
        >>> from tunescope.testing.tiny import tiny_model
        >>> enc = tiny_model("bert", num_layers=3)
        >>> with layers_swapped(enc, enc.adapter.layers(enc.model)[:1]):
        ...     cut = count_parameters(enc)
        >>> cut == count_parameters(truncate(enc, 1)), enc.num_layers
        (True, 3)
    """
    hf = _split(model)
    slot = _slot(hf)
    if slot is None:
        raise UnsupportedArchitectureError(
            f"{get_adapter(hf).family}: its layer positions share modules (or its layer list is not one "
            "module per layer), so its layers cannot be swapped; evaluate each model on its own"
        )
    parent, name, original = slot
    count = getattr(parent, "n_layers", None)  # DistilBERT's Transformer caches its layer count
    setattr(parent, name, nn.ModuleList(modules))
    if isinstance(count, int):
        setattr(parent, "n_layers", len(modules))  # noqa: B010
    try:
        yield
    finally:
        setattr(parent, name, original)
        if isinstance(count, int):
            setattr(parent, "n_layers", count)  # noqa: B010


class _Clock:
    """Timestamps on the device's timeline: CUDA events on a GPU, so nothing waits inside a forward."""

    def __init__(self, device: torch.device) -> None:
        self._stream = torch.cuda.current_stream(device) if device.type == "cuda" else None

    def now(self) -> Any:
        if self._stream is None:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(self._stream)
        return event

    def seconds(self, start: Any, end: Any) -> float:
        if self._stream is None:
            return float(end - start)
        end.synchronize()
        return float(start.elapsed_time(end)) / 1000


@contextlib.contextmanager
def _recording(
    layers: Sequence[nn.Module], clock: _Clock, outputs: list[Any], marks: list[Any]
) -> Iterator[None]:
    """Hooks that keep each layer's raw output, and timestamps: layer 1's start, then each layer's end."""

    def keep(module: nn.Module, args: Any, output: Any) -> None:
        outputs.append(output)
        marks.append(clock.now())

    handles = [layers[0].register_forward_pre_hook(lambda module, args: marks.append(clock.now()))]
    handles += [layer.register_forward_hook(keep) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _check_variants(variants: Sequence[Variant], n_layers: int) -> None:
    for variant in variants:
        if not isinstance(variant, Variant):
            raise InputError(f"replay_predictions: expected Variant objects, got {type(variant).__name__}")
        depth = variant.replayed + len(variant.top)
        if not 0 <= variant.replayed <= n_layers or not 1 <= depth <= n_layers:
            raise InputError(
                f"replay_predictions: a variant replaying {variant.replayed} layer(s) under "
                f"{len(variant.top)} more has {depth}; a variant of this {n_layers}-layer model "
                f"replays 0..{n_layers} layers and has 1..{n_layers} in all"
            )
        if not all(isinstance(m, nn.Module) for m in variant.top):
            raise InputError("replay_predictions: a variant's top layers must be torch modules")


def replay_predictions(
    encoder: Encoder,
    examples: Examples | TokenExamples,
    variants: Sequence[Variant],
    *,
    batch_size: int = 64,
    max_length: int = 128,
    device: str | torch.device | None = None,
    progress: bool = False,
    description: str = "evaluating variants",
) -> list[Replayed]:
    """Predictions of each variant of ``encoder``, from one full pass of ``encoder`` per batch.

    Equals :func:`tunescope.inference.predictions` of each variant as a model of its own (same
    tokenisation, length-sorted batches and example order), computing layers ``1..replayed`` once per
    batch for all variants. Batches are the outer loop, so memory holds one batch's layer outputs.
    ``encoder``'s layer list is swapped during each variant's pass and put back after it (also on
    error); ``Variant(L)`` is ``encoder`` itself and costs no extra pass.

    Args:
        encoder: A task model (sequence or token classifier) whose family :func:`supported` accepts.
        examples: Labelled examples.
        variants: The models to evaluate.
        batch_size: Examples per forward pass.
        max_length: Inputs are truncated to this many tokens.
        device: Move the model (and the variants' ``top`` modules) here first (default: where it is).
        progress: A progress bar over batches on stderr.
        description: The progress bar's label.

    Returns:
        One :class:`Replayed` per variant, in order.

    Raises:
        UnsupportedArchitectureError: The family shares layer modules (ALBERT).
        InputError: A variant with too many or too few layers, or a head that does not fit the examples.
        DataError: The examples have no labels, or there are none.

    Example:
        >>> import numpy as np
        >>> from tunescope.data import Examples
        >>> from tunescope.inference import predictions
        >>> from tunescope.surgery import truncate
        >>> from tunescope.testing.tiny import tiny_model
        >>> ex = Examples(["good", "bad", "fine"], None, np.array([1, 0, 1]), "demo", "validation",
        ...               ("negative", "positive"))
        >>> enc = tiny_model("bert", task="classifier", num_layers=3)
        >>> full, cut = replay_predictions(enc, ex, [Variant(3), Variant(1)])
        >>> np.array_equal(cut.predictions.predictions, predictions(truncate(enc, 1), ex).predictions)
        True
    """
    from tunescope._progress import track
    from tunescope.inference import Predictions, batch_items, in_row_order, length_batches, prepare

    hf = encoder.model
    slot = _slot(hf)
    if slot is None:
        raise UnsupportedArchitectureError(
            f"replay_predictions: {encoder.family} shares layer modules across positions; evaluate each "
            "variant with tunescope.inference.predictions"
        )
    own = list(slot[2])
    n_layers = len(own)
    variants = list(variants)
    _check_variants(variants, n_layers)
    started = time.perf_counter()
    inputs = prepare(encoder, examples, batch_size=batch_size, max_length=max_length, device=device)
    tokenising = time.perf_counter() - started
    tops = list({id(m): m for variant in variants for m in variant.top}.values())
    modes = [m.training for m in tops]
    clock = _Clock(inputs.device)
    parts: list[list[Any]] = [[] for _ in variants]
    seconds = [tokenising] * len(variants)
    batches = list(length_batches(inputs.rows, batch_size))
    was_training = hf.training
    hf.eval()
    for module in tops:
        module.to(inputs.device).eval()
    try:
        with torch.inference_mode():
            for idx in track(batches, total=len(batches), description=description, enabled=progress):
                started = time.perf_counter()
                batch = inputs.collate([inputs.rows[i] for i in idx])
                labels = batch.pop("labels")
                feed = {k: v.to(inputs.device) for k, v in batch.items()}
                collating = time.perf_counter() - started
                outputs: list[Any] = []
                marks: list[Any] = []  # layer 1's start, then the end of each layer
                start = clock.now()
                with _recording(own, clock, outputs, marks):
                    logits = hf(**feed).logits
                full = batch_items(logits, labels, idx, kind=inputs.kind, regression=inputs.regression)
                full_seconds = clock.seconds(start, clock.now())
                for i, variant in enumerate(variants):
                    if variant.replayed == n_layers and not variant.top:  # the model itself
                        parts[i].append(full)
                        seconds[i] += collating + full_seconds
                        continue
                    stack = [_Replay(out) for out in outputs[: variant.replayed]] + list(variant.top)
                    start = clock.now()
                    with layers_swapped(hf, stack):
                        logits = hf(**feed).logits
                    parts[i].append(
                        batch_items(logits, labels, idx, kind=inputs.kind, regression=inputs.regression)
                    )
                    own_seconds = clock.seconds(start, clock.now())
                    below = clock.seconds(marks[0], marks[variant.replayed]) if variant.replayed else 0.0
                    seconds[i] += collating + own_seconds + below
    finally:
        hf.train(was_training)
        for module, mode in zip(tops, modes, strict=True):
            module.train(mode)
    return [
        Replayed(Predictions(*in_row_order(found)), total / len(batches))
        for found, total in zip(parts, seconds, strict=True)
    ]
