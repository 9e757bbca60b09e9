"""Hidden-state variability of each layer for a labelled task, and the layer selection it suggests.

Xie et al. ("Hidden State Variability of Pretrained Language Models Can Guide Computation Reduction for
Transfer Learning", Findings of EMNLP 2022) call a layer *well specialised* for a task when the
within-class variability of its hidden states is small next to the between-class variability, and
measure it with the neural-collapse ratio (Papyan et al. 2020)::

    nu = Tr(Sigma_W Sigma_B^+) / C
    Sigma_W = (1/C) sum_c (1/n_c) sum_{i in c} (h_i - mu_c)(h_i - mu_c)^T      (each class weighted equally)
    Sigma_B = (1/C) sum_c (mu_c - mu)(mu_c - mu)^T,   mu = (1/C) sum_c mu_c      (mean of the class means)

with ``^+`` the Moore-Penrose pseudo-inverse. Weighting classes equally makes ``nu`` blind to class
imbalance: duplicating every example of one class leaves it unchanged. Lower is more specialised. The
paper computes it on training data and pools each sequence by the mean of its token states other than
the special tokens ([CLS], [SEP]): extract with ``pooling="mean_no_special"``; ``pooling="mean"`` averages
the special tokens in as well, and is not the paper's measure.

Everything depends on the data only through per-class sums (count ``n_c``, ``sum h``, ``sum h h^T``),
so :class:`VariabilityStats` accumulates all layers batch by batch and merges across processes, like
:class:`tunescope.similarity.StreamingCKA`. Memory is ``n_layers * n_classes * d_model^2`` float64
numbers (the class-balanced ``Sigma_W`` needs each class's scatter separately).
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from tunescope._labels import row_labels
from tunescope.errors import DataError, InputError, MeasureError
from tunescope.extract import Representations
from tunescope.locations import format_layers
from tunescope.similarity._validate import as_matrix

__all__ = ["variability", "layer_variability", "VariabilityStats", "LayerSelection", "select_layers"]

Labels = Sequence[Hashable] | np.ndarray | Tensor
LayerBatch = Mapping[int, Tensor] | Sequence[Tensor]

#: eigenvalues of Sigma_B below this fraction of the largest are treated as zero by the pseudo-inverse
PINV_RTOL = 1e-10
#: rows processed at a time in `VariabilityStats.update` (bounds temporaries)
CHUNK_ROWS = 4096


def _add_class_sums(
    xs64: Sequence[Tensor], codes: Tensor, sums: Sequence[Tensor], seconds: Sequence[Tensor]
) -> None:
    """Add the per-class sums of several layers' (n, d_l) float64 rows into ``sums[l]`` (C, d_l) and
    ``seconds[l]`` (C, d_l, d_l), in place. Rows are grouped by class once for all layers; layers of one
    width share one batched product per class."""
    n_classes = sums[0].shape[0]
    for x, s in zip(xs64, sums, strict=True):
        s.index_add_(0, codes, x)
    same_width = len({x.shape[1] for x in xs64}) == 1
    stacked = torch.stack(list(xs64)) if same_width and len(xs64) > 1 else None
    order = torch.argsort(codes, stable=True)
    bounds = torch.cumsum(torch.bincount(codes, minlength=n_classes), 0).tolist()
    start = 0
    for c, end in enumerate(bounds):
        if end > start:
            rows = order[start:end]
            if stacked is not None:
                block = stacked[:, rows]  # (n_layers, n_c, d)
                products = torch.bmm(block.transpose(1, 2), block)
                for second, product in zip(seconds, products, strict=True):
                    second[c] += product
            else:
                for x, second in zip(xs64, seconds, strict=True):
                    block = x[rows]
                    second[c].addmm_(block.T, block)
        start = end


def _ratio(counts: Tensor, sums: Tensor, second: Tensor, shift: Tensor, what: str) -> float:
    """``Tr(Sigma_W Sigma_B^+) / C`` from per-class sums of rows shifted by ``shift`` (which cancels).

    Sigma_B = M^T M / C for the centred class means M (C, d); with M = U S V^T the pseudo-inverse is
    ``C V S^-2 V^T`` on the kept directions, so the trace is ``sum_j (v_j^T Sigma_W v_j) / lambda_j``
    with ``lambda_j = s_j^2 / C``. Eigenvalues below ``PINV_RTOL`` times the largest count as zero. The
    between-class scatter is zero (MeasureError) when its largest eigenvalue is at rounding level next to
    the mean squared norm of the unshifted rows.
    """
    n_classes = counts.shape[0]
    n_total = float(counts.sum())
    means = sums / counts.unsqueeze(1)
    within = (second / counts.view(-1, 1, 1)).mean(dim=0) - means.T @ means / n_classes
    centred = means - means.mean(dim=0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    eig = s.square() / n_classes
    # mean squared norm of the raw rows: E||x - a||^2 + 2 a.E[x - a] + ||a||^2
    raw_sq = (
        float(second.diagonal(dim1=1, dim2=2).sum()) / n_total
        + 2 * float(shift @ sums.sum(dim=0)) / n_total
        + float(shift.square().sum())
    )
    eps = torch.finfo(torch.float64).eps
    if float(eig.max()) <= (n_total * eps) ** 2 * max(raw_sq, torch.finfo(torch.float64).tiny):
        raise MeasureError(
            f"{what}: the class means are identical (zero between-class scatter), so the variability ratio "
            "is undefined; is this layer constant, or are the labels unrelated to the rows?"
        )
    keep = eig > PINV_RTOL * eig.max()
    v = vh[keep]
    projected = torch.einsum("rd,de,re->r", v, within, v)
    return float((projected / eig[keep]).sum()) / n_classes


def variability(x: Tensor, labels: Labels) -> float:
    """Xie et al.'s variability ratio of one layer: ``Tr(Sigma_W Sigma_B^+) / C`` (see the module doc).

    Computed in float64 whatever the input dtype. Invariant to renaming classes, to orthogonal rotations
    and translations of the features, and to duplicating the examples of a class.

    Args:
        x: (n_examples, d_model) representations of one layer.
        labels: (n_examples,) class labels of any hashable type; at least two classes.

    Returns:
        The ratio (>= 0; lower = better separated classes).

    Raises:
        DataError: a label count different from the row count, or a single class.
        MeasureError: NaN/inf values, or zero between-class scatter.

    Example:
        >>> x = torch.tensor([[0.0, 0.0], [0.0, 2.0], [4.0, 0.0], [4.0, 2.0]])
        >>> variability(x, ["a", "a", "b", "b"])  # Sigma_W = diag(0, 1), Sigma_B = diag(4, 0)
        0.0
        >>> round(variability(torch.tensor([[0.0], [2.0], [4.0], [6.0]]), [0, 0, 1, 1]), 12)  # (1/4) / 2
        0.125
    """
    x = as_matrix(x, "x")
    values = row_labels(labels, x.shape[0], "variability")
    classes, codes = np.unique(values, return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"variability needs at least two classes; every label is {classes[0]!r}")
    x64 = x.to(torch.float64)
    shift = x64.mean(dim=0)
    code_tensor = torch.from_numpy(codes).to(x.device)
    counts = torch.bincount(code_tensor, minlength=len(classes)).to(torch.float64)
    d = x.shape[1]
    sums = torch.zeros(len(classes), d, dtype=torch.float64, device=x.device)
    second = torch.zeros(len(classes), d, d, dtype=torch.float64, device=x.device)
    _add_class_sums([x64 - shift], code_tensor, [sums], [second])
    return _ratio(counts, sums, second, shift, "variability")


class VariabilityStats:
    """Per-class sums of every layer, accumulated batch by batch; ``compute()`` gives each layer's ratio.

    Rows are shifted by each layer's mean over the first batch before their products are summed (in
    float64), so large common offsets in the activations cost no precision. Two accumulators over
    disjoint data merge into the accumulator over their union (classes are matched by label, so shards
    may see different classes). ``compute()`` equals :func:`variability` on the concatenated rows to
    float64 rounding.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(100) % 3
        >>> layers = {1: torch.randn(100, 4, generator=g), 2: torch.randn(100, 4, generator=g) + y[:, None]}
        >>> stats = VariabilityStats()
        >>> for rows in (slice(0, 60), slice(60, 100)):
        ...     _ = stats.update({k: v[rows] for k, v in layers.items()}, y[rows])
        >>> values = stats.compute()
        >>> values[2] < values[1]
        True
    """

    def __init__(self) -> None:
        self._layers: list[int] = []
        self._dims: list[int] = []
        self._classes: list[Hashable] = []
        self._index: dict[Hashable, int] = {}
        self._shift: list[Tensor] = []
        self._counts: Tensor | None = None  # (C,)
        self._sums: list[Tensor] = []  # per layer (C, d)
        self._second: list[Tensor] = []  # per layer (C, d, d)

    @property
    def n_examples(self) -> int:
        """Number of rows accumulated so far."""
        return 0 if self._counts is None else int(self._counts.sum())

    @property
    def classes(self) -> tuple[Hashable, ...]:
        """The labels seen so far, in order of first appearance."""
        return tuple(self._classes)

    def update(self, batch: LayerBatch | Representations, labels: Labels | None = None) -> VariabilityStats:
        """Add one batch of rows.

        Args:
            batch: layer -> (n_batch, d_model) tensors (a Representations works, its ``labels`` are used when
                ``labels`` is None), or a sequence of per-layer tensors (layers numbered 0, 1, ...). The same
                layers and widths in every call.
            labels: (n_batch,) labels.

        Returns:
            self, so calls chain.

        Raises:
            DataError: a label count different from the row count.
            MeasureError: NaN/inf, mismatched rows, or layers/widths differing from earlier batches.
        """
        if labels is None and isinstance(batch, Representations):
            labels = batch.labels
        items = sorted(batch.items()) if isinstance(batch, Mapping) else list(enumerate(batch))
        if not items:
            raise MeasureError("the batch holds no layers")
        layers = [int(key) for key, _ in items]
        xs = [as_matrix(t, f"batch[{key}]") for key, t in items]
        n = xs[0].shape[0]
        for key, x in zip(layers, xs, strict=True):
            if x.shape[0] != n:
                raise MeasureError(f"every layer needs the same rows; layer {key} has {x.shape[0]}, not {n}")
        values = row_labels(labels, n, "VariabilityStats.update")
        dims = [x.shape[1] for x in xs]
        if not self._layers:
            self._start(layers, dims, xs)
        elif layers != self._layers or dims != self._dims:
            raise MeasureError(
                f"this accumulator holds layers {self._layers} with widths {self._dims}; the batch has "
                f"layers {layers} with widths {dims}"
            )
        if n == 0:
            return self
        batch_classes, batch_codes = np.unique(values, return_inverse=True)
        self._add_classes([label for label in batch_classes.tolist() if label not in self._index])
        to_global = torch.tensor([self._index[label] for label in batch_classes.tolist()], dtype=torch.long)
        codes = to_global[torch.from_numpy(batch_codes)]
        n_classes = len(self._classes)
        assert self._counts is not None
        for start in range(0, n, CHUNK_ROWS):
            rows = slice(start, start + CHUNK_ROWS)
            xs64 = [x[rows].to(torch.float64) - shift for x, shift in zip(xs, self._shift, strict=True)]
            self._counts += torch.bincount(codes[rows], minlength=n_classes).to(torch.float64)
            _add_class_sums(xs64, codes[rows].to(xs[0].device), self._sums, self._second)
        return self

    def _start(self, layers: list[int], dims: list[int], xs: list[Tensor]) -> None:
        self._layers, self._dims = layers, dims
        self._shift = [x.to(torch.float64).mean(dim=0) for x in xs]
        self._counts = torch.zeros(0, dtype=torch.float64)
        device = xs[0].device
        self._sums = [torch.zeros(0, d, dtype=torch.float64, device=device) for d in dims]
        self._second = [torch.zeros(0, d, d, dtype=torch.float64, device=device) for d in dims]

    def _add_classes(self, labels: list[Hashable]) -> None:
        """Append zero sums for new classes (one concatenation for all of them)."""
        if not labels:
            return
        assert self._counts is not None
        for label in labels:
            self._index[label] = len(self._classes)
            self._classes.append(label)
        k = len(labels)
        self._counts = torch.cat([self._counts, self._counts.new_zeros(k)])
        self._sums = [torch.cat([s, s.new_zeros(k, s.shape[1])]) for s in self._sums]
        self._second = [torch.cat([s, s.new_zeros(k, *s.shape[1:])]) for s in self._second]

    def merge(self, other: VariabilityStats) -> VariabilityStats:
        """A new accumulator over the union of both accumulators' rows (neither is changed).

        Raises:
            MeasureError: the accumulators hold different layers or widths.
        """
        if not isinstance(other, VariabilityStats):
            raise MeasureError(f"can only merge another VariabilityStats; got {type(other).__name__}")
        if other._counts is None:
            return copy.deepcopy(self)
        if self._counts is None:
            return copy.deepcopy(other)
        if (self._layers, self._dims) != (other._layers, other._dims):
            raise MeasureError(
                f"cannot merge accumulators of layers {self._layers} (widths {self._dims}) and "
                f"{other._layers} (widths {other._dims})"
            )
        out = copy.deepcopy(self)
        out._add_classes([label for label in other._classes if label not in out._index])
        assert out._counts is not None and other._counts is not None
        target = torch.tensor([out._index[label] for label in other._classes], dtype=torch.long)
        counts = other._counts.to(out._counts.device)
        out._counts[target] += counts
        for i in range(len(out._layers)):
            # move the other's sums from its shift to ours: x - a = (x - b) - delta, delta = a - b
            delta = (out._shift[i] - other._shift[i].to(out._shift[i].device)).to(torch.float64)
            sums = other._sums[i].to(out._sums[i].device)
            second = other._second[i].to(out._second[i].device)
            cross = sums.unsqueeze(2) * delta.view(1, 1, -1)  # s delta^T per class
            shifted = (
                second - cross - cross.transpose(1, 2) + counts.view(-1, 1, 1) * torch.outer(delta, delta)
            )
            out._sums[i].index_add_(0, target.to(sums.device), sums - counts.unsqueeze(1) * delta)
            out._second[i].index_add_(0, target.to(sums.device), shifted)
        return out

    def compute(self) -> dict[int, float]:
        """Layer -> variability ratio, in float64.

        Raises:
            DataError: nothing accumulated, or a single class.
            MeasureError: a layer with zero between-class scatter.
        """
        if self._counts is None or self.n_examples == 0:
            raise DataError("VariabilityStats holds no rows; call update() first")
        if len(self._classes) < 2:
            raise DataError(f"variability needs at least two classes; every label is {self._classes[0]!r}")
        counts = self._counts.to(self._sums[0].device)
        return {
            layer: _ratio(counts, self._sums[i], self._second[i], self._shift[i], f"layer {layer}")
            for i, layer in enumerate(self._layers)
        }


def layer_variability(
    reps: Mapping[int, Tensor] | Representations, labels: Labels | None = None
) -> dict[int, float]:
    """:func:`variability` of every layer in one pass over the rows (through :class:`VariabilityStats`).

    Args:
        reps: layer -> (n_examples, d_model) representations; a Representations' ``labels`` are used when
            ``labels`` is None.
        labels: (n_examples,) labels.

    Returns:
        Layer -> variability ratio.

    Example:
        >>> y = torch.arange(6) % 2
        >>> reps = {0: torch.randn(6, 3), 1: torch.stack([y * 5.0, torch.ones(6), torch.zeros(6)], 1)}
        >>> layer_variability(reps, y)[1]
        0.0
    """
    if labels is None and isinstance(reps, Representations):
        labels = reps.labels
    return VariabilityStats().update(reps, labels).compute()


@dataclass(frozen=True)
class LayerSelection:
    """Where to put the classifier and which layers to adapt, from a variability curve (Xie et al.).

    Attributes:
        classifier_layer: the most specialised layer ``l*``: the classifier goes on its output.
        adapt_layers: the contiguous layers to tune (fine-tune or adapter-tune), ending at ``l*``.
        dropped_layers: the layers above ``l*``, which the model no longer needs.
        reason: one sentence saying why, for reports.
    """

    classifier_layer: int
    adapt_layers: tuple[int, ...]
    dropped_layers: tuple[int, ...]
    reason: str


def select_layers(variability: Mapping[int, float], budget: int) -> LayerSelection:
    """Xie et al.'s layer selection: classifier on the most specialised layer, tune the ``budget`` below it.

    Implemented rule (the paper's Section 3 as we read it; their Figure 2 shows L = 5, l* = 3, the layers
    above l* dropped and the layers just below it tuned):

    - ``l* = argmin_l nu(l)`` over the transformer layers ``1..L`` (layer 0, the embedding output, is not
      a candidate when other layers are given); ties go to the lower layer (cheaper).
    - adapt the ``budget`` consecutive layers ``l* - budget + 1 .. l*`` (fewer when ``l* < budget``:
      layers below 1 do not exist), keep the layers below them frozen, and drop the layers above ``l*``.

    Args:
        variability: layer -> variability ratio (:func:`layer_variability`).
        budget: how many layers may be tuned (``m`` in the paper), >= 1.

    Example:
        >>> sel = select_layers({0: 9.0, 1: 5.0, 2: 3.0, 3: 1.0, 4: 2.0, 5: 2.5}, budget=2)
        >>> sel.classifier_layer, sel.adapt_layers, sel.dropped_layers
        (3, (2, 3), (4, 5))
    """
    if not variability:
        raise InputError("select_layers needs the variability of at least one layer")
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise InputError(f"budget must be a positive number of layers; got {budget!r}")
    values = {int(layer): float(value) for layer, value in variability.items()}
    bad = [layer for layer, value in values.items() if not np.isfinite(value)]
    if bad:
        raise InputError(f"variability of layers {bad} is not finite")
    candidates = [layer for layer in sorted(values) if layer >= 1] or sorted(values)
    best = min(candidates, key=lambda layer: (values[layer], layer))
    adapt = tuple(range(max(min(candidates), best - budget + 1), best + 1))
    dropped = tuple(layer for layer in sorted(values) if layer > best)
    reason = (
        f"layer {best} has the lowest variability ({values[best]:.3g}) of layers "
        f"{format_layers(candidates)}: put the classifier on it"
        + (f", drop layers {format_layers(dropped)}" if dropped else "")
        + f" and tune the {len(adapt)} layer{'s' if len(adapt) > 1 else ''} {format_layers(adapt)}"
        + (f" (budget {budget}; only {len(adapt)} exist up to layer {best})" if len(adapt) < budget else "")
    )
    return LayerSelection(best, adapt, dropped, reason)
