"""Stage ``ffn``: remove FFN sublayers, fine-tune, and compare with the full model.

Sridhar & Sarah (2020, "Undivided attention: are intermediate layers necessary for BERT?") remove the
feed-forward (intermediate) sublayer of some layers before fine-tuning and find that the task barely
suffers while the model gets smaller and faster. This stage repeats the experiment on the run's model
and task:

1. **Which layers.** ``--ffn-layers`` when given. Otherwise the stage measures, in the pre-trained
   model, how much each layer's FFN changes the representation: :func:`ffn_cka` is the linear CKA
   (Kornblith et al. 2019) between the FFN sublayer's input ``a`` (the attention block's output) and the
   layer's output ``LayerNorm(a + FFN(a))``, over every non-padding token of the analysis inputs (the
   FFN acts on each token separately, so tokens, not pooled sentences, are what it changes). CKA near 1
   means the FFN leaves the token geometry almost as it found it (up to rotation and scale), so removing
   it should cost least; the FFN goes from the ``max(1, L // 3)`` layers with the highest CKA.
2. **Fine-tune both.** ``full`` is the run's own fine-tuned model (``RUN/models/tuned``); when the
   fine-tuned model was given with ``--tuned`` (trained elsewhere, perhaps otherwise), an unmodified
   baseline is fine-tuned here into ``RUN/models/full`` so both sides share data, recipe and machine.
   ``ffn_removed`` is the pre-trained model with those FFNs removed
   (:func:`tunescope.surgery.remove_ffn`), fine-tuned the same way from the same seeded head into
   ``RUN/models/ffn-removed`` (the removal is recorded in its config, so it loads back without them).
3. **Evaluate both** on the analysis split with :func:`tunescope.metrics.evaluate`, as the
   ``truncation`` and ``ablation`` stages do, so the three tables compare.

Writes ``ffn_cka.csv`` (``layer, cka, chosen``) and ``ffn.csv`` (``model, ffn_removed_layers, metric,
value, params, trainable_params, train_seconds``; ``train_seconds`` is training alone, evaluation
excluded). With ``--no-finetune`` only ``ffn_cka.csv`` is written. ALBERT shares one FFN across its
layers: it can only be removed everywhere (``--ffn-layers 1,...,L``), so nothing is chosen by default.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from tunescope.errors import InputError
from tunescope.pipeline import RunContext, Stage, Table, register_stage

if TYPE_CHECKING:
    from tunescope.data import Examples
    from tunescope.finetune import FinetuneResult
    from tunescope.models import Encoder

__all__ = ["COLUMNS", "CKA_COLUMNS", "check_ffn_layers", "choose_ffn_layers", "default_count", "ffn_cka"]

COLUMNS = ("model", "ffn_removed_layers", "metric", "value", "params", "trainable_params", "train_seconds")
CKA_COLUMNS = ("layer", "cka", "chosen")


def ffn_cka(
    encoder: Encoder, examples: Examples, *, batch_size: int = 32, max_length: int = 128
) -> dict[int, float]:
    """Per layer, linear CKA between the FFN sublayer's input and the layer's output, over tokens.

    For layer ``l`` (post-LN: ``out = LayerNorm(a + down(act(up(a))))``), ``X`` holds ``a``, the input
    of the FFN's up projection, and ``Y`` holds ``out``, the output of the LayerNorm closing the FFN
    block; each has one row per non-padding token of every example, ``(n_tokens, d_model)``. Forward
    hooks on the adapter's :class:`~tunescope.models.adapters.FFNParts` capture both; the CKA is
    accumulated batch by batch (:class:`~tunescope.similarity.StreamingCKA`, exact, ``O(d_model^2)``
    memory). Positions that share a module (ALBERT) are told apart by call order. The model runs in
    eval mode (its mode is restored afterwards); nothing else about it changes.

    Args:
        encoder: A base or task model with intact FFNs.
        examples: Texts (and pairs) to run; labels are not used.
        batch_size: Examples per forward pass.
        max_length: Truncate inputs to this many tokens.

    Returns:
        ``{layer: cka}`` for layers ``1..L``, each in ``[0, 1]``.

    Example:
        >>> import numpy as np
        >>> from tunescope.data import Examples
        >>> from tunescope.testing.tiny import tiny_model
        >>> ex = Examples(["a good film", "bad", "fine acting", "dull"], None, None, "demo", "x", None)
        >>> cka = ffn_cka(tiny_model("bert", num_layers=2), ex)
        >>> sorted(cka), all(0 <= v <= 1 for v in cka.values())
        ([1, 2], True)
    """
    from tunescope.inference import max_length_for
    from tunescope.similarity import StreamingCKA

    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    model, tokenizer = encoder.model, encoder.tokenizer
    parts = [encoder.adapter.ffn(model, layer) for layer in range(1, encoder.num_layers + 1)]
    inputs: dict[int, list[torch.Tensor]] = {}
    outputs: dict[int, list[torch.Tensor]] = {}
    call: list[int] = []  # which call of its (possibly shared) module each position is, per forward
    handles = []

    def grab_input(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        inputs[id(module)].append(args[0].detach())

    def grab_output(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        outputs[id(module)].append(output.detach())

    for i, part in enumerate(parts):
        call.append(sum(p.up is part.up for p in parts[:i]))
        if id(part.up) not in inputs:
            inputs[id(part.up)] = []
            handles.append(part.up.register_forward_pre_hook(grab_input))
        if id(part.layer_norm) not in outputs:
            outputs[id(part.layer_norm)] = []
            handles.append(part.layer_norm.register_forward_hook(grab_output))
    length = max_length_for(tokenizer, model.config, max_length)
    device = encoder.device
    accumulators = [StreamingCKA() for _ in parts]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(examples), batch_size):
                stop = start + batch_size
                pairs = examples.text_pairs[start:stop] if examples.text_pairs is not None else None
                batch = tokenizer(
                    examples.texts[start:stop],
                    pairs,
                    truncation=True,
                    max_length=length,
                    padding=True,
                    return_tensors="pt",
                ).to(device)
                for captured in (*inputs.values(), *outputs.values()):
                    captured.clear()
                model(**batch)
                mask = batch["attention_mask"].bool()
                for acc, part, k in zip(accumulators, parts, call, strict=True):
                    acc.update([inputs[id(part.up)][k][mask]], [outputs[id(part.layer_norm)][k][mask]])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {layer: float(acc.compute()[0, 0]) for layer, acc in enumerate(accumulators, start=1)}


def default_count(n_layers: int) -> int:
    """How many FFNs the stage removes when ``--ffn-layers`` is not given: ``max(1, L // 3)``."""
    return max(1, n_layers // 3)


def choose_ffn_layers(cka: Mapping[int, float], count: int) -> list[int]:
    """The ``count`` layers with the highest CKA (ties: the lower layer), sorted.

    Example:
        >>> choose_ffn_layers({1: 0.5, 2: 0.9, 3: 0.7, 4: 0.9}, 2)
        [2, 4]
    """
    ranked = sorted(cka, key=lambda layer: (-cka[layer], layer))
    return sorted(ranked[:count])


def check_ffn_layers(
    layers: Iterable[int], n_layers: int, *, shared: bool = False, family: str = "this"
) -> list[int]:
    """Validate ``--ffn-layers`` against the model: sorted layers in ``1..L``, or one clear InputError.

    Args:
        layers: The requested layers (``()`` means none).
        n_layers: ``L`` of the pre-trained model.
        shared: The family shares one FFN across all layers (ALBERT): all or none.
        family: Named in the error.

    Example:
        >>> check_ffn_layers((5, 2, 5), 6)
        [2, 5]
        >>> check_ffn_layers((0, 7), 6)
        Traceback (most recent call last):
        ...
        tunescope.errors.InputError: --ffn-layers 0,7 out of range: this model's transformer layers are 1..6 (0, the embedding output, has no FFN)
    """  # noqa: E501
    chosen = sorted({int(layer) for layer in layers})
    bad = [layer for layer in chosen if not 1 <= layer <= n_layers]
    if bad:
        raise InputError(
            f"--ffn-layers {','.join(map(str, bad))} out of range: this model's transformer layers are "
            f"1..{n_layers} (0, the embedding output, has no FFN)"
        )
    if shared and chosen and chosen != list(range(1, n_layers + 1)):
        every = ",".join(map(str, range(1, n_layers + 1)))
        raise InputError(
            f"--ffn-layers: {family} shares one FFN across all {n_layers} layers, so it can only be removed "
            f"from all of them; pass --ffn-layers {every} or leave it out"
        )
    return chosen


def _start_model(ctx: RunContext) -> Encoder:
    """The pre-trained model with a fresh task head drawn as :func:`~tunescope.finetune.finetune` draws it.

    ``finetune`` loads a base checkpoint with ``load_classifier(num_labels, problem_type)`` under
    ``torch.manual_seed(seed)``; doing the same here gives the FFN-removed model the head the full model
    started from. (``finetune`` cannot take a *base* Encoder whose FFNs are removed, so the head is put on
    before the removal.)
    """
    from tunescope.models import load_classifier

    task = ctx.task
    problem_type = "regression" if task.label_kind == "regression" else "single_label_classification"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.config.seed)
        return load_classifier(ctx.config.model, num_labels=task.num_labels, problem_type=problem_type)


def _row(
    ctx: RunContext, name: str, layers: list[int], model: Encoder, result: FinetuneResult
) -> dict[str, Any]:
    from tunescope.inference import evaluate
    from tunescope.surgery import count_parameters

    task = ctx.task
    scores = evaluate(
        model,
        ctx.examples(),
        task=task,
        batch_size=ctx.config.batch_size,
        max_length=ctx.config.max_length or 128,
    )
    return {
        "model": name,
        "ffn_removed_layers": ",".join(map(str, layers)),
        "metric": task.metric,
        "value": float(scores[task.metric]),
        "params": count_parameters(model),
        "trainable_params": result.trainable_parameters,
        "train_seconds": result.train_seconds,
    }


def run(ctx: RunContext) -> list[Table]:
    """``ffn_cka.csv`` from the pre-trained model; ``ffn.csv`` from fine-tuning with and without the FFNs."""
    base = ctx.encoder(ctx.config.labels[0])
    n_layers, shared = base.num_layers, base.adapter.shared_layers()
    asked = ctx.config.ffn_layers
    layers: list[int] = []
    if asked is not None:  # checked before anything is measured or trained
        layers = check_ffn_layers(asked, n_layers, shared=shared, family=base.family)
    cka = ffn_cka(
        base, ctx.examples(), batch_size=ctx.config.batch_size, max_length=ctx.config.max_length or 128
    )
    if asked is None:
        if shared:
            ctx.note(
                f"ffn: {base.family} shares one FFN across all layers, so no layer is chosen; pass "
                f"--ffn-layers {','.join(map(str, range(1, n_layers + 1)))} to remove it everywhere."
            )
        else:
            layers = choose_ffn_layers(cka, default_count(n_layers))
    rows = [{"layer": layer, "cka": value, "chosen": layer in layers} for layer, value in cka.items()]
    tables = [Table("ffn_cka", CKA_COLUMNS, rows)]
    if not ctx.config.finetune:
        ctx.note("ffn: fine-tuning is off (--no-finetune), so FFN removal is measured (CKA) but not trained.")
        return tables
    if not layers:
        if asked is not None:
            ctx.note("ffn: --ffn-layers none, so no FFN is removed and nothing is trained.")
        return tables

    from tunescope.models import load_classifier
    from tunescope.surgery import remove_ffn

    device = str(ctx.device)
    if ctx.config.tuned is None:
        full = ctx.train("tuned")
        full_model = ctx.classifier()
    else:
        full = ctx.train("full")
        full_model = load_classifier(full.path, device=device)
    result_rows = [_row(ctx, "full", [], full_model, full)]
    del full_model
    start = remove_ffn(_start_model(ctx), layers)
    removed = ctx.train("ffn-removed", model=start)
    del start
    removed_model = load_classifier(removed.path, device=device)
    result_rows.append(_row(ctx, "ffn_removed", layers, removed_model, removed))
    return [*tables, Table("ffn", COLUMNS, result_rows)]


def check(ctx: RunContext) -> None:
    """``--ffn-layers`` against the pre-trained model's depth, before anything is trained."""
    if ctx.config.ffn_layers is not None:
        base = ctx.encoder(ctx.config.labels[0])
        check_ffn_layers(
            ctx.config.ffn_layers, base.num_layers, shared=base.adapter.shared_layers(), family=base.family
        )


register_stage(
    Stage(
        check=check,
        name="ffn",
        title="Fine-tuning without some FFN sublayers",
        run=run,
        description=(
            "The FFN sublayer removed from the layers where it changes the representation least, then "
            "fine-tuned like the full model (Sridhar & Sarah 2020)."
        ),
    )
)
