"""Fine-tuning options (:class:`FinetuneConfig`, checked when built) and outcome (:class:`FinetuneResult`).

:func:`_check_config` is the check :func:`~tunescope.finetune.finetune` makes of its ``config`` argument.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tunescope.errors import InputError, MissingExtraError, UnknownNameError

__all__ = ["ADAPTER_METHODS", "PRECISIONS", "FinetuneConfig", "FinetuneResult", "resolve_precision"]

ADAPTER_METHODS: dict[str, str] = {
    "lora": "LoRA (Hu et al., 2022): trainable low-rank updates B A on frozen linears, via peft",
}
"""Parameter-efficient methods :attr:`FinetuneConfig.adapter` accepts, with what each does."""


PRECISIONS: dict[str, str] = {
    "fp32": "every operation in float32",
    "bf16": "forward pass under bfloat16 autocast (matrix products in bfloat16, the loss in float32; the "
    "rest as PyTorch's autocast op lists give for the device); weights, gradients and AdamW state stay "
    "float32",
    "auto": "bf16 where the device computes bfloat16 natively (CUDA with bf16 support; a CPU with "
    "AVX512-BF16 or AMX), else fp32",
}
"""Training precisions :attr:`FinetuneConfig.precision` accepts, with what each does."""


def resolve_precision(precision: str, device: Any) -> str:
    """``"fp32"`` or ``"bf16"``: what ``precision`` means on ``device`` (``"auto"`` asks the hardware).

    Raises:
        UnknownNameError: ``precision`` is not one of :data:`PRECISIONS`.
    """
    import torch

    if precision not in PRECISIONS:
        raise UnknownNameError("training precision", str(precision), PRECISIONS, hint="fix --precision")
    if precision != "auto":
        return precision
    kind = torch.device(device).type
    if kind == "cuda":
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    elif kind == "cpu":
        cpu = torch.cpu
        native = any(
            bool(getattr(cpu, check, lambda: False)())
            for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        )
    else:
        native = False
    return "bf16" if native else "fp32"


def _layer_tuple(value: Any, name: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, int | str):
        raise InputError(f"{name} must be a sequence of layer numbers such as (4, 5, 6), got {value!r}")
    try:
        layers = tuple(sorted({int(v) for v in value}))
    except (TypeError, ValueError):
        raise InputError(f"{name} must hold whole layer numbers, got {value!r}") from None
    return layers


MEGABATCH = 50
"""Batches per length-sorted mega-batch with ``group_by_length`` (as transformers' ``LengthGroupedSampler``):
large enough that a mega-batch's lengths are close together, small enough that batches stay random."""

MIN_MEGABATCHES = 4
"""Mega-batches are made smaller so that an epoch has at least this many: sorted by length, one mega-batch
holding all the data would put the same examples together in every epoch."""


@dataclass(frozen=True)
class FinetuneConfig:
    """How to fine-tune: optimisation, which parameters train, evaluation and model selection.

    Attributes:
        epochs: Passes over the training data; with ``patience``, the most it makes.
        learning_rate: Peak learning rate of AdamW (reached after warm-up, then linear decay to 0).
        batch_size: Training examples per step.
        warmup_ratio: Fraction of all steps spent warming the learning rate up linearly from 0.
        weight_decay: AdamW decoupled weight decay, applied to weight matrices only (not to biases
            and LayerNorm weights).
        max_length: Inputs are truncated to this many tokens.
        seed: Seeds the head's initialisation, LoRA's, dropout and the shuffling.
        train_layers: ``None``: every parameter trains. Else only these transformer layers (1..L, or
            1..k with ``classifier_layer``) plus the classifier head train; embeddings and the other
            layers are frozen. ``()`` trains the head alone.
        classifier_layer: Cut the model after layer ``k`` (keep layers 1..k) and put the head on top.
        adapter: ``"lora"`` (see :data:`ADAPTER_METHODS`) or ``None``.
        lora_r: LoRA rank ``r``.
        lora_alpha: LoRA scale numerator (updates are scaled by ``lora_alpha / lora_r``).
        adapter_layers: Layers that get adapters (``None``: all).
        eval_each_epoch: Evaluate on the validation split after every epoch (else after the last).
        keep_best: Save the epoch with the best validation metric, not the last one.
        patience: Early stopping. ``None``: train all ``epochs``. Else stop once the task's primary
            validation metric has not improved (strictly) on its best for ``patience`` consecutive
            epochs; ``epochs`` is then the maximum. Needs ``eval_each_epoch``. The learning-rate
            schedule is still laid out over the maximum: warm-up is ``warmup_ratio`` of
            ``epochs`` epochs' steps and the decay reaches 0 only at epoch ``epochs``, so a run that
            stops early ends with the learning rate partway down, and its epochs up to the stop are
            exactly those of the same run without ``patience``.
        max_grad_norm: Gradients are clipped to this global L2 norm.
        group_by_length: Batch examples of similar length together, so little of each batch is
            padding: every epoch the shuffled examples are cut into mega-batches of
            :data:`MEGABATCH` batches (fewer on small data: :data:`MIN_MEGABATCHES`), each sorted by
            length and split into batches, and the batches are shuffled (the longest one first, so a
            batch that does not fit in memory fails at once). ``False``: batches of randomly shuffled
            examples. Either way every example is seen once per epoch, in an order that depends only
            on ``(seed, epoch)``.
        precision: ``"fp32"``, ``"bf16"`` (mixed precision: the forward pass and loss under bfloat16
            autocast, float32 weights, gradients and optimiser state) or ``"auto"`` (bf16 where the
            device computes bfloat16 natively, else fp32); see :data:`PRECISIONS`. :func:`finetune`
            resolves ``"auto"`` before training, so a result's config names what ran. Validation
            and everything tunescope measures afterwards run in float32 either way.
    """

    epochs: int = 1
    learning_rate: float = 5e-5
    batch_size: int = 32
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_length: int = 128
    seed: int = 0
    train_layers: tuple[int, ...] | None = None
    classifier_layer: int | None = None
    adapter: Literal["lora"] | None = None
    lora_r: int = 8
    lora_alpha: int = 16
    adapter_layers: tuple[int, ...] | None = None
    eval_each_epoch: bool = True
    keep_best: bool = True
    max_grad_norm: float = 1.0
    patience: int | None = None
    group_by_length: bool = True
    precision: Literal["fp32", "bf16", "auto"] = "fp32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "train_layers", _layer_tuple(self.train_layers, "train_layers"))
        object.__setattr__(self, "adapter_layers", _layer_tuple(self.adapter_layers, "adapter_layers"))
        checks = (  # the option's name, and the command-line flag that sets it
            ("epochs", self.epochs >= 1, "at least 1 (--epochs)"),
            ("learning_rate", self.learning_rate > 0, "positive (--lr)"),
            ("batch_size", self.batch_size >= 1, "at least 1 (--batch-size)"),
            ("warmup_ratio", 0 <= self.warmup_ratio < 1, "in [0, 1) (--warmup-ratio)"),
            ("weight_decay", self.weight_decay >= 0, "at least 0"),
            ("max_length", self.max_length >= 2, "at least 2 (--max-length)"),
            ("lora_r", self.lora_r >= 1, "at least 1 (--lora-r)"),
            ("lora_alpha", self.lora_alpha > 0, "positive"),
            ("max_grad_norm", self.max_grad_norm > 0, "positive"),
            ("patience", self.patience is None or self.patience >= 1, "at least 1 or None (--patience)"),
        )
        for name, ok, want in checks:
            if not ok:
                raise InputError(f"{name} must be {want}, got {getattr(self, name)!r}")
        if self.classifier_layer is not None and int(self.classifier_layer) < 1:
            raise InputError(
                f"classifier_layer must be a transformer layer (>= 1), got {self.classifier_layer}"
            )
        if self.precision not in PRECISIONS:
            raise UnknownNameError(
                "training precision", str(self.precision), PRECISIONS, hint="fix --precision"
            )
        if self.adapter is not None and self.adapter not in ADAPTER_METHODS:
            raise UnknownNameError("adapter", str(self.adapter), ADAPTER_METHODS)
        if self.patience is not None and not self.eval_each_epoch:
            raise InputError(
                "patience needs eval_each_epoch=True: early stopping watches the validation metric "
                "after every epoch"
            )
        if self.adapter is None and self.adapter_layers is not None:
            raise InputError("adapter_layers needs an adapter; pass adapter='lora' (--adapter lora)")
        if self.adapter is not None and self.train_layers is not None:
            raise InputError(
                "train_layers and an adapter do not combine; choose the adapter's layers with adapter_layers"
            )


@dataclass(frozen=True)
class FinetuneResult:
    """What :func:`finetune` did and where the model is.

    Attributes:
        path: The output folder, loadable with ``AutoModelForSequenceClassification.from_pretrained``
            (``AutoModelForTokenClassification`` for token tasks) and :func:`tunescope.load_classifier`.
        history: One dict per epoch: ``epoch``, ``train_loss`` (batch losses averaged, weighted by
            batch size), the validation metrics (when evaluated), ``seconds`` (training) and
            ``eval_seconds``.
        best_epoch: The epoch whose weights were saved.
        metric: The task's primary metric.
        best_value: Its validation value at ``best_epoch`` (NaN if never evaluated).
        train_seconds: Training time summed over epochs (evaluation excluded).
        trainable_parameters: Parameters that received gradients.
        total_parameters: All parameters of the trained model (LoRA: including adapters).
        config: The options it was trained with.
        stopped_epoch: The last epoch trained (``config.epochs`` unless it stopped early).
        stopped_early: Whether early stopping (``config.patience``) ended the run before
            ``config.epochs``: the primary metric's best value was then ``patience`` epochs old.
            Records written before early stopping existed load with ``False`` and their last epoch.
    """

    path: Path
    history: list[dict[str, Any]]
    best_epoch: int
    metric: str
    best_value: float
    train_seconds: float
    trainable_parameters: int
    total_parameters: int
    config: FinetuneConfig = field(default_factory=FinetuneConfig)
    stopped_epoch: int = 0
    stopped_early: bool = False


def _check_config(config: Any) -> None:
    """Refuse a ``config`` that is not a :class:`FinetuneConfig`, or an adapter whose package is missing."""
    if not isinstance(config, FinetuneConfig):
        raise InputError(f"config must be a FinetuneConfig, got {type(config).__name__}")
    if config.adapter == "lora":
        try:
            import peft  # noqa: F401
        except ImportError:
            raise MissingExtraError("peft", "adapters", "LoRA fine-tuning") from None
