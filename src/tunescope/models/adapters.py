"""Architecture adapters: one uniform view of every supported encoder family.

Hugging Face encoders keep the same pieces (embeddings, a stack of layers, a self-attention block
whose output projection mixes the heads, a feed-forward sublayer, a task head) under different
attribute names. An :class:`ArchitectureAdapter` names those pieces once per family, so analysis code
never looks at ``model_type``. Adapters live in the :data:`ADAPTERS` registry, keyed by
``config.model_type``; :func:`get_adapter` looks one up.

Every accessor takes either a base model (``AutoModel``) or a task model
(``AutoModelForSequenceClassification`` ...); the base model inside a task model is found with
``model.base_model``. Attribute paths are given as candidates tried in order, so a rename between
transformers versions only needs one more candidate (the paths below are the same in transformers
4.57 and 5.x).

Per family (paths below the base model; ``L`` = layer index, 0-based in the module tree):

============  ====================================  ==========================  ======================
family        attention output projection           FFN up / down / closing LN  classifier head
============  ====================================  ==========================  ======================
bert          encoder.layer.L.attention.output      intermediate.dense /        pooler + classifier
              .dense                                output.dense /
                                                    output.LayerNorm
roberta       (as bert)                             (as bert)                   classifier (dense +
xlm-roberta                                                                     out_proj)
electra       (as bert)                             (as bert)                   classifier (dense +
                                                                                out_proj)
deberta-v2    (as bert)                             (as bert)                   pooler (task model) +
                                                                                classifier
mpnet         encoder.layer.L.attention.attn.o      (as bert)                   classifier (dense +
                                                                                out_proj)
distilbert    transformer.layer.L.attention         ffn.lin1 / ffn.lin2 /       pre_classifier +
              .out_lin                              output_layer_norm           classifier
albert        encoder.albert_layer_groups.G         ffn / ffn_output /          pooler +
              .albert_layers.0.attention.dense      full_layer_layer_norm       pooler_activation +
                                                                                classifier
============  ====================================  ==========================  ======================

ALBERT shares parameters across depth: :meth:`ArchitectureAdapter.layers` returns the shared layer
module repeated ``L`` times (the *same* object at every position, or one object per hidden group),
and :meth:`ArchitectureAdapter.shared_layers` is ``True``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from tunescope.errors import InputError, UnsupportedArchitectureError

__all__ = [
    "ADAPTERS",
    "ArchitectureAdapter",
    "FFNParts",
    "SharedLayerAdapter",
    "get_adapter",
]


@dataclass(frozen=True)
class FFNParts:
    """The feed-forward sublayer of one transformer layer.

    The FFN computes ``layer_norm(residual + down(act(up(x))))`` in every supported (post-LN) family.

    Attributes:
        owner: The transformer layer module that holds the three parts below.
        up: Linear ``d_model -> d_ff`` (weight shape ``(d_ff, d_model)``).
        down: Linear ``d_ff -> d_model`` (weight shape ``(d_model, d_ff)``).
        layer_norm: The LayerNorm that closes the FFN residual block (normalized shape ``(d_model,)``).
        up_name: Dotted path of ``up`` inside ``owner`` (for ``get_submodule``/replacement).
        down_name: Dotted path of ``down`` inside ``owner``.
        layer_norm_name: Dotted path of ``layer_norm`` inside ``owner``.
    """

    owner: nn.Module
    up: nn.Linear
    down: nn.Linear
    layer_norm: nn.LayerNorm
    up_name: str
    down_name: str
    layer_norm_name: str


def _get_path(root: nn.Module, path: str) -> Any:
    """Follow a dotted attribute path; ``None`` where any step is missing."""
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft ``PeftModel`` (which has ``get_base_model``); else ``model``."""
    get_base_model = getattr(model, "get_base_model", None)
    if callable(get_base_model):
        inner = get_base_model()
        if isinstance(inner, nn.Module):
            return inner
    return model


def _config_of(model_or_config: Any) -> Any:
    """The HF config of a model, an Encoder-like object or a config."""
    if hasattr(model_or_config, "model_type") and not isinstance(model_or_config, nn.Module):
        return model_or_config
    config = getattr(model_or_config, "config", None)
    if config is None:
        model = getattr(model_or_config, "model", None)
        config = getattr(model, "config", None)
    if config is None:
        raise UnsupportedArchitectureError(
            f"{type(model_or_config).__name__} has no Hugging Face config; pass a transformers "
            f"PreTrainedModel (or its config); supported families: {', '.join(sorted(ADAPTERS))}"
        )
    return config


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Where one encoder family keeps its pieces.

    Attributes:
        family: The HF ``config.model_type`` this adapter serves.
        layer_list: Candidate paths (below the base model) of the ``ModuleList`` of layers.
        attention_output_paths: Candidate paths (below a layer) of the attention output projection,
            the linear map whose input is the concatenated per-head context
            ``(n_examples, seq_len, n_heads * head_dim)``.
        ffn_up_paths: Candidate paths (below a layer) of the FFN up projection.
        ffn_down_paths: Candidate paths (below a layer) of the FFN down projection.
        ffn_norm_paths: Candidate paths (below a layer) of the LayerNorm closing the FFN block.
        base_head_parts: Attributes of the base model that belong to the classifier head (poolers).
        task_head_parts: Attributes of the task model that form the classifier head.
        mlm_head_prefixes: Checkpoint key prefixes that mean "this checkpoint has a masked-LM head".
        intermediate_key: Config attribute holding the FFN width ``d_ff``.
    """

    family: str
    layer_list: tuple[str, ...] = ("encoder.layer",)
    attention_output_paths: tuple[str, ...] = ("attention.output.dense",)
    ffn_up_paths: tuple[str, ...] = ("intermediate.dense",)
    ffn_down_paths: tuple[str, ...] = ("output.dense",)
    ffn_norm_paths: tuple[str, ...] = ("output.LayerNorm",)
    base_head_parts: tuple[str, ...] = ()
    task_head_parts: tuple[str, ...] = ("classifier",)
    mlm_head_prefixes: tuple[str, ...] = ()
    intermediate_key: str = "intermediate_size"

    # -- config ---------------------------------------------------------------------------------
    def validate(self, config: Any) -> None:
        """Raise :class:`UnsupportedArchitectureError` if this config has a variant the adapter lacks."""

    def num_layers(self, config: Any) -> int:
        """Number of transformer layers ``L`` (``config.num_hidden_layers``)."""
        return int(config.num_hidden_layers)

    def num_heads(self, config: Any) -> int:
        """Attention heads per layer ``H``."""
        return int(config.num_attention_heads)

    def hidden_size(self, config: Any) -> int:
        """Model width ``d_model``."""
        return int(config.hidden_size)

    def head_dim(self, config: Any) -> int:
        """Width of one head, ``d_model // H``; ``H * head_dim`` is the output projection's input width.

        (DeBERTa-v2's ``attention_head_size`` option is ignored: its output projection always takes
        ``d_model`` inputs, so transformers only runs it when ``H * attention_head_size == d_model``.)
        """
        return self.hidden_size(config) // self.num_heads(config)

    def intermediate_size(self, config: Any) -> int:
        """FFN width ``d_ff``."""
        return int(getattr(config, self.intermediate_key))

    # -- modules --------------------------------------------------------------------------------
    def base_model(self, model: nn.Module) -> nn.Module:
        """The base model (``BertModel``, ...) of a base or task model (or of a peft wrapper of one)."""
        model = _unwrap_peft(model)
        base = getattr(model, "base_model", model)
        return base if isinstance(base, nn.Module) else model

    def embeddings(self, model: nn.Module) -> nn.Module:
        """The embeddings module (its output precedes any ELECTRA/ALBERT projection to ``d_model``)."""
        return self._find(self.base_model(model), ("embeddings",), "embeddings")

    def layer_stack(self, model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList] | None:
        """``(parent, attribute, ModuleList)``: where the layer list lives, for code that replaces it.

        The first of the ``layer_list`` paths that holds a ``ModuleList``; ``None`` where none does.
        """
        base = self.base_model(model)
        for path in self.layer_list:
            parent_path, _, name = path.rpartition(".")
            try:
                parent = base.get_submodule(parent_path) if parent_path else base
            except AttributeError:
                continue
            stack = getattr(parent, name, None)
            if isinstance(stack, nn.ModuleList):
                return parent, name, stack
        return None

    def layers(self, model: nn.Module) -> list[nn.Module]:
        """The ``L`` transformer layers in order (index 0 is layer 1)."""
        stack = self._find(self.base_model(model), self.layer_list, "layer list")
        return list(stack)

    def layer(self, model: nn.Module, layer: int) -> nn.Module:
        """Transformer layer ``layer`` (1-based, as in DESIGN.md)."""
        layers = self.layers(model)
        _check_layer(layer, len(layers))
        return layers[layer - 1]

    def attention_output(self, model: nn.Module, layer: int) -> nn.Linear:
        """The attention output projection of layer ``layer`` (1-based).

        Its input is the concatenated per-head context ``(n_examples, seq_len, n_heads * head_dim)``;
        head ``h`` owns input columns ``h * head_dim : (h + 1) * head_dim``.
        """
        found = self._find(self.layer(model, layer), self.attention_output_paths, "attention output")
        return self._linear(found, "attention output")

    def ffn(self, model: nn.Module, layer: int) -> FFNParts:
        """The FFN sublayer of layer ``layer`` (1-based); see :class:`FFNParts`."""
        owner = self.layer(model, layer)
        up_name, up = self._find_named(owner, self.ffn_up_paths, "FFN up projection")
        down_name, down = self._find_named(owner, self.ffn_down_paths, "FFN down projection")
        norm_name, norm = self._find_named(owner, self.ffn_norm_paths, "FFN LayerNorm")
        return FFNParts(
            owner=owner,
            up=self._linear(up, "FFN up projection"),
            down=self._linear(down, "FFN down projection"),
            layer_norm=norm,
            up_name=up_name,
            down_name=down_name,
            layer_norm_name=norm_name,
        )

    def classifier_head(self, model: nn.Module) -> nn.ModuleDict | None:
        """The task head of a task model, ``None`` for a base model.

        Returns:
            A ``ModuleDict`` of the head's parts in data-flow order (e.g. ``pooler`` then
            ``classifier`` for BERT), holding the model's own modules (not copies), or ``None`` when the
            model has no classifier.
        """
        model = _unwrap_peft(model)
        base = self.base_model(model)
        if base is model:
            return None
        task = {p: m for p in self.task_head_parts if (m := _get_path(model, p)) is not None}
        if not task:
            return None
        parts = {p: m for p in self.base_head_parts if (m := _get_path(base, p)) is not None}
        parts.update(task)
        return nn.ModuleDict({name.replace(".", "_"): module for name, module in parts.items()})

    def shared_layers(self) -> bool:
        """Whether several layer positions share one module (ALBERT)."""
        return False

    # -- helpers --------------------------------------------------------------------------------
    def _find(self, root: nn.Module, paths: tuple[str, ...], what: str) -> Any:
        return self._find_named(root, paths, what)[1]

    def _find_named(self, root: nn.Module, paths: tuple[str, ...], what: str) -> tuple[str, Any]:
        for path in paths:
            found = _get_path(root, path)
            if found is not None:
                return path, found
        raise UnsupportedArchitectureError(
            f"{self.family} model {type(root).__name__} has no {what} at {' or '.join(paths)}; "
            f"this transformers version may have renamed it: add the new path to the "
            f"{self.family!r} adapter in tunescope.models.adapters"
        )

    def _linear(self, module: Any, what: str) -> nn.Linear:
        if not isinstance(module, nn.Linear):
            raise UnsupportedArchitectureError(
                f"the {self.family} {what} is a {type(module).__name__}, not nn.Linear; "
                "tunescope supports unquantized, unpruned Hugging Face encoders"
            )
        return module


@dataclass(frozen=True)
class SharedLayerAdapter(ArchitectureAdapter):
    """ALBERT-style adapter: ``num_hidden_groups`` layer groups shared across ``L`` positions.

    Position ``i`` (0-based) runs group ``int(i / (L / num_hidden_groups))``, exactly as
    ``AlbertTransformer.forward`` does; each group must hold one layer (``inner_group_num == 1``, true
    of every released ALBERT checkpoint).
    """

    group_list: tuple[str, ...] = ("encoder.albert_layer_groups",)
    group_layers: tuple[str, ...] = ("albert_layers",)

    def validate(self, config: Any) -> None:
        """Refuse ALBERT variants with several layers per group (head gates would be ambiguous)."""
        inner = int(getattr(config, "inner_group_num", 1))
        if inner != 1:
            raise UnsupportedArchitectureError(
                f"ALBERT with inner_group_num={inner} is not supported (each of the L positions would "
                "run several attention blocks); use a checkpoint with inner_group_num=1"
            )

    def layers(self, model: nn.Module) -> list[nn.Module]:
        """The ``L`` layer positions; positions in one group are the *same* module object."""
        config = _config_of(model)
        self.validate(config)
        groups = list(self._find(self.base_model(model), self.group_list, "layer groups"))
        n_layers = self.num_layers(config)
        per_group = n_layers / len(groups)
        result = []
        for i in range(n_layers):
            group = groups[int(i / per_group)]
            result.append(self._find(group, self.group_layers, "group layers")[0])
        return result

    def shared_layers(self) -> bool:
        """Always ``True``: ALBERT repeats its layer modules across depth."""
        return True


def _check_layer(layer: int, n_layers: int) -> None:
    if not 1 <= int(layer) <= n_layers:
        raise InputError(
            f"layer {layer} is out of range; transformer layers are 1..{n_layers} "
            "(0 is the embedding output, which has no attention or FFN)"
        )


_BERT_MLM = ("cls.predictions.",)
_ROBERTA_MLM = ("lm_head.",)

ADAPTERS: Mapping[str, ArchitectureAdapter] = {
    "bert": ArchitectureAdapter(family="bert", base_head_parts=("pooler",), mlm_head_prefixes=_BERT_MLM),
    "roberta": ArchitectureAdapter(family="roberta", mlm_head_prefixes=_ROBERTA_MLM),
    "xlm-roberta": ArchitectureAdapter(family="xlm-roberta", mlm_head_prefixes=_ROBERTA_MLM),
    "electra": ArchitectureAdapter(
        family="electra", mlm_head_prefixes=("generator_lm_head.", "generator_predictions.")
    ),
    "deberta-v2": ArchitectureAdapter(
        family="deberta-v2",
        task_head_parts=("pooler", "classifier"),
        mlm_head_prefixes=("cls.predictions.", "lm_predictions."),
    ),
    "mpnet": ArchitectureAdapter(
        family="mpnet", attention_output_paths=("attention.attn.o",), mlm_head_prefixes=_ROBERTA_MLM
    ),
    "distilbert": ArchitectureAdapter(
        family="distilbert",
        layer_list=("transformer.layer",),
        attention_output_paths=("attention.out_lin",),
        ffn_up_paths=("ffn.lin1",),
        ffn_down_paths=("ffn.lin2",),
        ffn_norm_paths=("output_layer_norm",),
        task_head_parts=("pre_classifier", "classifier"),
        mlm_head_prefixes=("vocab_projector.", "vocab_transform.", "vocab_layer_norm."),
        intermediate_key="hidden_dim",
    ),
    "albert": SharedLayerAdapter(
        family="albert",
        attention_output_paths=("attention.dense",),
        ffn_up_paths=("ffn",),
        ffn_down_paths=("ffn_output",),
        ffn_norm_paths=("full_layer_layer_norm",),
        base_head_parts=("pooler", "pooler_activation"),
        mlm_head_prefixes=("predictions.",),
    ),
}
"""Adapters keyed by Hugging Face ``config.model_type``."""


def get_adapter(model_or_config: Any) -> ArchitectureAdapter:
    """Look up the adapter of a model, an :class:`~tunescope.models.Encoder` or a config.

    Args:
        model_or_config: A ``PreTrainedModel`` (base or task), an ``Encoder`` or a ``PretrainedConfig``.

    Returns:
        The family's :class:`ArchitectureAdapter`.

    Raises:
        UnsupportedArchitectureError: The ``model_type`` has no adapter (the message lists the
            supported families) or the config uses a variant the adapter cannot handle.

    Example:
        >>> from transformers import BertConfig
        >>> get_adapter(BertConfig()).family
        'bert'
    """
    adapter = getattr(model_or_config, "adapter", None)
    if isinstance(adapter, ArchitectureAdapter):
        return adapter
    config = _config_of(model_or_config)
    model_type = getattr(config, "model_type", None)
    found = ADAPTERS.get(str(model_type))
    if found is None:
        archs = ", ".join(getattr(config, "architectures", None) or []) or type(config).__name__
        raise UnsupportedArchitectureError(
            f"no architecture adapter for model_type {model_type!r} ({archs}); supported families: "
            f"{', '.join(sorted(ADAPTERS))}"
        )
    found.validate(config)
    return found
