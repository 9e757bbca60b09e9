"""Linear probes on every layer at once, with control tasks and selectivity (Hewitt & Liang 2019).

A probe is a multinomial logistic regression from one layer's representations to a label: part of
speech for each word (token level, on ``pooling="tokens"`` representations) or the example's label
(sentence level, on ``cls``/``mean`` representations). Its held-out accuracy says how linearly decodable
the label is from that layer. A control task (Hewitt & Liang, "Designing and Interpreting Probes with
Control Tasks", EMNLP 2019) gives each word *type* a random label drawn from the task's label
distribution; a probe that also reaches high accuracy on it is memorising word identity, not reading
the property. Selectivity = accuracy - control accuracy.

Every accuracy comes with a percentile bootstrap interval over the test *sentences* (the words of one
sentence resampled together: they are not independent evidence), computed from the probes' stored test
predictions without refitting anything (:class:`ProbeResult`); selectivity is resampled paired, the
probe and its control scored on the same resample.

All layers and all regularisation strengths are fitted together, and so are the probes of several
label sets and models (:func:`fit_probe_tasks`): the sub-problems share nothing but their inputs, so
they are stacked into one batched problem (per layer, one matrix product for the logits of every
probe still moving, and one for their gradients) and solved by an L-BFGS whose history, step sizes and
stopping test are kept per sub-problem (see :func:`_batched_lbfgs`). The regularisation strength of
each layer is chosen on validation data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from tunescope._labels import row_labels
from tunescope.errors import DataError, InputError
from tunescope.extract import Representations
from tunescope.intervals import Interval, check_interval_options, difference_interval, metric_interval

__all__ = [
    "LayerProbes",
    "ProbeResult",
    "ProbeTask",
    "control_labels",
    "fit_probe_tasks",
    "fit_probes",
    "probe_layers",
]

LayerReps = Mapping[int, Tensor] | Representations
Labels = Sequence[Hashable] | np.ndarray | Tensor


# --- input checks ---------------------------------------------------------------------------------


def _layers_of(reps: LayerReps, what: str) -> dict[int, Tensor]:
    """The per-layer 2-D float tensors of ``reps``, checked for equal row counts and finite values."""
    if not isinstance(reps, Mapping) or not reps:
        raise InputError(f"{what} must be a non-empty mapping layer -> (n_rows, d_model) tensor")
    layers: dict[int, Tensor] = {}
    n_rows = None
    for layer in sorted(reps):
        x = reps[layer]
        if not isinstance(x, Tensor) or x.ndim != 2:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise InputError(f"{what}[{layer}] must be a 2-D (n_rows, d_model) tensor; got {shape}")
        if n_rows is None:
            n_rows = x.shape[0]
        elif x.shape[0] != n_rows:
            raise InputError(f"{what}: layer {layer} has {x.shape[0]} rows, the first layer {n_rows}")
        if not bool(torch.isfinite(x).all()):
            raise InputError(f"{what}[{layer}] contains NaN or infinite values")
        layers[int(layer)] = x
    return layers


def _default_labels(reps: LayerReps, labels: Labels | None) -> Labels | None:
    if labels is None and isinstance(reps, Representations):
        return reps.labels
    return labels


# --- the batched solver ---------------------------------------------------------------------------


class _Rows:
    """Sub-problems as the rows of one flat vector: block ``i`` holds ``counts[i]`` rows of ``sizes[i]``
    numbers each, the blocks one after the other.

    Each row's numbers are contiguous, and a per-row reduction is the block's own ``(count, size)``
    reduction over the last dimension: a sub-problem held among others, of other sizes or none, adds up
    the same numbers in the same order, so the solver's arithmetic on it does not depend on them.
    """

    def __init__(self, counts: Sequence[int], sizes: Sequence[int]) -> None:
        self.counts, self.sizes = tuple(counts), tuple(sizes)
        self.n_rows = sum(self.counts)
        self._lengths = [c * s for c, s in zip(self.counts, self.sizes, strict=True)]

    def blocks(self, v: Tensor) -> list[Tensor]:
        """The (count, size) views of the flat ``v``, block by block."""
        parts = torch.split(v, self._lengths)
        return [p.view(c, s) for p, c, s in zip(parts, self.counts, self.sizes, strict=True)]

    def reduce(self, v: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        """(n_rows,) ``fn`` of each block of the flat ``v`` (``fn`` reduces the last dimension)."""
        reduced = [fn(b) for b in self.blocks(v)]
        return reduced[0] if len(reduced) == 1 else torch.cat(reduced)

    def sum(self, v: Tensor) -> Tensor:
        return self.reduce(v, lambda b: b.sum(-1))

    def norm(self, v: Tensor) -> Tensor:
        return self.reduce(v, lambda b: b.norm(dim=-1))

    def abs_max(self, v: Tensor) -> Tensor:
        return self.reduce(v, lambda b: b.abs().amax(dim=-1))

    def scale(self, s: Tensor, v: Tensor, op: Callable[..., Tensor] = torch.mul) -> Tensor:
        """``op(row, s[row])`` for every row of the flat ``v`` (multiply by default), flat."""
        out = torch.empty_like(v)
        for o, b, sb in zip(self.blocks(out), self.blocks(v), s.split(self.counts), strict=True):
            op(b, sb.unsqueeze(-1), out=o)
        return out

    def where(self, mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
        """The rows of the flat ``a`` where (n_rows,) ``mask`` holds, the rows of ``b`` elsewhere."""
        out = torch.empty_like(a)
        parts = zip(self.blocks(out), self.blocks(a), self.blocks(b), mask.split(self.counts), strict=True)
        for o, x, y, m in parts:
            torch.where(m.unsqueeze(-1), x, y, out=o)
        return out

    def kept(self, keep: Tensor) -> _Rows:
        """The layout of the rows where (n_rows,) bool ``keep`` holds, in their order."""
        return _Rows([int(k.sum()) for k in keep.split(self.counts)], self.sizes)

    def take(self, v: Tensor, keep: Tensor) -> Tensor:
        """The flat numbers of the kept rows of ``v``, laid out as :meth:`kept` says."""
        parts = [b[k].reshape(-1) for b, k in zip(self.blocks(v), keep.split(self.counts), strict=True)]
        return torch.cat(parts)

    def put(self, v: Tensor, keep: Tensor, values: Tensor) -> None:
        """Write ``values`` (laid out as :meth:`kept` says) into the kept rows of ``v``, in place."""
        parts = zip(self.blocks(v), keep.split(self.counts), self.kept(keep).blocks(values), strict=True)
        for b, k, x in parts:
            b[k] = x


def _batched_lbfgs(
    fn: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    w: Tensor,
    *,
    max_iter: int,
    tol: float,
    diagonal: Tensor | None = None,
    history: int = 10,
    rows: _Rows | None = None,
) -> tuple[Tensor, Tensor]:
    """Minimise independent smooth objectives at once: L-BFGS with per-problem memory and step sizes.

    ``w`` is (n_problems, *shape), or, with ``rows``, the flat vector of sub-problems of different sizes
    that ``rows`` describes. ``fn(w, needed)`` returns (n_problems,) objectives and their gradient shaped
    like ``w``; ``needed`` is a (n_problems,) bool mask: entries outside it are not used, so ``fn`` may
    skip them (the probe objective computes only the sub-problems still moving, see :class:`_Objective`).

    Each sub-problem keeps its own curvature pairs (two-loop recursion with per-problem dot products),
    its own Armijo backtracking step and its own stopping test ``max |grad| <= tol`` (scipy's ``gtol``,
    which scikit-learn's lbfgs uses); converged sub-problems stop moving while the others go on, and once
    a quarter of those still held have stopped, they leave the solver's vectors (their memory goes, their
    numbers stay in ``w``), so the vector work shrinks with them. A plain L-BFGS on the *sum* of the
    objectives shares one step size and one curvature model between all of them, which needs many more
    iterations. Nothing here mixes sub-problems: solved in a batch or alone, a sub-problem takes the same
    steps from the same values of ``fn``.

    ``diagonal``, shaped like ``w``, is a fixed positive diagonal estimate ``P`` of each sub-problem's
    inverse Hessian; the initial inverse Hessian of each two-loop recursion is ``gamma * P`` with the
    usual ``gamma = s.y / y.P.y`` (Nocedal & Wright, eq. 7.20, with ``P`` in place of the identity).

    The function is long (about 100 lines) on purpose: the two-loop recursion, the line search, the
    memory update and the dropping of stopped sub-problems share one set of per-problem tensors, and split
    apart they would pass a dozen of them back and forth; each block is commented.

    Returns:
        ``(w, n_iter)``: the solutions (shaped like ``w``) and the (n_problems,) iterations each took.
    """
    everything = rows if rows is not None else _Rows((w.shape[0],), (w[0].numel(),))
    rows = everything  # the rows still held (all, until some have stopped)
    flat = w.reshape(-1).clone()
    h = diagonal.reshape(-1) if diagonal is not None else None
    out: Tensor | None = None  # every row's numbers, once some rows have left ``flat``
    live = torch.ones(everything.n_rows, dtype=torch.bool, device=w.device)
    live_index = torch.arange(everything.n_rows, device=w.device)
    tiny = torch.finfo(flat.dtype).tiny

    def apply_p(v: Tensor) -> Tensor:
        return v if h is None else v * h

    def evaluate(v: Tensor, needed: Tensor) -> tuple[Tensor, Tensor]:
        if out is None:
            f, g = fn(v.view_as(w), needed)
            return f, g.reshape(-1)
        everything.put(out, live, v)
        needed_all = torch.zeros_like(live)
        needed_all[live_index] = needed
        f, g = fn(out.view_as(w), needed_all)
        return f[live_index], everything.take(g.reshape(-1), live)

    f, g = evaluate(flat, torch.ones_like(live))
    s_hist: list[Tensor] = []
    y_hist: list[Tensor] = []
    rho_hist: list[Tensor] = []
    gamma = torch.ones(everything.n_rows, dtype=flat.dtype, device=flat.device)
    n_iter = torch.zeros(everything.n_rows, dtype=torch.long, device=w.device)
    active = rows.abs_max(g) > tol
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        # two-loop recursion, per sub-problem
        q = -g
        alphas = []
        for s, y, rho in zip(reversed(s_hist), reversed(y_hist), reversed(rho_hist), strict=True):
            a = rho * rows.sum(s * q)
            alphas.append(a)
            q = q - rows.scale(a, y)
        q = apply_p(q)
        if s_hist:
            q = rows.scale(gamma, q)
        else:  # first step: at most unit length
            q = rows.scale(rows.norm(q).clamp_min(1.0), q, torch.div)
        for s, y, rho, a in zip(s_hist, y_hist, rho_hist, reversed(alphas), strict=True):
            b = rho * rows.sum(y * q)
            q = q + rows.scale(a - b, s)
        slope = rows.sum(g * q)
        bad = slope >= 0  # not a descent direction (rounding): fall back to preconditioned steepest descent
        if bool(bad.any()):
            pg = apply_p(g)
            q = rows.where(bad, -pg, q)
            slope = torch.where(bad, -rows.sum(g * pg), slope)
        q = rows.scale(active.to(q.dtype), q)
        # Armijo backtracking, per sub-problem
        step = torch.ones_like(f)
        pending = active.clone()
        new_flat, new_f, new_g = flat, f, g
        for _ in range(30):
            trial = flat + rows.scale(step, q)
            f_t, g_t = evaluate(trial, pending)
            ok = pending & (f_t <= f + 1e-4 * step * slope)
            new_flat = rows.where(ok, trial, new_flat)
            new_f = torch.where(ok, f_t, new_f)
            new_g = rows.where(ok, g_t, new_g)
            pending = pending & ~ok
            if not bool(pending.any()):
                break
            step = torch.where(pending, step * 0.5, step)
        stalled = pending  # no decrease found: at the limit of rounding, stop this sub-problem
        # memory update
        s_new, y_new = new_flat - flat, new_g - g
        sy = rows.sum(s_new * y_new)
        good = sy > 1e-10 * rows.norm(s_new) * rows.norm(y_new)
        # a sub-problem without a usable pair this round stores s = 0, rho = 0: a no-op in both loops
        rho = torch.where(good, 1.0 / sy.clamp_min(tiny), torch.zeros_like(sy))
        yhy = rows.sum(y_new * apply_p(y_new)).clamp_min(tiny)
        gamma = torch.where(good, sy / yhy, gamma)
        s_hist.append(rows.scale(good.to(s_new.dtype), s_new))
        y_hist.append(rows.scale(good.to(y_new.dtype), y_new))
        rho_hist.append(rho)
        if len(s_hist) > history:
            s_hist.pop(0), y_hist.pop(0), rho_hist.pop(0)
        n_iter.index_add_(0, live_index, active.long())
        flat, f, g = new_flat, new_f, new_g
        active = active & ~stalled & (rows.abs_max(g) > tol)
        # the stopped sub-problems leave the vectors once they are a quarter of those held
        n_active = int(active.sum())
        if 0 < n_active <= 0.75 * active.numel():
            if out is None:
                out = flat.clone()
            everything.put(out, live, flat)
            keep = active
            flat, g, f, gamma = rows.take(flat, keep), rows.take(g, keep), f[keep], gamma[keep]
            s_hist = [rows.take(v, keep) for v in s_hist]
            y_hist = [rows.take(v, keep) for v in y_hist]
            rho_hist = [r[keep] for r in rho_hist]
            if h is not None:
                h = rows.take(h, keep)
            rows = rows.kept(keep)
            live = live.clone()
            live[live_index] = keep
            live_index = live_index[keep]
            active = active[keep]
    if out is None:
        return flat.view_as(w), n_iter
    everything.put(out, live, flat)
    return out.view_as(w), n_iter


@dataclass
class _Task:
    """One label problem on every layer of a :class:`_Group`: ``y`` (n_rows,) class ids out of
    ``n_classes``; its weights are rows ``row .. row + n_layers * n_l2`` of the solver, (layer, strength)
    in that order, each a (d + 1, n_classes) matrix, starting at ``offset`` in the flat vector."""

    y: Tensor
    n_classes: int
    row: int = 0
    offset: int = 0


@dataclass
class _Group:
    """Features that several label problems share: ``x`` (n_layers, n_rows, d + 1), every layer's
    standardised features with a trailing column of ones (the intercept), and the :class:`_Task` list
    fitted on all of them."""

    x: Tensor
    tasks: list[_Task]


class _Objective:
    """``fn(w, needed)`` for :func:`_batched_lbfgs` over every (group, layer, task, strength) sub-problem.

    For sub-problem (layer l, task t, strength k) with weights ``W`` ((d + 1) x C, bias last)::

        f = (1/n) sum_i -log softmax(x_il W)[y_ti] + (l2_k / 2) ||W[:d]||_F^2

    and its gradient ``X_l^T (softmax - onehot) / n + l2_k W`` (bias row unpenalised). Each layer of a
    group is one matrix product for the logits of every sub-problem still needed on it, whatever task or
    strength, and one for their gradients: the tasks of a group share each pass over its features, and a
    sub-problem that has converged, or needs no new trial step, leaves the products.
    """

    def __init__(self, groups: list[_Group], l2: Tensor) -> None:
        self.groups = groups
        self.l2 = l2
        n_l2 = len(l2)
        # the flat layout: tasks of equal weight size side by side, so that they form one block of rows
        self.order = sorted(
            ((group, task) for group in groups for task in group.tasks),
            key=lambda pair: pair[0].x.shape[2] * pair[1].n_classes,
        )
        row = offset = 0
        counts: list[int] = []
        sizes: list[int] = []
        for group, task in self.order:
            n_layers, _, d1 = group.x.shape
            task.row, task.offset = row, offset
            row += n_layers * n_l2
            offset += n_layers * n_l2 * d1 * task.n_classes
            if sizes and sizes[-1] == d1 * task.n_classes:
                counts[-1] += n_layers * n_l2
            else:
                counts.append(n_layers * n_l2)
                sizes.append(d1 * task.n_classes)
        self.rows = _Rows(counts, sizes)
        self.l2_rows = l2.repeat(row // n_l2)  # (n_rows,) the strength of each sub-problem
        self.mask = torch.cat(
            [self._penalty_mask(group, task) for group, task in self.order]
        )  # flat: 1 for weights, 0 for intercepts

    def _penalty_mask(self, group: _Group, task: _Task) -> Tensor:
        n_layers, _, d1 = group.x.shape
        mask = torch.ones(
            n_layers, len(self.l2), d1, task.n_classes, dtype=group.x.dtype, device=group.x.device
        )
        mask[:, :, -1] = 0.0
        return mask.reshape(-1)

    def weights(self, w: Tensor, group: _Group, task: _Task) -> Tensor:
        """The (n_layers, n_l2, d + 1, C) view of ``task``'s weights in the flat ``w``."""
        n_layers, _, d1 = group.x.shape
        size = n_layers * len(self.l2) * d1 * task.n_classes
        return w[task.offset : task.offset + size].view(n_layers, len(self.l2), d1, task.n_classes)

    def __call__(self, w: Tensor, needed: Tensor) -> tuple[Tensor, Tensor]:
        n_l2 = len(self.l2)
        f = torch.zeros(self.rows.n_rows, dtype=w.dtype, device=w.device)
        g = torch.zeros_like(w)
        need = needed.cpu().numpy()
        for group in self.groups:
            for layer in range(group.x.shape[0]):
                blocks = []
                for task in group.tasks:
                    first = task.row + layer * n_l2
                    ks = np.flatnonzero(need[first : first + n_l2])
                    if len(ks):
                        blocks.append((task, torch.from_numpy(ks).to(w.device), first))
                if blocks:
                    self._layer(w, g, f, group, layer, blocks)
        # the penalty (intercepts not penalised), on the needed rows only
        if bool(needed.all()):
            masked = w * self.mask
            f += 0.5 * self.l2_rows * self.rows.sum(masked.square())
            g += self.rows.scale(self.l2_rows, masked)
        else:
            rows, l2 = self.rows.kept(needed), self.l2_rows[needed]
            masked = self.rows.take(w, needed) * self.rows.take(self.mask, needed)
            f[needed] += 0.5 * l2 * rows.sum(masked.square())
            self.rows.put(g, needed, self.rows.take(g, needed) + rows.scale(l2, masked))
        return f, g

    def _layer(
        self,
        w: Tensor,
        g: Tensor,
        f: Tensor,
        group: _Group,
        layer: int,
        blocks: list[tuple[_Task, Tensor, int]],
    ) -> None:
        """Mean cross-entropy of ``blocks`` (task, strengths, first row) on one layer into ``f`` and ``g``."""
        x = group.x[layer]
        n, d1 = x.shape
        columns = [
            self.weights(w, group, t)[layer, ks].permute(1, 0, 2).reshape(d1, -1) for t, ks, _ in blocks
        ]
        logits = x @ torch.cat(columns, dim=1)  # (n, sum of k * C): every needed sub-problem at once
        start = 0
        for task, ks, first in blocks:
            k, c = len(ks), task.n_classes
            part = logits[:, start : start + k * c]
            log_p = torch.log_softmax(part.view(n, k, c), dim=-1)
            index = task.y.view(n, 1, 1).expand(n, k, 1)
            f[first + ks] = -log_p.gather(-1, index).squeeze(-1).mean(dim=0)
            probs = log_p.exp_()
            probs.scatter_add_(-1, index, torch.full_like(probs[..., :1], -1.0))
            part.copy_(probs.view(n, k * c))  # the logits' columns now hold softmax - onehot
            start += k * c
        logits /= n
        grad = x.T @ logits
        start = 0
        for task, ks, _ in blocks:
            k, c = len(ks), task.n_classes
            self.weights(g, group, task)[layer, ks] = (
                grad[:, start : start + k * c].view(d1, k, c).transpose(0, 1)
            )
            start += k * c

    def start(self) -> tuple[Tensor, Tensor]:
        """Zero weights with intercepts at the log class priors (the exact optimum while the weights are
        zero), and the diagonal preconditioner of :func:`_preconditioner`, both flat."""
        w0, h = [], []
        for group, task in self.order:
            n_layers, n_rows, d1 = group.x.shape
            prior = torch.bincount(task.y, minlength=task.n_classes).to(group.x.dtype) / n_rows
            floor = 1.0 / n_rows
            w = torch.zeros(
                n_layers, len(self.l2), d1, task.n_classes, dtype=group.x.dtype, device=group.x.device
            )
            w[..., -1, :] = torch.log(prior.clamp_min(floor))
            w0.append(w.reshape(-1))
            curvature = (prior * (1 - prior)).clamp_min(floor)
            h.append(_preconditioner(curvature, self.l2, n_layers, d1).reshape(-1))
        return torch.cat(w0), torch.cat(h)


def _preconditioner(curvature: Tensor, l2: Tensor, n_layers: int, d1: int) -> Tensor:
    """A diagonal estimate of each sub-problem's inverse Hessian at the start, (n_layers, n_l2, d + 1, C).

    With zero weights and prior intercepts every row predicts the class frequencies ``p``; the diagonal
    of the Hessian of sub-problem (l, k) is then ``a_c + l2_k`` for class ``c``'s weights (``a_c =
    p_c (1 - p_c)`` times the unit variance of standardised features) and ``a_c`` for its intercept.
    Rare classes have tiny ``a_c``: without this scaling their columns would dominate the conditioning.
    (A full ``(a_c Cov + l2 I)^-1`` from an ``eigh`` of each layer's feature covariance was tried: only
    10-20 % fewer iterations on MiniLM features, not worth the eigh and two more (d x d) products per
    iteration.)
    """
    n_l2, n_classes = l2.shape[0], curvature.shape[0]
    h = torch.empty(n_layers, n_l2, d1, n_classes, dtype=l2.dtype, device=l2.device)
    h[:, :, :-1, :] = 1.0 / (curvature.view(1, 1, 1, -1) + l2.view(1, -1, 1, 1))
    h[:, :, -1, :] = 1.0 / curvature
    return h


def _solve(groups: list[_Group], grid: list[float], max_iter: int, tol: float) -> list[tuple[Tensor, Tensor]]:
    """Fit every task of every group on all its layers and strengths in one :func:`_batched_lbfgs`.

    Returns, per task in group order, its (n_layers, n_l2, d + 1, C) weights and (n_layers, n_l2)
    iteration counts.
    """
    x0 = groups[0].x
    objective = _Objective(groups, torch.tensor(grid, dtype=x0.dtype, device=x0.device))
    w0, h = objective.start()
    w, n_iter = _batched_lbfgs(objective, w0, max_iter=max_iter, tol=tol, diagonal=h, rows=objective.rows)
    out = []
    for group in groups:
        for task in group.tasks:
            rows = slice(task.row, task.row + group.x.shape[0] * len(grid))
            out.append((objective.weights(w, group, task), n_iter[rows].view(group.x.shape[0], len(grid))))
    return out


# --- the estimator --------------------------------------------------------------------------------


class LayerProbes:
    """One multinomial logistic-regression probe per layer, all fitted in one batched optimisation.

    For each layer ``l`` and each strength ``l2`` in ``l2_grid`` the probe minimises::

        (1/n) sum_i -log softmax(z_il W + b)[y_i] + (l2 / 2) ||W||_F^2

    over the standardised features ``z_il = (x_il - mean_l) / std_l`` (train statistics; the intercept
    ``b`` is not penalised), then keeps, per layer, the strength with the best validation accuracy (ties
    go to the larger ``l2``). This is exactly scikit-learn's
    ``make_pipeline(StandardScaler(), LogisticRegression(C=1 / (l2 * n)))`` with ``n`` the number of
    training rows: scikit-learn minimises ``C sum_i loss_i + ||W||^2 / 2``, which is the objective above
    times ``C n``. (With two classes this probe is the symmetric two-column softmax, whose penalty is half
    that of scikit-learn's single-column binary model: ``C = 2 / (l2 * n)`` there.)

    The (n_layers * n_l2) sub-problems are solved together by :func:`_batched_lbfgs`, in ``dtype``
    (float32 by default) on ``device``, with per-sub-problem L-BFGS memory and step sizes, a diagonal
    preconditioner from the class frequencies and intercepts started at the log class priors. Each
    evaluation is, per layer, one matrix product for the logits of every sub-problem still moving and
    one for their gradients; a sub-problem that has converged, or needs no new trial step, leaves them
    (:class:`_Objective`). :func:`fit_probe_tasks` fits several label sets and models the same way, in
    one optimisation. (Warm starts along the l2 path, one strength after the other, were measured slower
    on CPU: a pass over the data costs about the same for 17 or 85 weight columns, so all strengths share
    each pass instead.)

    Args:
        l2_grid: candidate L2 strengths (positive).
        max_iter: L-BFGS iterations per sub-problem at most (scikit-learn's default is 100 too).
        tol: stop a sub-problem when the largest absolute gradient entry is at most ``tol`` (scipy's
            ``gtol``, as scikit-learn's lbfgs solver uses).
        standardize: standardise each layer's features with the training mean and standard deviation.
            ``coef_`` and ``intercept_`` are reported on the original features either way.
        device: where to fit (default: the device of the training tensors).
        dtype: the dtype of the optimisation.
        seed: kept for the scikit-learn contract; the fit itself is deterministic (zero weights, prior
            intercepts).

    Attributes:
        layers_: the fitted layers, ascending.
        classes_: the sorted distinct training labels; column ``c`` of the probes is ``classes_[c]``.
        l2_: layer -> the chosen strength.
        coef_: layer -> (n_classes, d_model) float64 weights on the original (unstandardised) features.
        intercept_: layer -> (n_classes,) float64 intercepts.
        validation_accuracy_: layer -> {l2: validation accuracy} for every strength of the grid.
        n_iter_: layer -> {l2: L-BFGS iterations}.
        n_train_: number of training rows.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(200) % 2
        >>> x = {1: torch.randn(200, 5, generator=g) + 3 * y[:, None], 2: torch.randn(200, 5, generator=g)}
        >>> probes = LayerProbes().fit(x, y, x, y)
        >>> {layer: round(acc, 1) for layer, acc in probes.score(x, y).items()}
        {1: 1.0, 2: 0.6}
    """

    layers_: tuple[int, ...]
    classes_: np.ndarray
    l2_: dict[int, float]
    coef_: dict[int, np.ndarray]
    intercept_: dict[int, np.ndarray]
    validation_accuracy_: dict[int, dict[float, float]]
    n_iter_: dict[int, dict[float, int]]
    n_train_: int

    def __init__(
        self,
        *,
        l2_grid: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0),
        max_iter: int = 100,
        tol: float = 1e-4,
        standardize: bool = True,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
    ) -> None:
        self.l2_grid = l2_grid
        self.max_iter = max_iter
        self.tol = tol
        self.standardize = standardize
        self.device = device
        self.dtype = dtype
        self.seed = seed

    def fit(
        self,
        train: LayerReps,
        y_train: Labels | None,
        validation: LayerReps,
        y_validation: Labels | None,
    ) -> LayerProbes:
        """Fit every layer's probe for every strength at once and pick each layer's strength.

        Args:
            train: layer -> (n_train, d_model) representations (a Representations works; its ``labels``
                are used when ``y_train`` is None).
            y_train: (n_train,) labels of any hashable type.
            validation: the same layers for held-out validation rows.
            y_validation: (n_validation,) labels; a label unseen in training counts as an error.

        Returns:
            self.

        Raises:
            DataError: label counts that differ from row counts, or fewer than two training classes.
            InputError: bad hyper-parameters, mismatched layers or widths, NaN/inf features.
        """
        _fit_together([self], [(train, y_train, validation, y_validation)])
        return self

    def decision_function(self, reps: LayerReps) -> dict[int, Tensor]:
        """Layer -> (n_rows, n_classes) float64 logits ``x coef^T + intercept`` of the chosen probes."""
        self._check_fitted()
        layers = _layers_of(reps, "reps")
        missing = [layer for layer in self.layers_ if layer not in layers]
        if missing:
            raise InputError(f"the probes were fitted on layers {list(self.layers_)}; reps lacks {missing}")
        out = {}
        for layer in self.layers_:
            x = layers[layer].to(torch.float64).cpu()
            coef = torch.from_numpy(self.coef_[layer])
            if x.shape[1] != coef.shape[1]:
                raise InputError(
                    f"layer {layer} has {x.shape[1]} features; the probe expects {coef.shape[1]}"
                )
            out[layer] = x @ coef.T + torch.from_numpy(self.intercept_[layer])
        return out

    def predict(self, reps: LayerReps) -> dict[int, np.ndarray]:
        """Layer -> (n_rows,) predicted labels (elements of ``classes_``)."""
        return {
            layer: self.classes_[logits.argmax(dim=1).numpy()]
            for layer, logits in self.decision_function(reps).items()
        }

    def score(self, reps: LayerReps, y: Labels | None = None) -> dict[int, float]:
        """Layer -> accuracy of the chosen probe on ``reps`` (labels ``y``, or ``reps.labels``)."""
        predictions = self.predict(reps)
        n_rows = len(next(iter(predictions.values())))
        labels = row_labels(_default_labels(reps, y), n_rows, "score")
        return {layer: float(np.mean(pred == labels)) for layer, pred in predictions.items()}

    # -- internals --

    def _check_hyperparameters(self) -> list[float]:
        grid = sorted({float(v) for v in self.l2_grid}, reverse=True)
        if not grid or any(not math.isfinite(v) or v <= 0 for v in grid):
            raise InputError(f"l2_grid must hold positive finite strengths; got {list(self.l2_grid)}")
        if self.max_iter < 1 or not self.tol > 0:
            raise InputError(f"max_iter must be >= 1 and tol > 0; got {self.max_iter}, {self.tol}")
        if not self.dtype.is_floating_point:
            raise InputError(f"dtype must be a floating dtype; got {self.dtype}")
        return grid

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise InputError(
                "this LayerProbes is not fitted yet; call fit(train, y_train, validation, y_val)"
            )

    def _hyperparameters(self) -> tuple[Any, ...]:
        grid = tuple(self._check_hyperparameters())
        return (grid, self.max_iter, self.tol, self.standardize, self.device, self.dtype)


#: one probe problem: training layers and labels, validation layers and labels (``LayerProbes.fit``'s)
_Fit = tuple[LayerReps, Labels | None, LayerReps, Labels | None]


def _fit_together(estimators: Sequence[LayerProbes], problems: Sequence[_Fit]) -> None:
    """Fit ``estimators[i]`` on ``problems[i]``, all in one batched optimisation (``fit`` of each).

    Problems whose training and validation layers are the same objects share one stack of standardised
    features, and each pass over it serves all their labels. Every estimator needs the same
    hyper-parameters. Each comes out as ``estimator.fit(*problem)`` alone would leave it, up to the
    rounding of matrix products of another width (:func:`fit_probe_tasks`).
    """
    if len({e._hyperparameters() for e in estimators}) != 1:
        raise InputError(
            "probes fitted together need the same l2_grid, max_iter, tol, standardize, device, dtype"
        )
    first = estimators[0]
    grid = first._check_hyperparameters()
    checked: dict[tuple[int, int], tuple[dict[int, Tensor], dict[int, Tensor]]] = {}
    labelled: list[tuple[tuple[int, int], np.ndarray, np.ndarray, np.ndarray]] = []
    for train, y_train, validation, y_validation in problems:
        key = (id(train), id(validation))
        if key not in checked:
            checked[key] = _checked_layers(train, validation)
        layers, val_layers = checked[key]
        n_train, n_val = (next(iter(part.values())).shape[0] for part in (layers, val_layers))
        labels = row_labels(_default_labels(train, y_train), n_train, "train")
        val_labels = row_labels(_default_labels(validation, y_validation), n_val, "validation")
        classes, codes = np.unique(labels, return_inverse=True)
        if len(classes) < 2:
            raise DataError(
                f"probes need at least two classes; every training label is {classes[0]!r}"
                if len(classes)
                else "probes need training rows; got none"
            )
        labelled.append((key, classes, codes.reshape(-1), _codes_of(val_labels, classes)))

    # every check passed: stack each set of features once, then one solve for every problem
    first_layers = checked[labelled[0][0]][0]
    device = (
        torch.device(first.device) if first.device is not None else next(iter(first_layers.values())).device
    )
    stacked = {
        key: _Stacked.of(*parts, device, first.dtype, first.standardize) for key, parts in checked.items()
    }
    tasks = []
    for key, classes, codes, _ in labelled:
        tasks.append(_Task(torch.from_numpy(codes).to(device), len(classes)))
        stacked[key].group.tasks.append(tasks[-1])
    groups = [s.group for s in stacked.values()]
    solved = iter(_solve(groups, grid, first.max_iter, first.tol))
    results = {id(task): next(solved) for group in groups for task in group.tasks}
    for estimator, task, (key, classes, _, val_codes) in zip(estimators, tasks, labelled, strict=True):
        weights, n_iter = results[id(task)]
        val = torch.from_numpy(val_codes).to(device)
        _finish(estimator, stacked[key], checked[key][0], classes, weights, n_iter, val, grid)


def _checked_layers(train: LayerReps, validation: LayerReps) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
    """The layers of ``train`` and ``validation``, checked to match (same layers, same widths, rows)."""
    layers = _layers_of(train, "train")
    val_layers = _layers_of(validation, "validation")
    if sorted(val_layers) != sorted(layers):
        raise InputError(
            f"train has layers {sorted(layers)} but validation has {sorted(val_layers)}; give the same layers"
        )
    for layer in layers:
        if val_layers[layer].shape[1] != layers[layer].shape[1]:
            raise InputError(
                f"layer {layer} has {layers[layer].shape[1]} features in train but "
                f"{val_layers[layer].shape[1]} in validation"
            )
    if next(iter(val_layers.values())).shape[0] == 0:
        raise DataError("validation has no rows; the regularisation strength is chosen on it")
    return layers, val_layers


@dataclass
class _Stacked:
    """One set of training and validation layers, stacked: ``group.x`` and ``x_val`` are (n_layers, n_rows,
    d_max + 1), standardised with the training ``mean``/``std`` (n_layers, d_max), float64."""

    group: _Group
    x_val: Tensor
    mean: Tensor
    std: Tensor

    @classmethod
    def of(
        cls,
        layers: dict[int, Tensor],
        val_layers: dict[int, Tensor],
        device: torch.device,
        dtype: torch.dtype,
        standardize: bool,
    ) -> _Stacked:
        order = sorted(layers)
        x, mean, std = _stack(layers, order, device, dtype, None, None, standardize)
        x_val, _, _ = _stack(val_layers, order, device, dtype, mean, std, standardize)
        return cls(_Group(x, []), x_val, mean, std)


def _stack(
    layers: dict[int, Tensor],
    order: list[int],
    device: torch.device,
    dtype: torch.dtype,
    mean: Tensor | None,
    std: Tensor | None,
    standardize: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """(n_layers, n_rows, d_max + 1) standardised features with a ones column; widths padded with 0."""
    d_max = max(layers[layer].shape[1] for layer in order)
    n_rows = layers[order[0]].shape[0]
    x = torch.zeros(len(order), n_rows, d_max + 1, dtype=dtype, device=device)
    x[:, :, -1] = 1.0
    if mean is None or std is None:
        mean = torch.zeros(len(order), d_max, dtype=torch.float64, device=device)
        std = torch.ones(len(order), d_max, dtype=torch.float64, device=device)
        if standardize:
            for i, layer in enumerate(order):
                v = layers[layer].to(device=device, dtype=torch.float64)
                d = v.shape[1]
                mean[i, :d] = v.mean(dim=0)
                sd = v.std(dim=0, correction=0)
                std[i, :d] = torch.where(sd > 0, sd, torch.ones_like(sd))
    for i, layer in enumerate(order):
        v = layers[layer].to(device=device)
        d = v.shape[1]
        x[i, :, :d] = ((v.to(torch.float64) - mean[i, :d]) / std[i, :d]).to(dtype)
    return x, mean, std


def _finish(
    estimator: LayerProbes,
    stacked: _Stacked,
    layers: dict[int, Tensor],
    classes: np.ndarray,
    weights: Tensor,
    n_iter: Tensor,
    val_codes: Tensor,
    grid: list[float],
) -> None:
    """Set ``estimator``'s fitted attributes from its (n_layers, n_l2, d_max + 1, C) solved weights:
    each layer keeps the strength with the best validation accuracy, ties to the larger ``l2``."""
    order = sorted(layers)
    accuracy = torch.stack(
        [_accuracy(stacked.x_val, weights[:, k], val_codes) for k in range(len(grid))], dim=1
    )
    best = accuracy.argmax(dim=1).tolist()  # grid is descending: first maximum = largest l2
    estimator.layers_ = tuple(order)
    estimator.classes_ = classes
    estimator.n_train_ = stacked.group.x.shape[1]
    estimator.l2_ = {layer: grid[best[i]] for i, layer in enumerate(order)}
    estimator.validation_accuracy_ = {
        layer: {l2: float(accuracy[i, k]) for k, l2 in enumerate(grid)} for i, layer in enumerate(order)
    }
    estimator.n_iter_ = {
        layer: {l2: int(n_iter[i, k]) for k, l2 in enumerate(grid)} for i, layer in enumerate(order)
    }
    estimator.coef_, estimator.intercept_ = {}, {}
    for i, layer in enumerate(order):
        d = layers[layer].shape[1]
        w = weights[i, best[i]].to(torch.float64).cpu()  # (d_max + 1, C) on standardised features
        scale = w[:d] / stacked.std[i, :d].cpu().to(torch.float64).unsqueeze(1)
        estimator.coef_[layer] = scale.T.contiguous().numpy()
        intercept = w[-1] - stacked.mean[i, :d].cpu().to(torch.float64) @ scale
        estimator.intercept_[layer] = intercept.numpy()


def _codes_of(labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Index of each label in the sorted ``classes``; -1 for labels not among them."""
    position = np.clip(np.searchsorted(classes, labels), 0, len(classes) - 1)
    return np.where(classes[position] == labels, position, -1).astype(np.int64)


def _accuracy(x: Tensor, w: Tensor, y: Tensor) -> Tensor:
    """(n_layers,) accuracy of weights (n_layers, d + 1, C) on features (n_layers, n, d + 1)."""
    return (torch.bmm(x, w).argmax(dim=-1) == y.unsqueeze(0)).to(torch.float64).mean(dim=1)


# --- control tasks and the tidy driver ------------------------------------------------------------


def control_labels(
    labels: Labels, *, groups: Sequence[Hashable] | np.ndarray | None = None, seed: int = 0
) -> np.ndarray:
    """Random control labels with the task's label distribution (Hewitt & Liang 2019).

    - Token level (``groups`` = the word string of each row): every word *type* gets one label drawn from
      the empirical distribution of ``labels``, and all its occurrences share it, so a probe can only
      reach high control accuracy by memorising word identities. The distribution is kept in
      expectation (types are sampled independently, as in the paper).
    - Sentence level (``groups=None``): a random permutation of ``labels``, so each example gets a random
      label and the label counts are kept exactly.

    Compute control labels for train and test rows *together* (concatenate them), so that a word type
    keeps its control label across splits.

    Args:
        labels: (n_rows,) task labels.
        groups: (n_rows,) word types, or None.
        seed: seed of the random draw.

    Returns:
        (n_rows,) control labels, values among ``labels``.

    Example:
        >>> control = control_labels(["DET", "NOUN", "DET", "NOUN"], groups=["the", "cat", "the", "dog"])
        >>> bool(control[0] == control[2])
        True
    """
    values = row_labels(labels, len(labels), "control_labels")
    rng = np.random.default_rng(seed)
    if groups is None:
        return values[rng.permutation(len(values))]
    group_array = row_labels(groups, len(values), "control_labels groups")
    _, type_of_row = np.unique(group_array.astype(str), return_inverse=True)
    classes, counts = np.unique(values, return_counts=True)
    type_labels = rng.choice(
        len(classes), size=int(type_of_row.max()) + 1 if len(values) else 0, p=counts / counts.sum()
    )
    return classes[type_labels[type_of_row]]


INTERVAL_COLUMNS = (
    "ci_low",
    "ci_high",
    "control_ci_low",
    "control_ci_high",
    "selectivity_ci_low",
    "selectivity_ci_high",
    "n_boot",
)
"""The columns :meth:`ProbeResult.rows` adds with ``n_boot``: bounds of accuracy, control, selectivity."""


@dataclass(frozen=True)
class ProbeResult:
    """The probes :func:`fit_probes` fitted and what they predicted for every test row.

    Intervals resample these stored predictions (never the probes): a percentile bootstrap over the test
    sentences (:func:`tunescope.intervals.metric_interval` with ``groups``), so the words of one
    sentence count as one unit of evidence.

    Attributes:
        probes: The task probes (a fitted :class:`LayerProbes`).
        control_probes: The control-task probes, or None when ``control=False``.
        classes: Every label of the task (train, validation and test), sorted; the codes below index it.
        labels: (n_test,) int64 gold test labels, as codes into ``classes`` (-1 never occurs).
        predictions: layer -> (n_test,) int64 predicted codes of the chosen probe.
        control_labels: (n_test,) int64 control labels of the test rows (None without control).
        control_predictions: layer -> (n_test,) int64 control probe predictions (empty without control).
        groups: (n_test,) int64 sentence of each test row (``0..n_sentences - 1``; each row its own when
            the rows are sentences): the bootstrap unit.
        majority_accuracy: Test accuracy of always predicting the most frequent training label.
        n_train: Rows the probes were fitted on (validation rows excluded).
        n_validation: Rows the strength was chosen on.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = np.arange(300) % 3
        >>> x = torch.randn(300, 4, generator=g) + 3 * torch.eye(4)[y]
        >>> result = fit_probes({1: x[:200]}, y[:200], {1: x[200:]}, y[200:])
        >>> ci = result.interval(1, n_boot=200)
        >>> ci.low <= ci.value <= ci.high, result.predictions[1].shape
        (True, (100,))
    """

    probes: LayerProbes
    control_probes: LayerProbes | None
    classes: np.ndarray
    labels: np.ndarray
    predictions: dict[int, np.ndarray]
    control_labels: np.ndarray | None
    control_predictions: dict[int, np.ndarray]
    groups: np.ndarray
    majority_accuracy: float
    n_train: int
    n_validation: int

    @property
    def layers(self) -> tuple[int, ...]:
        """The probed layers, ascending."""
        return tuple(self.probes.layers_)

    def accuracy(self, layer: int) -> float:
        """Test accuracy of ``layer``'s probe."""
        return float(np.mean(self.predictions[layer] == self.labels))

    def control_accuracy(self, layer: int) -> float:
        """Test accuracy of ``layer``'s control probe on the control labels (NaN without control)."""
        if self.control_labels is None:
            return math.nan
        return float(np.mean(self.control_predictions[layer] == self.control_labels))

    def interval(self, layer: int, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Interval:
        """``layer``'s test accuracy with its bootstrap interval over test sentences.

        Equal to ``metric_interval("accuracy", predictions[layer], labels, groups=groups)``, computed from
        the 0/1 "was right" vector (two classes instead of ``n_classes``: several times faster).
        """
        return _correct_interval(self._correct(layer), self._units(), n_boot=n_boot, level=level, seed=seed)

    def control_interval(
        self, layer: int, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
    ) -> Interval:
        """The control probe's accuracy with its interval (all NaN without control)."""
        if self.control_labels is None:
            return Interval(math.nan, math.nan, math.nan, level, n_boot)
        right = self.control_predictions[layer] == self.control_labels
        return _correct_interval(right, self._units(), n_boot=n_boot, level=level, seed=seed)

    def selectivity_interval(
        self, layer: int, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
    ) -> Interval:
        """Selectivity (accuracy - control accuracy) with a paired interval: both on the same resample."""
        if self.control_labels is None:
            return Interval(math.nan, math.nan, math.nan, level, n_boot)
        control_right = self.control_predictions[layer] == self.control_labels
        return _correct_difference(
            control_right, self._correct(layer), self._units(), n_boot=n_boot, level=level, seed=seed
        )

    def difference(
        self, other: ProbeResult, layer: int, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
    ) -> Interval:
        """``accuracy(other) - accuracy(self)`` at ``layer``, paired over the same test sentences.

        For two models probed on the same test words (base and tuned, Merchant et al. 2020): each
        resample draws one set of sentences and scores both models' probes on it.

        Raises:
            InputError: ``other`` was tested on other rows (labels or sentences differ) or lacks ``layer``.
        """
        if not self.same_rows(other):
            raise InputError(
                "the two probe results were tested on different rows; a paired difference needs the same "
                "test words with the same labels"
            )
        if layer not in self.predictions or layer not in other.predictions:
            raise InputError(f"layer {layer} was not probed in both results")
        return _correct_difference(
            self._correct(layer), other._correct(layer), self._units(), n_boot=n_boot, level=level, seed=seed
        )

    def same_rows(self, other: ProbeResult) -> bool:
        """Whether ``other`` was tested on the same rows: the same gold labels, in the same sentences."""
        return bool(
            self.labels.shape == other.labels.shape
            and np.array_equal(self.classes[self.labels], other.classes[other.labels])
            and np.array_equal(self.groups, other.groups)
        )

    def rows(self, *, n_boot: int | None = None, level: float = 0.95, seed: int = 0) -> list[dict[str, Any]]:
        """One tidy row per layer (as :func:`probe_layers`); with ``n_boot`` also :data:`INTERVAL_COLUMNS`."""
        if n_boot is not None:
            check_interval_options(n_boot, level)
        control_l2 = self.control_probes.l2_ if self.control_probes is not None else {}
        out = []
        for layer in self.layers:
            acc, ctrl = self.accuracy(layer), self.control_accuracy(layer)
            row: dict[str, Any] = {
                "layer": layer,
                "accuracy": acc,
                "control_accuracy": ctrl,
                "selectivity": acc - ctrl,
                "l2": self.probes.l2_[layer],
                "control_l2": control_l2.get(layer, math.nan),
                "validation_accuracy": self.probes.validation_accuracy_[layer][self.probes.l2_[layer]],
                "majority_accuracy": self.majority_accuracy,
                "n_classes": len(self.probes.classes_),
                "n_train": self.n_train,
                "n_validation": self.n_validation,
                "n_test": len(self.labels),
            }
            if n_boot is not None:
                options: dict[str, Any] = {"n_boot": n_boot, "level": level, "seed": seed}
                task = self.interval(layer, **options)
                control = self.control_interval(layer, **options)
                selectivity = self.selectivity_interval(layer, **options)
                row.update(
                    ci_low=task.low,
                    ci_high=task.high,
                    control_ci_low=control.low,
                    control_ci_high=control.high,
                    selectivity_ci_low=selectivity.low,
                    selectivity_ci_high=selectivity.high,
                    n_boot=n_boot,
                )
            out.append(row)
        return out

    def _correct(self, layer: int) -> np.ndarray:
        return self.predictions[layer] == self.labels

    def _units(self) -> np.ndarray | None:
        """The sentence ids, or None when every row is its own sentence (the plain bootstrap)."""
        return None if np.unique(self.groups).size == self.groups.size else self.groups


def _correct_interval(right: np.ndarray, groups: np.ndarray | None, **options: Any) -> Interval:
    """The accuracy ``mean(right)`` of a (n_rows,) bool "was right" vector with its bootstrap interval.

    A resample's accuracy is its number of right rows over its rows whatever the labels were, so this is
    :func:`metric_interval` of the predictions and labels themselves, on the same draws.
    """
    ones = np.ones(right.shape[0], dtype=np.int64)
    return metric_interval("accuracy", right.astype(np.int64), ones, groups=groups, **options)


def _correct_difference(
    right_a: np.ndarray, right_b: np.ndarray, groups: np.ndarray | None, **options: Any
) -> Interval:
    """``mean(right_b) - mean(right_a)`` of two (n_rows,) bool "was right" vectors, paired.

    The accuracy of a 0/1 "was right" vector against all-ones labels is the accuracy it records, so the
    paired bootstrap of :func:`difference_interval` applies to two probes with different labels (a probe
    and its control) as well as to two models' probes.
    """
    ones = np.ones(right_a.shape[0], dtype=np.int64)
    return difference_interval(
        "accuracy", right_a.astype(np.int64), right_b.astype(np.int64), ones, groups=groups, **options
    )


def probe_layers(
    train_reps: LayerReps,
    train_labels: Labels | None,
    test_reps: LayerReps,
    test_labels: Labels | None,
    *,
    n_boot: int | None = None,
    level: float = 0.95,
    **options: Any,
) -> list[dict[str, Any]]:
    """Probe every layer, with a control task, and return one tidy row per layer.

    ``fit_probes(...).rows(n_boot=n_boot, level=level, seed=seed)``: see :func:`fit_probes` for the
    procedure and the keyword arguments (``validation``, ``control``, ``word_types``, ``test_groups``,
    ``seed``, ...), and :class:`ProbeResult` for the predictions behind the rows.

    Args:
        train_reps, train_labels, test_reps, test_labels: As in :func:`fit_probes`.
        n_boot: With a number of resamples (at least 100), every row also gets the bootstrap interval of
            its accuracy, control accuracy and selectivity over the test sentences
            (:data:`INTERVAL_COLUMNS`); None: no intervals.
        level: Coverage of those intervals.
        **options: The keyword arguments of :func:`fit_probes`.

    Returns:
        One dict per layer: ``layer``, ``accuracy`` (test), ``control_accuracy``, ``selectivity``
        (accuracy - control accuracy; NaN without control), ``l2``, ``control_l2``,
        ``validation_accuracy``, ``majority_accuracy`` (always predicting the most frequent training
        label), ``n_classes``, ``n_train``, ``n_validation``, ``n_test``; with ``n_boot`` also ``ci_low,
        ci_high, control_ci_low, control_ci_high, selectivity_ci_low, selectivity_ci_high, n_boot``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = np.arange(300) % 3
        >>> x = torch.randn(300, 4, generator=g) + 3 * torch.eye(4)[y]
        >>> (row,) = probe_layers({1: x[:200]}, y[:200], {1: x[200:]}, y[200:], n_boot=200)
        >>> row["accuracy"] > 0.9, row["control_accuracy"] < 0.6, row["ci_low"] <= row["accuracy"]
        (True, True, True)
    """
    if n_boot is not None:
        check_interval_options(n_boot, level)  # before anything is fitted
    result = fit_probes(train_reps, train_labels, test_reps, test_labels, **options)
    return result.rows(n_boot=n_boot, level=level, seed=int(options.get("seed", 0)))


@dataclass(frozen=True)
class ProbeTask:
    """The data of one :func:`fit_probes` call, for :func:`fit_probe_tasks`: a label set on one model.

    Attributes:
        train_reps, train_labels, test_reps, test_labels, validation, word_types, test_groups: As in
            :func:`fit_probes`.

    Tasks given together that hold the *same* ``train_reps`` object (and the same ``validation``, if
    any) share its standardised features: one pass over them serves the labels of all, so give the
    part-of-speech and dependency labels of one model's words as two tasks on one Representations.
    """

    train_reps: LayerReps
    train_labels: Labels | None
    test_reps: LayerReps
    test_labels: Labels | None
    validation: tuple[LayerReps, Labels | None] | None = None
    word_types: tuple[Sequence[Hashable], Sequence[Hashable]] | None = None
    test_groups: Sequence[Hashable] | np.ndarray | Tensor | None = None


def fit_probes(
    train_reps: LayerReps,
    train_labels: Labels | None,
    test_reps: LayerReps,
    test_labels: Labels | None,
    *,
    validation: tuple[LayerReps, Labels | None] | None = None,
    validation_fraction: float = 0.2,
    control: bool = True,
    word_types: tuple[Sequence[Hashable], Sequence[Hashable]] | None = None,
    test_groups: Sequence[Hashable] | np.ndarray | Tensor | None = None,
    l2_grid: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0),
    max_iter: int = 100,
    tol: float = 1e-4,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> ProbeResult:
    """Probe every layer, with a control task, and keep the probes and their test predictions.

    The regularisation strength is chosen on validation rows: ``validation`` if given, else a
    ``validation_fraction`` of the training rows (whole examples when ``train_reps`` is a token-level
    Representations, so the words of one sentence stay on one side). Probes are refitted on the control
    labels (:func:`control_labels`, per word type when ``word_types`` is given, else per row) with the same
    procedure, and both predict the test rows. The task probes and the control probes are fitted in one
    batched optimisation; :func:`fit_probe_tasks` does the same for several label sets and models at once.

    Args:
        train_reps, test_reps: layer -> (n_rows, d_model) representations (Representations work, their
            ``labels`` are used when the label arguments are None).
        train_labels, test_labels: one label per row.
        validation: ``(reps, labels)`` of explicit validation rows.
        validation_fraction: share of the training rows held out when ``validation`` is None.
        control: also fit control probes and report selectivity.
        word_types: ``(train_words, test_words)``, the word string of each row, for token-level control
            tasks; required for ``pooling="tokens"`` representations when ``control`` is on.
        test_groups: (n_test,) the sentence of each test row, the unit the intervals resample; default:
            ``test_reps.example_index`` for token-level Representations, else each row its own.
        l2_grid, max_iter, tol, device: passed to :class:`LayerProbes`.
        seed: seeds the validation split and the control labels.

    Returns:
        :class:`ProbeResult`; its :meth:`~ProbeResult.rows` are :func:`probe_layers`' rows.

    Raises:
        DataError: misaligned labels, a single class, or an empty split.
        InputError: token-level control without ``word_types``, or a bad ``validation_fraction``.
    """
    task = ProbeTask(
        train_reps,
        train_labels,
        test_reps,
        test_labels,
        validation=validation,
        word_types=word_types,
        test_groups=test_groups,
    )
    results = fit_probe_tasks(
        {0: task},
        validation_fraction=validation_fraction,
        control=control,
        l2_grid=l2_grid,
        max_iter=max_iter,
        tol=tol,
        device=device,
        seed=seed,
    )
    return results[0]


K = TypeVar("K", bound=Hashable)


def fit_probe_tasks(
    tasks: Mapping[K, ProbeTask],
    *,
    validation_fraction: float = 0.2,
    control: bool = True,
    l2_grid: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0),
    max_iter: int = 100,
    tol: float = 1e-4,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> dict[K, ProbeResult]:
    """:func:`fit_probes` of every task, with every probe of every task fitted in one optimisation.

    ``fit_probe_tasks(tasks, **options)[key]`` is ``fit_probes(**fields of tasks[key], **options)``: the
    same validation split and control labels, and the same probes, because each (task, layer, strength)
    sub-problem keeps its own L-BFGS memory, steps and stopping test. Only the rounding of the matrix
    products may differ, where the BLAS sums a product of another width in another order: the weights
    then agree within the optimiser's tolerance (on MiniLM's 384-wide features, as in the demo and the
    golden run, MKL gives the same bits, so ``probes.csv`` is unchanged). What the batch saves is work:
    tasks on the same ``train_reps`` object share its standardised features and every pass over them
    (each layer is one matrix product for the logits of all their probes and one for the gradients), and
    a probe that has converged, or needs no new trial step, leaves those products while the others go on.
    A model's part-of-speech and dependency probes with their controls, and both models of a run, are
    then one solve (the ``probes`` stage does this).

    Args:
        tasks: key -> the data of one probing problem (:class:`ProbeTask`).
        validation_fraction, control, l2_grid, max_iter, tol, device, seed: As in :func:`fit_probes`, for
            every task.

    Returns:
        key -> :class:`ProbeResult`, in the order of ``tasks``.

    Raises:
        InputError: no tasks, or a task's bad input (as :func:`fit_probes`); nothing is fitted then.
        DataError: as :func:`fit_probes`.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = {1: torch.randn(300, 4, generator=g)}
        >>> parity, sign = np.arange(300) % 2, (x[1][:, 0] > 0).numpy()
        >>> tasks = {name: ProbeTask(x, y, x, y) for name, y in (("parity", parity), ("sign", sign))}
        >>> results = fit_probe_tasks(tasks)
        >>> results["sign"].accuracy(1) > 0.9, results["parity"].accuracy(1) < 0.7
        (True, True)
    """
    if not tasks:
        raise InputError("fit_probe_tasks needs at least one ProbeTask")
    options: dict[str, Any] = {"l2_grid": l2_grid, "max_iter": max_iter, "tol": tol, "device": device}
    LayerProbes(**options, seed=seed)._check_hyperparameters()
    memo: dict[tuple[Any, ...], Any] = {}
    prepared = {key: _prepare(task, memo, validation_fraction, control, seed) for key, task in tasks.items()}
    # every task checked: one optimisation for all the probes
    probes = {key: LayerProbes(**options, seed=seed) for key in prepared}
    controls = {
        key: LayerProbes(**options, seed=seed) for key, task in prepared.items() if task.fake is not None
    }
    estimators: list[LayerProbes] = []
    problems: list[_Fit] = []
    for key, task in prepared.items():
        estimators.append(probes[key])
        problems.append((task.fit_layers, task.y[0], task.val_layers, task.y[1]))
        if task.fake is not None:
            estimators.append(controls[key])
            problems.append((task.fit_layers, task.fake[0], task.val_layers, task.fake[1]))
    _fit_together(estimators, problems)
    return {key: task.result(probes[key], controls.get(key)) for key, task in prepared.items()}


@dataclass
class _Prepared:
    """One task of :func:`fit_probe_tasks`, checked and cut into fit, validation and test rows.

    ``y`` and ``fake`` are the (fit, validation) labels of the task and of its control (``fake`` None
    without control); ``classes`` every label of the task, sorted, which the result's codes index.
    """

    fit_layers: dict[int, Tensor]
    val_layers: dict[int, Tensor]
    test_layers: dict[int, Tensor]
    y: tuple[np.ndarray, np.ndarray]
    y_test: np.ndarray
    fake: tuple[np.ndarray, np.ndarray] | None
    fake_test: np.ndarray | None
    classes: np.ndarray
    groups_test: np.ndarray

    def result(self, probes: LayerProbes, control_probes: LayerProbes | None) -> ProbeResult:
        """The :class:`ProbeResult` of the fitted ``probes`` (and control probes) on the test rows."""
        predicted = probes.predict(self.test_layers)
        control_predicted = control_probes.predict(self.test_layers) if control_probes is not None else {}
        values, counts = np.unique(self.y[0], return_counts=True)
        return ProbeResult(
            probes=probes,
            control_probes=control_probes,
            classes=self.classes,
            labels=_codes_of(self.y_test, self.classes),
            predictions={layer: _codes_of(pred, self.classes) for layer, pred in predicted.items()},
            control_labels=None if self.fake_test is None else _codes_of(self.fake_test, self.classes),
            control_predictions={
                layer: _codes_of(pred, self.classes) for layer, pred in control_predicted.items()
            },
            groups=self.groups_test,
            majority_accuracy=float(np.mean(self.y_test == values[counts.argmax()])),
            n_train=len(self.y[0]),
            n_validation=len(self.y[1]),
        )


def _prepare(
    task: ProbeTask, memo: dict[tuple[Any, ...], Any], validation_fraction: float, control: bool, seed: int
) -> _Prepared:
    """Check one task and cut its rows (:func:`fit_probes`' procedure); ``memo`` keeps the layers and the
    split of each representations object, so tasks on the same object get the same (shared) tensors.

    It is long (about 70 lines, half of them input checks) because the train, validation and test row
    sets and their control labels must be cut from one draw, so a word type keeps one control label
    across the splits; the steps are marked by comments.
    """

    def layers_of(reps: LayerReps, what: str) -> dict[int, Tensor]:
        if ("layers", id(reps)) not in memo:
            memo["layers", id(reps)] = _layers_of(reps, what)
        return memo["layers", id(reps)]  # type: ignore[no-any-return]

    train_reps, test_reps, validation = task.train_reps, task.test_reps, task.validation
    train_layers = layers_of(train_reps, "train_reps")
    n_train_all = next(iter(train_layers.values())).shape[0]
    y_train_all = row_labels(_default_labels(train_reps, task.train_labels), n_train_all, "train")
    test_layers = layers_of(test_reps, "test_reps")
    n_test = next(iter(test_layers.values())).shape[0]
    y_test = row_labels(_default_labels(test_reps, task.test_labels), n_test, "test")
    groups_test = _test_groups(test_reps, task.test_groups, n_test)
    tokens = isinstance(train_reps, Representations) and train_reps.pooling == "tokens"
    if control and tokens and task.word_types is None:
        raise InputError(
            "token-level control tasks give each word type a random label: pass word_types=(train_words, "
            "test_words), the word of each row (or control=False)"
        )
    if control and task.word_types is not None and validation is not None:
        raise InputError(
            "word-type control labels need the word of every row, and validation= has none: "
            "use validation_fraction (the default) with word_types"
        )
    types_train = types_test = None
    if task.word_types is not None:
        types_train = row_labels(task.word_types[0], n_train_all, "word_types[0] (train)")
        types_test = row_labels(task.word_types[1], n_test, "word_types[1] (test)")

    # validation rows: explicit, or held out of the training rows (one split per training object)
    val_rows: np.ndarray | None = None
    if validation is not None:
        val_layers = layers_of(validation[0], "validation")
        n_val = next(iter(val_layers.values())).shape[0]
        y_val = row_labels(_default_labels(validation[0], validation[1]), n_val, "validation")
        fit_layers, y_fit = train_layers, y_train_all
    else:
        if not 0 < validation_fraction < 1:
            raise InputError(f"validation_fraction must be in (0, 1); got {validation_fraction}")
        key = ("split", id(train_reps))
        if key not in memo:
            groups = train_reps.example_index if tokens and isinstance(train_reps, Representations) else None
            fit_rows, held = _split_rows(n_train_all, validation_fraction, groups, seed)
            index_fit, index_val = torch.from_numpy(fit_rows), torch.from_numpy(held)
            fit_part = {layer: x[index_fit] for layer, x in train_layers.items()}
            val_part = {layer: x[index_val] for layer, x in train_layers.items()}
            memo[key] = (fit_rows, held, fit_part, val_part)
        fit_rows, val_rows, fit_layers, val_layers = memo[key]
        y_fit, y_val = y_train_all[fit_rows], y_train_all[val_rows]

    fake: tuple[np.ndarray, np.ndarray] | None = None
    fake_test: np.ndarray | None = None
    if control:
        # one draw over train (+ validation) + test rows, so a word type keeps its label across splits
        n_val_explicit = 0 if val_rows is not None else len(y_val)
        all_labels = np.concatenate([y_train_all, y_val[:n_val_explicit], y_test])
        all_types = None
        if types_train is not None and types_test is not None:
            all_types = np.concatenate([types_train.astype(str), types_test.astype(str)])
        drawn = control_labels(all_labels, groups=all_types, seed=seed)
        fake_train, fake_test = drawn[:n_train_all], drawn[len(drawn) - n_test :]
        if val_rows is not None:
            fake = (fake_train[fit_rows], fake_train[val_rows])
        else:
            fake = (fake_train, drawn[n_train_all : n_train_all + n_val_explicit])

    # every label as a code into one sorted array, so predictions and labels compare as integers
    classes = np.unique(np.concatenate([y_train_all, y_val, y_test]))
    return _Prepared(
        fit_layers, val_layers, test_layers, (y_fit, y_val), y_test, fake, fake_test, classes, groups_test
    )


def _test_groups(test_reps: LayerReps, given: Any, n_test: int) -> np.ndarray:
    """(n_test,) int64 sentence ids ``0..n_sentences - 1`` of the test rows (see ``test_groups``)."""
    if given is None and isinstance(test_reps, Representations) and test_reps.example_index is not None:
        given = test_reps.example_index
    if given is None:
        return np.arange(n_test, dtype=np.int64)
    ids = row_labels(given, n_test, "test_groups")
    _, codes = np.unique(ids, return_inverse=True)
    return codes.astype(np.int64).reshape(-1)


def _split_rows(
    n_rows: int, fraction: float, groups: Tensor | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, validation rows), sorted; whole groups (examples) go to one side when given."""
    rng = np.random.default_rng(seed)
    if groups is None:
        order = rng.permutation(n_rows)
        n_val = min(max(1, round(fraction * n_rows)), n_rows - 1)
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    group = groups.cpu().numpy()
    unique = np.unique(group)
    if len(unique) < 2:
        raise DataError("need at least two examples to hold some out for validation; pass validation=")
    shuffled = rng.permutation(unique)
    n_val = min(max(1, round(fraction * len(unique))), len(unique) - 1)
    is_val = np.isin(group, shuffled[:n_val])
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
