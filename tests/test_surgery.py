"""Model surgery on tiny random models of every family: truncation, export, FFN removal, restore/re-init."""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
import transformers
from torch import nn

from tunescope import surgery
from tunescope.errors import InputError, ModelLoadError
from tunescope.models import Encoder, load_classifier
from tunescope.testing.tiny import FAMILIES, tiny_config, tiny_model

pytestmark = [pytest.mark.models, pytest.mark.usefixtures("one_thread")]

TEXTS = ["a good film", "the story was boring and the acting was even worse", "I loved it!"]


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 rounding of a reordered computation."""
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def _batch(enc: Encoder) -> dict[str, torch.Tensor]:
    return dict(enc.tokenizer(TEXTS, padding=True, return_tensors="pt"))


def _run(enc: Encoder, batch: dict[str, torch.Tensor] | None = None, model: nn.Module | None = None) -> Any:
    with torch.no_grad():
        return (model or enc.model)(**(batch or _batch(enc)), output_hidden_states=True)


def _all_layers(enc: Encoder) -> list[int]:
    return list(range(1, enc.num_layers + 1))


def _ffn_layers(enc: Encoder, layer: int) -> list[int]:
    """The layer set remove_ffn/restore/reinit accept: ``[layer]``, or every layer for shared ALBERT."""
    return _all_layers(enc) if enc.adapter.shared_layers() else [layer]


# the classifier head applied by hand to a sequence of hidden states, per family (eval mode: no dropout)
def _pooler_then_classifier(head: nn.ModuleDict, h: torch.Tensor) -> torch.Tensor:
    return head["classifier"](head["pooler"](h))  # BERT / DeBERTa-v2 poolers read the first token


def _classifier_on_sequence(head: nn.ModuleDict, h: torch.Tensor) -> torch.Tensor:
    return head["classifier"](h)  # RoBERTa-style heads read the first token themselves


def _distilbert_head(head: nn.ModuleDict, h: torch.Tensor) -> torch.Tensor:
    return head["classifier"](torch.relu(head["pre_classifier"](h[:, 0])))


def _albert_head(head: nn.ModuleDict, h: torch.Tensor) -> torch.Tensor:
    return head["classifier"](head["pooler_activation"](head["pooler"](h[:, 0])))


HEAD_BY_HAND: dict[str, Callable[[nn.ModuleDict, torch.Tensor], torch.Tensor]] = {
    "bert": _pooler_then_classifier,
    "deberta-v2": _pooler_then_classifier,
    "roberta": _classifier_on_sequence,
    "xlm-roberta": _classifier_on_sequence,
    "electra": _classifier_on_sequence,
    "mpnet": _classifier_on_sequence,
    "distilbert": _distilbert_head,
    "albert": _albert_head,
}

# where the attention block (attention + its residual LayerNorm) ends inside a layer
ATTENTION_BLOCK: dict[str, str] = {family: "attention" for family in FAMILIES} | {
    "distilbert": "sa_layer_norm"
}


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


# ------------------------------------------------------------------------------------------------
# truncation
# ------------------------------------------------------------------------------------------------
def test_head_by_hand_matches_the_model(family: str) -> None:
    enc = tiny_model(family, task="classifier", num_layers=3)
    out = _run(enc)
    head = surgery.require_classifier(enc)
    _close(HEAD_BY_HAND[family](head, out.hidden_states[-1]), out.logits)


def test_truncate_to_all_layers_changes_nothing(family: str) -> None:
    enc = tiny_model(family, task="classifier", num_layers=3)
    same = surgery.truncate(enc, keep=3)
    assert isinstance(same, Encoder) and same is not enc and same.model is not enc.model
    assert same.num_layers == 3 and same.tokenizer is enc.tokenizer
    torch.testing.assert_close(_run(same).logits, _run(enc).logits, rtol=0, atol=0)


@pytest.mark.parametrize("keep", [1, 2])
def test_truncate_equals_the_head_on_layer_k(family: str, keep: int) -> None:
    enc = tiny_model(family, task="classifier", num_layers=3)
    full = _run(enc)
    params = surgery.count_parameters(enc)
    small = surgery.truncate(enc, keep)
    out = _run(small)
    assert small.num_layers == keep and small.config.num_hidden_layers == keep
    assert len(out.hidden_states) == keep + 1
    for got, want in zip(out.hidden_states, full.hidden_states[: keep + 1], strict=True):
        _close(got, want)
    by_hand = HEAD_BY_HAND[family](surgery.require_classifier(enc), full.hidden_states[keep])
    _close(out.logits, by_hand)
    if enc.adapter.shared_layers():  # ALBERT: the shared layer just runs fewer times
        assert surgery.count_parameters(small) == params
    else:
        assert surgery.count_parameters(small) < params
    # the original is untouched
    assert enc.num_layers == 3 and surgery.count_parameters(enc) == params
    torch.testing.assert_close(_run(enc).logits, full.logits, rtol=0, atol=0)


def test_truncate_a_base_model_and_a_bare_model() -> None:
    enc = tiny_model("bert", num_layers=3)
    full = _run(enc)
    small = surgery.truncate(enc.model, 1)
    assert isinstance(small, transformers.BertModel) and small.config.num_hidden_layers == 1
    _close(_run(enc, model=small).last_hidden_state, full.hidden_states[1])


def test_albert_with_hidden_groups_truncates_whole_runs() -> None:
    config = tiny_config("albert", num_layers=6)
    config.num_hidden_groups = 2  # positions 1-3 run group 0, positions 4-6 group 1
    enc = tiny_model("albert", num_layers=6)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.AlbertModel(config).eval()
    full = _run(enc, model=model)
    small = surgery.truncate(model, 5)
    assert small.config.num_hidden_groups == 2
    _close(_run(enc, model=small).last_hidden_state, full.hidden_states[5])
    small = surgery.truncate(model, 3)
    assert small.config.num_hidden_groups == 1 and len(small.encoder.albert_layer_groups) == 1
    _close(_run(enc, model=small).last_hidden_state, full.hidden_states[3])
    with pytest.raises(InputError, match="whole runs.*1, 2, 3, 5, 6"):
        surgery.truncate(model, 4)


@pytest.mark.parametrize("keep", [0, 4, -1, 1.5, True, "2"])
def test_truncate_refuses_bad_keep(keep: Any) -> None:
    enc = tiny_model("bert", task="classifier", num_layers=3)
    with pytest.raises(InputError, match=r"keep between 1 and 3"):
        surgery.truncate(enc, keep)


def test_require_classifier_refuses_a_base_model() -> None:
    with pytest.raises(
        InputError, match="a truncation sweep needs a model with a classifier head.*load_classifier"
    ):
        surgery.require_classifier(tiny_model("roberta"), "a truncation sweep")


# ------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------
def test_exported_truncation_reloads_with_identical_logits(family: str, tmp_path: pathlib.Path) -> None:
    enc = tiny_model(family, task="classifier", num_layers=3)
    small = surgery.truncate(enc, 2)
    folder = surgery.export(small, tmp_path / "small")
    assert folder == tmp_path / "small" and (folder / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small"]  # no temporary folder left
    want = _run(small).logits
    plain = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert plain.config.num_hidden_layers == 2
    torch.testing.assert_close(_run(small, model=plain).logits, want, rtol=0, atol=0)
    loaded = load_classifier(folder)
    assert loaded.num_layers == 2
    torch.testing.assert_close(_run(loaded).logits, want, rtol=0, atol=0)


def test_export_is_atomic_and_refuses_to_overwrite(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    enc = tiny_model("bert", task="classifier")
    target = tmp_path / "out"
    surgery.export(enc, target)
    with pytest.raises(InputError, match="not empty.*overwrite=True"):
        surgery.export(enc, target)
    small = surgery.truncate(enc, 1)
    surgery.export(small, target, overwrite=True)
    assert transformers.AutoConfig.from_pretrained(target).num_hidden_layers == 1
    with pytest.raises(InputError, match="is a file"):
        surgery.export(enc, target / "config.json")

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(type(enc.tokenizer), "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        surgery.export(enc, tmp_path / "half")
    with pytest.raises(OSError, match="disk full"):
        surgery.export(enc, target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no half folder, no temporaries
    assert transformers.AutoConfig.from_pretrained(target).num_hidden_layers == 1  # the old one survives


# ------------------------------------------------------------------------------------------------
# FFN removal
# ------------------------------------------------------------------------------------------------
@contextmanager
def _hooks(layer: nn.Module, family: str, replace: bool) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Record (attention block output, layer output) at each call of ``layer``.

    With ``replace``, the layer's output is replaced by its attention block's output: the FFN removal
    done by hand on an unmodified model.
    """
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    seen: list[torch.Tensor] = []

    def on_attention(module: nn.Module, args: Any, output: Any) -> None:
        seen.append(_first(output))

    def on_layer(module: nn.Module, args: Any, output: Any) -> Any:
        calls.append((seen[-1], _first(output)))
        if not replace:
            return None
        return (seen[-1], *output[1:]) if isinstance(output, tuple) else seen[-1]

    handles = [
        layer.get_submodule(ATTENTION_BLOCK[family]).register_forward_hook(on_attention),
        layer.register_forward_hook(on_layer),
    ]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def test_remove_ffn_equals_the_computation_by_hand(family: str) -> None:
    enc = tiny_model(family, task="classifier", num_layers=3)
    layers = _ffn_layers(enc, 2)
    original = {k: v.clone() for k, v in enc.model.state_dict().items()}
    removed = surgery.remove_ffn(enc, layers)
    assert surgery.removed_ffn_layers(removed) == layers and removed.config.tunescope_removed_ffn == layers
    assert not surgery.removed_ffn_layers(enc)

    # in the new model the layer's output is its attention block's output
    with _hooks(removed.adapter.layer(removed.model, 2), family, replace=False) as calls:
        got = _run(removed)
    assert len(calls) == len(layers)
    for attention_output, layer_output in calls:
        torch.testing.assert_close(layer_output, attention_output, rtol=0, atol=0)

    # by hand: the unmodified model with that layer's output replaced by its attention block's output
    with _hooks(enc.adapter.layer(enc.model, 2), family, replace=True):
        want = _run(enc)
    _close(got.logits, want.logits)
    for a, b in zip(got.hidden_states, want.hidden_states, strict=True):
        _close(a, b)

    # exactly the FFN's parameters are gone; every other tensor is unchanged; the input is untouched
    parts = enc.adapter.ffn(enc.model, 2)
    ffn_params = sum(p.numel() for m in (parts.up, parts.down, parts.layer_norm) for p in m.parameters())
    assert surgery.count_parameters(enc) - surgery.count_parameters(removed) == ffn_params
    kept = removed.model.state_dict()
    assert set(original) - set(kept) and set(kept) <= set(original)
    for name, tensor in kept.items():
        assert torch.equal(tensor, original[name]), name
    for name, tensor in enc.model.state_dict().items():
        assert torch.equal(tensor, original[name]), name


def test_remove_ffn_survives_save_and_load(family: str, tmp_path: pathlib.Path) -> None:
    enc = tiny_model(family, task="classifier", num_layers=3)
    removed = surgery.remove_ffn(enc, _ffn_layers(enc, 2))
    want = _run(removed).logits
    folder = surgery.export(removed, tmp_path / "m")
    plain = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert plain.config.tunescope_removed_ffn == _ffn_layers(enc, 2)
    assert surgery.apply_saved_surgery(plain) is plain
    assert surgery.count_parameters(plain) == surgery.count_parameters(removed)
    torch.testing.assert_close(_run(enc, model=plain).logits, want, rtol=0, atol=0)
    assert surgery.apply_saved_surgery(plain) is plain  # applying twice changes nothing
    torch.testing.assert_close(_run(enc, model=plain).logits, want, rtol=0, atol=0)


def test_remove_ffn_loads_back_through_tunescope(tmp_path: pathlib.Path) -> None:
    enc = tiny_model("bert", task="classifier", num_layers=3)
    removed = surgery.remove_ffn(enc, [1, 3])
    folder = surgery.export(removed, tmp_path / "m")
    loaded = load_classifier(folder)
    assert surgery.removed_ffn_layers(loaded) == [1, 3]
    torch.testing.assert_close(_run(loaded).logits, _run(removed).logits, rtol=0, atol=0)


def test_remove_ffn_then_truncate_and_train() -> None:
    enc = tiny_model("distilbert", task="classifier", num_layers=3)
    removed = surgery.remove_ffn(surgery.remove_ffn(enc, [3]), [1])  # removals accumulate
    assert surgery.removed_ffn_layers(removed) == [1, 3]
    assert surgery.removed_ffn_layers(surgery.truncate(removed, 2)) == [1]
    removed.model.train()
    loss = removed.model(**_batch(removed), labels=torch.tensor([0, 1, 1])).loss
    loss.backward()
    assert all(p.grad is not None for p in removed.model.parameters())


def test_apply_saved_surgery_without_surgery_and_with_a_corrupt_config() -> None:
    enc = tiny_model("bert", num_layers=2)
    assert surgery.apply_saved_surgery(enc) is enc
    enc.model.config.tunescope_removed_ffn = [3]
    with pytest.raises(ModelLoadError, match="tunescope_removed_ffn.*1..2|out of range"):
        surgery.apply_saved_surgery(enc)


# ------------------------------------------------------------------------------------------------
# restore, re-init, freeze
# ------------------------------------------------------------------------------------------------
def _layer_state(enc: Encoder, layer: int) -> dict[str, torch.Tensor]:
    return enc.adapter.layer(enc.model, layer).state_dict()


def _equal_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_restore_layers_copies_the_base_weights(family: str) -> None:
    tuned = tiny_model(family, task="classifier", num_layers=3, seed=1)
    base = tiny_model(family, num_layers=3, seed=2)
    layers = _ffn_layers(tuned, 2)
    before = {k: v.clone() for k, v in tuned.model.state_dict().items()}
    new = surgery.restore_layers(tuned, base, layers)
    assert isinstance(new, Encoder) and new.model is not tuned.model
    for layer in _all_layers(tuned):
        source = base if layer in layers else tuned
        assert _equal_states(_layer_state(new, layer), _layer_state(source, layer)), layer
    head, tuned_head = surgery.require_classifier(new), surgery.require_classifier(tuned)
    assert _equal_states(head.state_dict(), tuned_head.state_dict())
    embeddings = new.adapter.embeddings(new.model).state_dict()
    assert _equal_states(embeddings, tuned.adapter.embeddings(tuned.model).state_dict())
    assert _equal_states(tuned.model.state_dict(), before)


def test_restore_layers_refuses_other_architectures() -> None:
    tuned = tiny_model("bert", task="classifier", num_layers=3)
    with pytest.raises(InputError, match=r"tuned \(bert, 3 layers.*base \(roberta.*differ"):
        surgery.restore_layers(tuned, tiny_model("roberta", num_layers=3), [1])
    with pytest.raises(InputError, match="bert, 2 layers"):
        surgery.restore_layers(tuned, tiny_model("bert", num_layers=2), [1])
    config = tiny_config("bert", num_layers=3)
    config.intermediate_size = 40
    with pytest.raises(InputError, match="layer 1 differs.*same architecture and size"):
        surgery.restore_layers(tuned, transformers.BertModel(config), [1])
    with pytest.raises(InputError, match="layer 2 differs"):
        surgery.restore_layers(surgery.remove_ffn(tuned, [2]), tiny_model("bert", num_layers=3), [1, 2])


def test_reinit_layers_is_seeded_and_local(family: str) -> None:
    enc = tiny_model(family, num_layers=3)
    layers = _ffn_layers(enc, 2)
    before = {k: v.clone() for k, v in enc.model.state_dict().items()}
    rng = torch.get_rng_state()
    a = surgery.reinit_layers(enc, layers, seed=5)
    assert torch.equal(torch.get_rng_state(), rng)
    b = surgery.reinit_layers(enc, layers, seed=5)
    c = surgery.reinit_layers(enc, layers, seed=6)
    up = [m.adapter.ffn(m.model, 2).up.weight for m in (enc, a, b, c)]
    assert not torch.equal(up[1], up[0]) and torch.equal(up[1], up[2]) and not torch.equal(up[1], up[3])
    assert _equal_states(a.model.state_dict(), b.model.state_dict())
    for layer in set(_all_layers(enc)) - set(layers):
        assert _equal_states(_layer_state(a, layer), _layer_state(enc, layer))
    assert _equal_states(
        a.adapter.embeddings(a.model).state_dict(), enc.adapter.embeddings(enc.model).state_dict()
    )
    assert _equal_states(enc.model.state_dict(), before)
    # the family's own init: N(0, initializer_range) weights, LayerNorm 1 and 0
    std = float(up[1].detach().std())
    assert 0.5 * enc.config.initializer_range < std < 2 * enc.config.initializer_range


def test_freeze_layers_and_embeddings(family: str) -> None:
    enc = tiny_model(family, task="classifier", num_layers=3)
    total = surgery.count_parameters(enc)
    assert surgery.trainable_parameters(enc) == total
    layers = _ffn_layers(enc, 2)
    assert surgery.freeze_layers(enc, layers) is enc
    for layer in _all_layers(enc):
        flags = {p.requires_grad for p in enc.adapter.layer(enc.model, layer).parameters()}
        assert flags == {layer not in layers}
    frozen = sum(p.numel() for p in enc.adapter.layer(enc.model, 2).parameters())
    assert surgery.trainable_parameters(enc) == total - frozen
    surgery.freeze_embeddings(enc)
    assert not any(p.requires_grad for p in enc.adapter.embeddings(enc.model).parameters())
    assert all(p.requires_grad for p in surgery.require_classifier(enc).parameters())
    # nothing below layer 1 is left trainable (ELECTRA/ALBERT project the embeddings to d_model)
    enc.model.train()
    enc.model(**_batch(enc), labels=torch.tensor([0, 1, 1])).loss.backward()
    layer_ids = {
        id(p) for layer in _all_layers(enc) for p in enc.adapter.layer(enc.model, layer).parameters()
    }
    head_ids = {id(p) for p in surgery.require_classifier(enc).parameters()}
    for name, parameter in enc.model.named_parameters():
        if id(parameter) not in layer_ids | head_ids:
            assert not parameter.requires_grad, name


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
LAYER_FUNCTIONS: dict[str, Callable[[Encoder, Any], Any]] = {
    "restore_layers": lambda enc, layers: surgery.restore_layers(enc, enc, layers),
    "reinit_layers": surgery.reinit_layers,
    "freeze_layers": surgery.freeze_layers,
    "remove_ffn": surgery.remove_ffn,
}


@pytest.mark.parametrize("name", sorted(LAYER_FUNCTIONS))
@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([], "no layers given"),
        ([0], "layer 0 is out of range.*1..3"),
        ([1, 4], "layer 4 is out of range"),
        (["2"], "layer '2' is not an integer"),
        ([1.0], "layer 1.0 is not an integer"),
    ],
)
def test_bad_layers(name: str, layers: list[Any], message: str) -> None:
    enc = tiny_model("mpnet", task="classifier", num_layers=3)
    with pytest.raises(InputError, match=f"{name}: {message}"):
        LAYER_FUNCTIONS[name](enc, layers)


@pytest.mark.parametrize("name", sorted(LAYER_FUNCTIONS))
def test_albert_refuses_to_split_the_shared_layer(name: str) -> None:
    enc = tiny_model("albert", task="classifier", num_layers=3)
    with pytest.raises(
        InputError,
        match=rf"{name}: albert layers 1-3 are one shared module.*all of 1-3, e.g. layers=range\(1, 4\)",
    ):
        LAYER_FUNCTIONS[name](enc, [2])
    LAYER_FUNCTIONS[name](enc, [1, 2, 3])  # every position is fine


def test_single_int_layer_and_negative_seed() -> None:
    enc = tiny_model("electra", num_layers=2)
    assert surgery.removed_ffn_layers(surgery.remove_ffn(enc, 2)) == [2]
    with pytest.raises(InputError, match="seed must be a non-negative integer"):
        surgery.reinit_layers(enc, [1], seed=-1)


def test_docs_example_runs(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (pathlib.Path(__file__).parents[1] / "docs" / "surgery.md").read_text(encoding="utf-8")
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code.replace("/tmp/tunescope-doc", str(tmp_path)), "docs/surgery.md", "exec"), {})
    assert capsys.readouterr().out.split() == ["5002", "True", "[2,", "3]"]
