"""Tiny random encoders of every supported family, built offline in milliseconds.

Each model has ``d_model = 32``, 4 heads, ``d_ff = 37`` (odd, so shape bugs show), 2 layers by default
and a vocabulary that matches :func:`tiny_tokenizer`, a small lowercase WordPiece tokenizer made in
memory (special tokens, ~200 common English words, letters, digits, punctuation and ``##`` letter
continuations, so any ASCII text tokenizes). Nothing is downloaded and no global RNG state changes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Literal

import torch
import transformers
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from tunescope.models.loading import Encoder, from_model

__all__ = ["FAMILIES", "save_model", "tiny_config", "tiny_model", "tiny_tokenizer"]

FAMILIES: tuple[str, ...] = (
    "bert",
    "roberta",
    "xlm-roberta",
    "albert",
    "distilbert",
    "electra",
    "deberta-v2",
    "mpnet",
)
"""Families with an architecture adapter, as HF ``model_type`` names."""

HIDDEN, HEADS, INTERMEDIATE, MAX_POSITIONS = 32, 4, 37, 130

_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_WORDS = """
the a an and or but not no is are was were be been it this that these those i you he she we they
me him her us them my your his its our their of to in on at by for with from as into about than then
so very too more most much many some any all each one two three four five six seven eight nine ten
good bad great terrible awful excellent best worst better worse fine nice poor boring fun funny sad
love loved hate hated like liked enjoy enjoyed film films movie movies story plot actor actors acting
director scene scenes script character characters music ending time times year years day people man
woman world life work way thing things what who how why when where which there here just only even
also still never ever always again well really quite rather pretty little big long short new old first
last do does did done have has had make made see seen watch watched think thought feel felt know
say said get got go going come take give find look seems seem can could will would should may might
must news sport sports business politics technology government market company game team play player
""".split()
_PUNCT = list(".,!?;:'\"()-/&%$#@*+=<>[]{}_")


def _vocab() -> dict[str, int]:
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    digits = [str(d) for d in range(10)]
    tokens = [*_SPECIAL, *letters, *digits, *_PUNCT]
    tokens += [f"##{t}" for t in letters + digits]
    tokens += [w for w in dict.fromkeys(_WORDS) if w not in tokens]
    return {token: i for i, token in enumerate(tokens)}


# inputs each family's forward accepts (MPNet, DistilBERT and RoBERTa-style tokenizers send no segments)
_INPUT_NAMES: dict[str, list[str]] = {
    "bert": ["input_ids", "token_type_ids", "attention_mask"],
    "albert": ["input_ids", "token_type_ids", "attention_mask"],
    "electra": ["input_ids", "token_type_ids", "attention_mask"],
    "deberta-v2": ["input_ids", "token_type_ids", "attention_mask"],
    "roberta": ["input_ids", "attention_mask"],
    "xlm-roberta": ["input_ids", "attention_mask"],
    "distilbert": ["input_ids", "attention_mask"],
    "mpnet": ["input_ids", "attention_mask"],
}


def tiny_tokenizer(family: str = "bert") -> transformers.PreTrainedTokenizerFast:
    """A small lowercase WordPiece tokenizer built in memory (BERT-style ``[CLS] a [SEP] b [SEP]``).

    Args:
        family: Sets ``model_input_names`` to what that family's forward accepts.

    Returns:
        A ``PreTrainedTokenizerFast`` with ``[PAD]`` = 0, ``model_max_length`` = 128.

    Example:
        >>> tok = tiny_tokenizer()
        >>> tok.convert_ids_to_tokens(tok("A good film")["input_ids"])
        ['[CLS]', 'a', 'good', 'film', '[SEP]']
    """
    _check_family(family)
    vocab = _vocab()
    core = Tokenizer(WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    core.decoder = decoders.WordPiece(prefix="##")
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=MAX_POSITIONS - 2,
        model_input_names=list(_INPUT_NAMES[family]),
    )


def _common(num_layers: int, vocab_size: int) -> dict[str, Any]:
    return {
        "vocab_size": vocab_size,
        "hidden_size": HIDDEN,
        "num_attention_heads": HEADS,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": num_layers,
        "max_position_embeddings": MAX_POSITIONS,
        "pad_token_id": 0,
    }


def _distilbert(num_layers: int, vocab_size: int) -> Any:
    return transformers.DistilBertConfig(
        vocab_size=vocab_size,
        dim=HIDDEN,
        n_heads=HEADS,
        hidden_dim=INTERMEDIATE,
        n_layers=num_layers,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=0,
    )


def _deberta(num_layers: int, vocab_size: int) -> Any:
    # DeBERTa-v3 style: relative (disentangled) attention, no absolute positions
    v3: dict[str, Any] = {
        "relative_attention": True,
        "position_buckets": 16,
        "max_relative_positions": -1,
        "pos_att_type": ["p2c", "c2p"],
        "position_biased_input": False,
        "norm_rel_ebd": "layer_norm",
        "share_att_key": True,
        "type_vocab_size": 0,
    }
    return transformers.DebertaV2Config(**_common(num_layers, vocab_size), **v3)


_CONFIGS: dict[str, Callable[[int, int], Any]] = {
    "bert": lambda n, v: transformers.BertConfig(**_common(n, v)),
    "roberta": lambda n, v: transformers.RobertaConfig(**_common(n, v), type_vocab_size=1),
    "xlm-roberta": lambda n, v: transformers.XLMRobertaConfig(**_common(n, v), type_vocab_size=1),
    "albert": lambda n, v: transformers.AlbertConfig(**_common(n, v), embedding_size=16),
    "distilbert": _distilbert,
    "electra": lambda n, v: transformers.ElectraConfig(**_common(n, v), embedding_size=16),
    "deberta-v2": _deberta,
    "mpnet": lambda n, v: transformers.MPNetConfig(**_common(n, v)),
}


def _check_family(family: str) -> None:
    if family not in _CONFIGS:
        from tunescope.errors import UnknownNameError

        raise UnknownNameError("family", family, _CONFIGS)


def tiny_config(family: str, *, num_layers: int = 2, vocab_size: int | None = None) -> Any:
    """The tiny random config of one family (``d_model`` 32, 4 heads, ``d_ff`` 37).

    Args:
        family: One of :data:`FAMILIES`.
        num_layers: Number of transformer layers.
        vocab_size: Embedding rows; default: the size of :func:`tiny_tokenizer`.
    """
    _check_family(family)
    return _CONFIGS[family](num_layers, len(_vocab()) if vocab_size is None else vocab_size)


def tiny_model(
    family: str,
    *,
    task: Literal["base", "classifier"] = "base",
    num_labels: int = 2,
    num_layers: int = 2,
    seed: int = 0,
    attn_implementation: str | None = None,
) -> Encoder:
    """A tiny randomly initialised encoder of ``family`` with a matching in-memory tokenizer.

    The model is in eval mode (dropout off); weights depend only on ``family``, ``task``, the sizes
    and ``seed`` (the global RNG state is saved and restored around initialisation).

    Args:
        family: One of :data:`FAMILIES`.
        task: ``"base"`` for ``AutoModel``, ``"classifier"`` for ``AutoModelForSequenceClassification``.
        num_labels: Classifier outputs (``task="classifier"`` only).
        num_layers: Number of transformer layers ``L``.
        seed: Seed of the weight initialisation.
        attn_implementation: ``"eager"`` to get attention weights; ``None`` keeps the default.

    Returns:
        An :class:`~tunescope.models.Encoder` named ``tiny-<family>``.

    Example:
        >>> enc = tiny_model("albert", task="classifier", num_labels=3)
        >>> batch = enc.tokenizer(["a good film", "bad"], padding=True, return_tensors="pt")
        >>> enc.model(**batch).logits.shape
        torch.Size([2, 3])
    """
    tokenizer = tiny_tokenizer(family)
    config = tiny_config(family, num_layers=num_layers, vocab_size=len(tokenizer))
    auto: Any = transformers.AutoModel
    if task == "classifier":
        config.num_labels = num_labels
        auto = transformers.AutoModelForSequenceClassification
    elif task != "base":
        from tunescope.errors import UnknownNameError

        raise UnknownNameError("task", task, ("base", "classifier"))
    kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto.from_config(config, **kwargs)
    model.eval()
    return from_model(model, tokenizer, name=f"tiny-{family}")


def save_model(encoder: Encoder, folder: str | os.PathLike[str]) -> str:
    """Save ``encoder``'s model and tokenizer as a Hugging Face folder, as a user's checkpoint would be.

    Returns the folder as a string, ready for ``load_encoder``, ``AnalyzeConfig(model=...)`` or the CLI.
    """
    encoder.model.save_pretrained(folder)
    encoder.tokenizer.save_pretrained(folder)
    return str(folder)
