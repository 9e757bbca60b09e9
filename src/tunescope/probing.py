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

All layers and all regularisation strengths are fitted together: the sub-problems share nothing but
their inputs, so they are stacked into one batched problem (one ``bmm`` per evaluation for every layer
and every strength) and solved by an L-BFGS whose history, step sizes and stopping test are kept per
sub-problem (see :func:`_batched_lbfgs`). The regularisation strength of each layer is chosen on
validation data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tunescope._labels import row_labels
from tunescope.errors import DataError, InputError
from tunescope.extract import Representations
from tunescope.intervals import Interval, check_interval_options, difference_interval, metric_interval

__all__ = ["LayerProbes", "ProbeResult", "control_labels", "fit_probes", "probe_layers"]

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


@dataclass
class _Problem:
    """Stacked data of all layers: ``x`` (n_layers, n_rows, d + 1) with a trailing column of ones (the
    intercept), ``y`` (n_rows,) class ids, ``penalty_mask`` (d + 1, 1): 1 for weights, 0 for the bias."""

    x: Tensor
    y: Tensor
    penalty_mask: Tensor
    n_classes: int


def _loss_and_grad(problem: _Problem, w: Tensor, l2: Tensor) -> tuple[Tensor, Tensor]:
    """Objective and gradient of every sub-problem.

    ``w``: (n_layers, n_l2, d + 1, C) weights; ``l2``: (n_l2,) strengths. For sub-problem (l, k)::

        f = (1/n) sum_i -log softmax(x_il W_lk)[y_i] + (l2_k / 2) ||W_lk[:d]||_F^2

    Returns (n_layers, n_l2) objectives and the (n_layers, n_l2, d + 1, C) gradient
    ``X_l^T (softmax - onehot) / n + l2_k W_lk`` (bias row unpenalised). Two ``bmm`` calls in all.
    """
    n_layers, n_l2, d1, c = w.shape
    x, y = problem.x, problem.y
    n = x.shape[1]
    flat = w.permute(0, 2, 1, 3).reshape(n_layers, d1, n_l2 * c)
    logits = torch.bmm(x, flat).view(n_layers, n, n_l2, c)
    log_p = torch.log_softmax(logits, dim=-1)  # much faster than logsumexp over a short last dimension
    index = y.view(1, n, 1, 1).expand(n_layers, n, n_l2, 1)
    nll = -log_p.gather(-1, index).squeeze(-1).mean(dim=1)  # (n_layers, n_l2)
    probs = log_p.exp_()
    probs.scatter_add_(-1, index, torch.full_like(probs[..., :1], -1.0))
    probs /= n
    grad = torch.bmm(x.transpose(1, 2), probs.view(n_layers, n, n_l2 * c))
    grad = grad.view(n_layers, d1, n_l2, c).permute(0, 2, 1, 3)
    masked = w * problem.penalty_mask
    penalty = 0.5 * l2.view(1, -1) * masked.square().sum(dim=(2, 3))
    grad = grad + l2.view(1, -1, 1, 1) * masked
    return nll + penalty, grad


def _batched_lbfgs(
    fn: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    w: Tensor,
    *,
    max_iter: int,
    tol: float,
    precondition: Callable[[Tensor], Tensor] | None = None,
    history: int = 10,
) -> tuple[Tensor, Tensor]:
    """Minimise independent smooth objectives at once: L-BFGS with per-problem memory and step sizes.

    ``fn(w, needed)`` returns (n_problems,) objectives and their (n_problems, *shape) gradient; ``w`` is
    (n_problems, *shape) and ``needed`` a (n_problems,) bool mask: entries outside it are not used, so
    ``fn`` may skip them (the probe objective skips regularisation strengths done in every layer).

    Each sub-problem keeps its own curvature pairs (two-loop recursion with per-problem dot products),
    its own Armijo backtracking step and its own stopping test ``max |grad| <= tol`` (scipy's ``gtol``,
    which scikit-learn's lbfgs uses); converged sub-problems stop moving while the others go on. A plain
    L-BFGS on the *sum* of the objectives shares one step size and one curvature model between all of
    them, which needs many more iterations.

    ``precondition(v)`` applies a fixed symmetric positive-definite estimate ``P`` of each sub-problem's
    inverse Hessian to (n_problems, *shape) vectors; the initial inverse Hessian of each two-loop
    recursion is ``gamma * P`` with the usual ``gamma = s.y / y.P.y`` (Nocedal & Wright, eq. 7.20, with
    ``P`` in place of the identity).

    The function is long (about 75 lines) on purpose: the two-loop recursion, the line search and the
    memory update share one set of per-problem tensors, and split apart they would pass a dozen of them
    back and forth; each block (two-loop recursion, Armijo backtracking, memory update) is commented.

    Returns:
        ``(w, n_iter)``: the solutions and the (n_problems,) iterations each took.
    """
    n_problems = w.shape[0]
    flat = w.reshape(n_problems, -1).clone()
    m = flat.shape[-1]

    def apply_p(v: Tensor) -> Tensor:
        return v if precondition is None else precondition(v.view_as(w)).reshape(n_problems, m)

    tiny = torch.finfo(flat.dtype).tiny

    def evaluate(v: Tensor, needed: Tensor) -> tuple[Tensor, Tensor]:
        f, g = fn(v.view_as(w), needed)
        return f, g.reshape(n_problems, m)

    f, g = evaluate(flat, torch.ones(n_problems, dtype=torch.bool, device=w.device))
    s_hist: list[Tensor] = []
    y_hist: list[Tensor] = []
    rho_hist: list[Tensor] = []
    gamma = torch.ones(n_problems, dtype=flat.dtype, device=flat.device)
    n_iter = torch.zeros(n_problems, dtype=torch.long, device=w.device)
    active = g.abs().amax(dim=-1) > tol
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        # two-loop recursion, per sub-problem
        q = -g
        alphas = []
        for s, y, rho in zip(reversed(s_hist), reversed(y_hist), reversed(rho_hist), strict=True):
            a = rho * (s * q).sum(-1)
            alphas.append(a)
            q = q - a.unsqueeze(-1) * y
        q = apply_p(q)
        if s_hist:
            q = q * gamma.unsqueeze(-1)
        else:  # first step: at most unit length
            q = q / q.norm(dim=-1, keepdim=True).clamp_min(1.0)
        for s, y, rho, a in zip(s_hist, y_hist, rho_hist, reversed(alphas), strict=True):
            b = rho * (y * q).sum(-1)
            q = q + (a - b).unsqueeze(-1) * s
        slope = (g * q).sum(-1)
        bad = slope >= 0  # not a descent direction (rounding): fall back to preconditioned steepest descent
        if bool(bad.any()):
            pg = apply_p(g)
            q = torch.where(bad.unsqueeze(-1), -pg, q)
            slope = torch.where(bad, -(g * pg).sum(-1), slope)
        q = q * active.unsqueeze(-1)
        # Armijo backtracking, per sub-problem
        step = torch.ones(n_problems, dtype=flat.dtype, device=flat.device)
        pending = active.clone()
        new_flat, new_f, new_g = flat, f, g
        for _ in range(30):
            trial = flat + step.unsqueeze(-1) * q
            f_t, g_t = evaluate(trial, pending)
            ok = pending & (f_t <= f + 1e-4 * step * slope)
            new_flat = torch.where(ok.unsqueeze(-1), trial, new_flat)
            new_f = torch.where(ok, f_t, new_f)
            new_g = torch.where(ok.unsqueeze(-1), g_t, new_g)
            pending = pending & ~ok
            if not bool(pending.any()):
                break
            step = torch.where(pending, step * 0.5, step)
        stalled = pending  # no decrease found: at the limit of rounding, stop this sub-problem
        s_new, y_new = new_flat - flat, new_g - g
        sy = (s_new * y_new).sum(-1)
        good = sy > 1e-10 * s_new.norm(dim=-1) * y_new.norm(dim=-1)
        # a sub-problem without a usable pair this round stores s = 0, rho = 0: a no-op in both loops
        rho = torch.where(good, 1.0 / sy.clamp_min(tiny), torch.zeros_like(sy))
        yhy = (y_new * apply_p(y_new)).sum(-1).clamp_min(tiny)
        gamma = torch.where(good, sy / yhy, gamma)
        s_hist.append(s_new * good.unsqueeze(-1))
        y_hist.append(y_new * good.unsqueeze(-1))
        rho_hist.append(rho)
        if len(s_hist) > history:
            s_hist.pop(0), y_hist.pop(0), rho_hist.pop(0)
        n_iter += active.long()
        flat, f, g = new_flat, new_f, new_g
        active = active & ~stalled & (g.abs().amax(dim=-1) > tol)
    return flat.view_as(w), n_iter


def _objective(problem: _Problem, l2: Tensor) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``fn(w, needed)`` for :func:`_batched_lbfgs` over the (n_layers * n_l2) flattened sub-problems.

    Only the regularisation strengths still needed by some layer are computed: once a strength has
    converged in every layer its columns leave the ``bmm``.
    """
    n_layers, n_l2 = problem.x.shape[0], l2.shape[0]

    def fn(w: Tensor, needed: Tensor) -> tuple[Tensor, Tensor]:
        w = w.view(n_layers, n_l2, *w.shape[1:])
        columns = needed.view(n_layers, n_l2).any(dim=0)
        if bool(columns.all()):
            f, g = _loss_and_grad(problem, w, l2)
        else:
            f = torch.zeros(n_layers, n_l2, dtype=w.dtype, device=w.device)
            g = torch.zeros_like(w)
            f[:, columns], g[:, columns] = _loss_and_grad(problem, w[:, columns], l2[columns])
        return f.reshape(-1), g.reshape(n_layers * n_l2, *w.shape[2:])

    return fn


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

    The (n_layers * n_l2) sub-problems are stacked into one (n_layers, d + 1, n_l2 * n_classes) weight
    tensor, so each objective evaluation is one ``bmm`` over every layer and strength, in ``dtype``
    (float32 by default) on ``device``; :func:`_batched_lbfgs` solves them with per-sub-problem L-BFGS
    memory and step sizes, a diagonal preconditioner from the class frequencies, intercepts started at the
    log class priors, and drops a strength from the ``bmm`` once every layer has converged for it. (Warm
    starts along the l2 path, one strength after the other, were measured slower on CPU: a pass over the
    data costs about the same for 17 or 85 weight columns, so all strengths share each pass instead.)

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
        grid = self._check_hyperparameters()
        layers = _layers_of(train, "train")
        val_layers = _layers_of(validation, "validation")
        if sorted(val_layers) != sorted(layers):
            raise InputError(
                f"train has layers {sorted(layers)} but validation has {sorted(val_layers)}; "
                "give the same layers"
            )
        for layer in layers:
            if val_layers[layer].shape[1] != layers[layer].shape[1]:
                raise InputError(
                    f"layer {layer} has {layers[layer].shape[1]} features in train but "
                    f"{val_layers[layer].shape[1]} in validation"
                )
        n_train = next(iter(layers.values())).shape[0]
        n_val = next(iter(val_layers.values())).shape[0]
        labels = row_labels(_default_labels(train, y_train), n_train, "train")
        val_labels = row_labels(_default_labels(validation, y_validation), n_val, "validation")
        classes, codes = np.unique(labels, return_inverse=True)
        if len(classes) < 2:
            raise DataError(
                f"probes need at least two classes; every training label is {classes[0]!r}"
                if len(classes)
                else "probes need training rows; got none"
            )
        if n_val == 0:
            raise DataError("validation has no rows; the regularisation strength is chosen on it")
        device = torch.device(self.device) if self.device is not None else next(iter(layers.values())).device

        order = sorted(layers)
        x, mean, std = self._stack(layers, order, device, None, None)
        x_val, _, _ = self._stack(val_layers, order, device, mean, std)
        y = torch.from_numpy(codes).to(device)
        y_val = torch.from_numpy(_codes_of(val_labels, classes)).to(device)
        weights, n_iter = self._solve(x, y, len(classes), grid)

        # validation accuracy of every (layer, strength); keep the best, ties to the larger l2
        accuracy = torch.stack([_accuracy(x_val, weights[:, k], y_val) for k in range(len(grid))], dim=1)
        best = accuracy.argmax(dim=1).tolist()  # grid is descending: first maximum = largest l2
        self.layers_ = tuple(order)
        self.classes_ = classes
        self.n_train_ = n_train
        self.l2_ = {layer: grid[best[i]] for i, layer in enumerate(order)}
        self.validation_accuracy_ = {
            layer: {l2: float(accuracy[i, k]) for k, l2 in enumerate(grid)} for i, layer in enumerate(order)
        }
        self.n_iter_ = {
            layer: {l2: int(n_iter[i, k]) for k, l2 in enumerate(grid)} for i, layer in enumerate(order)
        }
        self.coef_, self.intercept_ = {}, {}
        for i, layer in enumerate(order):
            d = layers[layer].shape[1]
            w = weights[i, best[i]].to(torch.float64).cpu()  # (d_max + 1, C) on standardised features
            scale = w[:d] / std[i, :d].cpu().to(torch.float64).unsqueeze(1)
            self.coef_[layer] = scale.T.contiguous().numpy()
            intercept = w[-1] - mean[i, :d].cpu().to(torch.float64) @ scale
            self.intercept_[layer] = intercept.numpy()
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

    def _stack(
        self,
        layers: dict[int, Tensor],
        order: list[int],
        device: torch.device,
        mean: Tensor | None,
        std: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(n_layers, n_rows, d_max + 1) standardised features with a ones column; widths padded with 0."""
        d_max = max(layers[layer].shape[1] for layer in order)
        n_rows = layers[order[0]].shape[0]
        x = torch.zeros(len(order), n_rows, d_max + 1, dtype=self.dtype, device=device)
        x[:, :, -1] = 1.0
        if mean is None or std is None:
            mean = torch.zeros(len(order), d_max, dtype=torch.float64, device=device)
            std = torch.ones(len(order), d_max, dtype=torch.float64, device=device)
            if self.standardize:
                for i, layer in enumerate(order):
                    v = layers[layer].to(device=device, dtype=torch.float64)
                    d = v.shape[1]
                    mean[i, :d] = v.mean(dim=0)
                    sd = v.std(dim=0, correction=0)
                    std[i, :d] = torch.where(sd > 0, sd, torch.ones_like(sd))
        for i, layer in enumerate(order):
            v = layers[layer].to(device=device)
            d = v.shape[1]
            x[i, :, :d] = ((v.to(torch.float64) - mean[i, :d]) / std[i, :d]).to(self.dtype)
        return x, mean, std

    def _solve(self, x: Tensor, y: Tensor, n_classes: int, grid: list[float]) -> tuple[Tensor, Tensor]:
        """(n_layers, n_l2, d_max + 1, C) weights and (n_layers, n_l2) iteration counts."""
        n_layers, n_rows, d1 = x.shape
        mask = torch.ones(d1, 1, dtype=x.dtype, device=x.device)
        mask[-1] = 0.0
        problem = _Problem(x, y, mask, n_classes)
        l2 = torch.tensor(grid, dtype=x.dtype, device=x.device)
        prior = torch.bincount(y, minlength=n_classes).to(x.dtype) / n_rows
        floor = 1.0 / n_rows
        # intercepts at the log priors: the exact optimum while the weights are zero
        w0 = torch.zeros(n_layers, len(grid), d1, n_classes, dtype=x.dtype, device=x.device)
        w0[..., -1, :] = torch.log(prior.clamp_min(floor))
        curvature = (prior * (1 - prior)).clamp_min(floor)
        w, n_iter = _batched_lbfgs(
            _objective(problem, l2),
            w0.reshape(n_layers * len(grid), d1, n_classes),
            max_iter=self.max_iter,
            tol=self.tol,
            precondition=_preconditioner(curvature, l2, n_layers, d1),
        )
        return w.view(n_layers, len(grid), d1, n_classes), n_iter.view(n_layers, len(grid))


def _preconditioner(curvature: Tensor, l2: Tensor, n_layers: int, d1: int) -> Callable[[Tensor], Tensor]:
    """A diagonal estimate of each sub-problem's inverse Hessian at the start, on (n_problems, d + 1, C).

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
    h = h.view(n_layers * n_l2, d1, n_classes)

    def apply(v: Tensor) -> Tensor:
        return v * h

    return apply


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
    procedure, and both predict the test rows.

    It is long (about 90 lines, a third of them input checks) because the train, validation and test row
    sets and their control labels must be cut from one draw, so a word type keeps one control label
    across the splits; the steps are marked by comments.

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
    train_layers = _layers_of(train_reps, "train_reps")
    n_train_all = next(iter(train_layers.values())).shape[0]
    y_train_all = row_labels(_default_labels(train_reps, train_labels), n_train_all, "train")
    test_layers = _layers_of(test_reps, "test_reps")
    n_test = next(iter(test_layers.values())).shape[0]
    y_test = row_labels(_default_labels(test_reps, test_labels), n_test, "test")
    groups_test = _test_groups(test_reps, test_groups, n_test)
    tokens = isinstance(train_reps, Representations) and train_reps.pooling == "tokens"
    if control and tokens and word_types is None:
        raise InputError(
            "token-level control tasks give each word type a random label: pass word_types=(train_words, "
            "test_words), the word of each row (or control=False)"
        )
    if control and word_types is not None and validation is not None:
        raise InputError(
            "word-type control labels need the word of every row, and validation= has none: "
            "use validation_fraction (the default) with word_types"
        )
    types_train = types_test = None
    if word_types is not None:
        types_train = row_labels(word_types[0], n_train_all, "word_types[0] (train)")
        types_test = row_labels(word_types[1], n_test, "word_types[1] (test)")

    # validation rows
    fit_rows: np.ndarray | slice
    if validation is not None:
        val_layers = _layers_of(validation[0], "validation")
        n_val = next(iter(val_layers.values())).shape[0]
        y_val = row_labels(_default_labels(validation[0], validation[1]), n_val, "validation")
        fit_layers, y_fit, fit_rows = train_layers, y_train_all, slice(None)
        val_rows = None
    else:
        if not 0 < validation_fraction < 1:
            raise InputError(f"validation_fraction must be in (0, 1); got {validation_fraction}")
        groups = train_reps.example_index if tokens and isinstance(train_reps, Representations) else None
        fit_rows, val_rows = _split_rows(n_train_all, validation_fraction, groups, seed)
        index_fit, index_val = torch.from_numpy(fit_rows), torch.from_numpy(val_rows)
        fit_layers = {layer: x[index_fit] for layer, x in train_layers.items()}
        val_layers = {layer: x[index_val] for layer, x in train_layers.items()}
        y_fit, y_val = y_train_all[fit_rows], y_train_all[val_rows]

    options = {"l2_grid": l2_grid, "max_iter": max_iter, "tol": tol, "device": device, "seed": seed}
    probes = LayerProbes(**options).fit(fit_layers, y_fit, val_layers, y_val)  # type: ignore[arg-type]
    predicted = probes.predict(test_layers)
    values, counts = np.unique(y_fit, return_counts=True)
    majority = float(np.mean(y_test == values[counts.argmax()]))

    control_probes: LayerProbes | None = None
    fake_test: np.ndarray | None = None
    control_predicted: dict[int, np.ndarray] = {}
    if control:
        # one draw over train (+ validation) + test rows, so a word type keeps its label across splits
        n_val_explicit = 0 if val_rows is not None else len(y_val)
        all_labels = np.concatenate([y_train_all, y_val[:n_val_explicit], y_test])
        all_types = None
        if types_train is not None and types_test is not None:
            all_types = np.concatenate([types_train.astype(str), types_test.astype(str)])
        fake = control_labels(all_labels, groups=all_types, seed=seed)
        fake_train, fake_test = fake[:n_train_all], fake[len(fake) - n_test :]
        if val_rows is not None:
            fake_fit, fake_val = fake_train[fit_rows], fake_train[val_rows]
        else:
            fake_fit, fake_val = fake_train, fake[n_train_all : n_train_all + n_val_explicit]
        control_probes = LayerProbes(**options).fit(  # type: ignore[arg-type]
            fit_layers, fake_fit, val_layers, fake_val
        )
        control_predicted = control_probes.predict(test_layers)

    # every label as a code into one sorted array, so predictions and labels compare as integers
    classes = np.unique(np.concatenate([y_train_all, y_val, y_test]))
    return ProbeResult(
        probes=probes,
        control_probes=control_probes,
        classes=classes,
        labels=_codes_of(y_test, classes),
        predictions={layer: _codes_of(pred, classes) for layer, pred in predicted.items()},
        control_labels=None if fake_test is None else _codes_of(fake_test, classes),
        control_predictions={layer: _codes_of(pred, classes) for layer, pred in control_predicted.items()},
        groups=groups_test,
        majority_accuracy=majority,
        n_train=len(y_fit),
        n_validation=len(y_val),
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
