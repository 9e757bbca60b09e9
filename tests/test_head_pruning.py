"""Physical head pruning on tiny random models of every family: equal to masking, smaller, saved, checked."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import torch
import transformers
from torch import nn

import tunescope.models
from tunescope import surgery
from tunescope.errors import InputError, ModelLoadError
from tunescope.models import Encoder, HeadGates, from_model, load_classifier, load_encoder, mask_heads
from tunescope.models.head_pruning import PRUNED_HEADS_KEY, parse_heads
from tunescope.testing.tiny import FAMILIES, tiny_config, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.models

TEXTS = ["a good film", "the story was boring and the acting was even worse", "I loved it!"]
N_LAYERS, N_HEADS, D_MODEL, HEAD_DIM = 3, 4, 32, 8
TF4 = transformers.__version__.startswith("4.")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _logits(enc: Encoder, model: nn.Module | None = None) -> torch.Tensor:
    """The logits and, after them, the last layer's hidden states (O(1) values, unlike tiny logits)."""
    batch = dict(enc.tokenizer(TEXTS, padding=True, return_tensors="pt"))
    with torch.no_grad():
        out = (model or enc.model)(**batch, output_hidden_states=True)
    return torch.cat([out.logits.flatten(), out.hidden_states[-1].flatten()])


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def _plan(family: str) -> dict[int, list[int]]:
    """Heads to prune: uneven per layer; ALBERT (one shared layer) the same set in every layer."""
    if family == "albert":
        return {layer: [1, 3] for layer in range(1, N_LAYERS + 1)}
    return {1: [0, 2], 2: [3], 3: [1, 2, 3]}


def _pairs(plan: Mapping[int, list[int]]) -> list[tuple[int, int]]:
    return [(layer, head) for layer, heads in plan.items() for head in heads]


def _masked(enc: Encoder, plan: Mapping[int, list[int]]) -> torch.Tensor:
    with mask_heads(enc, _pairs(plan)):
        return _logits(enc)


def _classifier(family: str, attn: str | None = None, **config: Any) -> Encoder:
    """A tiny classifier; ``config`` entries change the family's tiny config."""
    if not config:
        return tiny_model(family, task="classifier", num_layers=N_LAYERS, attn_implementation=attn)
    cfg = tiny_config(family, num_layers=N_LAYERS)
    for key, value in config.items():
        setattr(cfg, key, value)
    cfg.num_labels = 2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.AutoModelForSequenceClassification.from_config(cfg)
    return from_model(model.eval(), tiny_tokenizer(family))


def _sdpa_or_skip(family: str) -> Encoder:
    try:
        enc = _classifier(family, "sdpa")
    except (ValueError, ImportError) as exc:  # the family has no sdpa attention in this version
        pytest.skip(f"{family} has no sdpa attention here: {exc}")
    if enc.config._attn_implementation != "sdpa":
        pytest.skip(f"{family} fell back to {enc.config._attn_implementation}")
    return enc


def _removed_per_head(n_row_projections: int = 3) -> int:
    """Parameters of one head: ``head_dim`` rows (+ bias) of each row projection and columns of W_O."""
    return n_row_projections * (HEAD_DIM * D_MODEL + HEAD_DIM) + D_MODEL * HEAD_DIM


# ------------------------------------------------------------------------------------------------
# pruned == masked, parameter counts
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_logits_equal_masked_logits(family: str, attn: str) -> None:
    enc = _classifier(family, "eager") if attn == "eager" else _sdpa_or_skip(family)
    plan = _plan(family)
    before = [p.detach().clone() for p in enc.model.parameters()]
    small = surgery.prune_heads(enc, plan)
    assert isinstance(small, Encoder) and small.tokenizer is enc.tokenizer and small.model is not enc.model
    masked = _masked(enc, plan)
    assert not torch.allclose(masked, _logits(enc), atol=1e-3)  # the heads matter, so this can fail
    _close(_logits(small), masked)
    assert all(torch.equal(a, b) for a, b in zip(before, enc.model.parameters(), strict=True))  # input kept
    # each removed head's parameters go, exactly (ALBERT's shared layer counts its two heads once)
    n_removed = 2 if family == "albert" else len(_pairs(plan))
    assert surgery.count_parameters(enc) - surgery.count_parameters(small) == n_removed * _removed_per_head()
    assert surgery.pruned_heads(small) == plan and surgery.pruned_heads(enc) == {}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_layer_without_heads_computes_what_masking_all_its_heads_computes(family: str) -> None:
    enc = _classifier(family)
    plan = (
        {layer: [0, 1, 2, 3] for layer in range(1, N_LAYERS + 1)}
        if family == "albert"
        else {1: [1], 2: [0, 1, 2, 3]}
    )
    with pytest.raises(InputError, match="every head of layer"):
        surgery.prune_heads(enc, plan)
    small = surgery.prune_heads(enc, plan, allow_empty_layers=True)
    _close(_logits(small), _masked(enc, plan))
    n_removed = 4 if family == "albert" else 5
    assert surgery.count_parameters(enc) - surgery.count_parameters(small) == n_removed * _removed_per_head()


def test_deberta_separate_position_projections_are_sliced_too() -> None:
    enc = _classifier("deberta-v2", share_att_key=False)
    plan = {1: [0], 3: [2, 3]}
    small = surgery.prune_heads(enc, plan)
    _close(_logits(small), _masked(enc, plan))
    # query, key, value, pos_key_proj and pos_query_proj rows, and W_O columns
    assert surgery.count_parameters(enc) - surgery.count_parameters(small) == 3 * _removed_per_head(5)


def test_pruning_twice_composes_with_original_head_indices() -> None:
    enc = _classifier("bert")
    once = surgery.prune_heads(surgery.prune_heads(enc, {1: [0]}), {1: [2], 2: [1]})
    both = surgery.prune_heads(enc, {1: [0, 2], 2: [1]})
    assert surgery.pruned_heads(once) == {1: [0, 2], 2: [1]}
    _close(_logits(once), _logits(both))
    _close(_logits(once), _masked(enc, {1: [0, 2], 2: [1]}))
    again = surgery.prune_heads(once, ["layer.1.head.0"])  # already gone: a no-op
    assert surgery.count_parameters(again) == surgery.count_parameters(once)


def test_location_names_pairs_and_bare_models_work() -> None:
    enc = _classifier("roberta")
    by_name = surgery.prune_heads(enc, ["layer.1.head.3", "layer.3.head.0"])
    by_pair = surgery.prune_heads(enc.model, [(1, 3), (3, 0)])
    assert isinstance(by_pair, transformers.PreTrainedModel)
    _close(_logits(by_name), _logits(enc, by_pair))


def test_state_dict_is_full_size_and_loads_back_either_way() -> None:
    enc = _classifier("bert")
    small = surgery.prune_heads(enc, {2: [0, 3]})
    state = small.model.state_dict()
    assert state.keys() == enc.model.state_dict().keys()
    assert all(state[k].shape == v.shape for k, v in enc.model.state_dict().items())
    query = state["bert.encoder.layer.1.attention.self.query.weight"]
    assert not query[:HEAD_DIM].any() and query[HEAD_DIM : 3 * HEAD_DIM].any()
    # the full-size state dict loads into the pruned model (sliced on the way in) ...
    copy = surgery.prune_heads(enc, {2: [0, 3]})
    with torch.no_grad():
        for p in copy.model.parameters():
            p.zero_()
    copy.model.load_state_dict(state)
    _close(_logits(copy), _logits(small))
    # ... and into an unpruned one, which then computes the pruned model's function
    plain = _classifier("bert")
    plain.model.load_state_dict(state)
    _close(_logits(plain), _logits(small))


def test_head_gates_refuse_a_pruned_model() -> None:
    small = surgery.prune_heads(_classifier("distilbert"), {1: [2]})
    with pytest.raises(InputError, match="pruned"), HeadGates(small):
        pass


# ------------------------------------------------------------------------------------------------
# saved and loaded
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_exported_pruned_model_loads_back_small_with_the_same_logits(
    family: str, tmp_path: pathlib.Path
) -> None:
    enc = _classifier(family)
    plan = _plan(family) if family == "albert" else {1: [0, 2], 2: [0, 1, 2, 3]}
    small = surgery.prune_heads(enc, plan, allow_empty_layers=True)
    folder = surgery.export(small, tmp_path / "pruned")
    saved = json.loads((folder / "config.json").read_text())
    assert saved[PRUNED_HEADS_KEY] == {str(k): v for k, v in plan.items()}
    loaded = load_classifier(folder)
    _close(_logits(loaded), _logits(small))
    assert surgery.count_parameters(loaded) == surgery.count_parameters(small)
    assert surgery.pruned_heads(loaded) == plan
    base = load_encoder(folder)  # the encoder alone is pruned the same way
    assert _layer_parameters(base) == _layer_parameters(small) < _layer_parameters(enc)
    # plain transformers builds full-size modules, loads the zero slices and computes the same
    plain = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    _close(_logits(enc, plain), _logits(small))
    # exported again after loading: the record survives
    again = load_classifier(surgery.export(loaded, tmp_path / "again"))
    _close(_logits(again), _logits(small))


def _layer_parameters(enc: Encoder) -> int:
    return surgery.count_parameters(nn.ModuleList(enc.adapter.layers(enc.model)))


def _damage(folder: pathlib.Path, value: Any) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config[PRUNED_HEADS_KEY] = value
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("1:0", "expected a mapping"),
        ({"7": [0]}, "out of range"),
        ({"1": [4]}, r"heads 0\.\.3"),
        ({"1": [0, 0]}, "named twice"),
        ({"one": [0]}, "not a layer number"),
        ({"1": 0}, "expected a list"),
        ({"1": [1]}, "not zero"),  # names a head whose weights are intact: not this model's record
    ],
)
def test_damaged_record_is_a_clear_load_error(tmp_path: pathlib.Path, value: Any, match: str) -> None:
    folder = surgery.export(surgery.prune_heads(_classifier("bert"), {1: [0]}), tmp_path / "m")
    _damage(folder, value)
    with pytest.raises(ModelLoadError, match=match) as info:
        load_classifier(folder)
    assert "config.json" in str(info.value)


def test_damaged_albert_record_that_splits_the_shared_layer(tmp_path: pathlib.Path) -> None:
    folder = surgery.export(surgery.prune_heads(_classifier("albert"), _plan("albert")), tmp_path / "m")
    _damage(folder, {"1": [1, 3], "2": [1, 3]})
    with pytest.raises(ModelLoadError, match="shared attention module"):
        load_classifier(folder)


@pytest.mark.skipif(not TF4, reason="transformers 4.x's own prune_heads / config.pruned_heads")
def test_a_model_pruned_by_transformers_4_is_read_and_re_exported(tmp_path: pathlib.Path) -> None:
    enc = _classifier("bert")
    native = _classifier("bert")
    native.model.prune_heads({0: [1]})  # 0-based layer, as transformers counts
    assert surgery.pruned_heads(native) == {1: [1]}
    small = surgery.prune_heads(native, {1: [2], 3: [0]})
    assert surgery.pruned_heads(small) == {1: [1, 2], 3: [0]} and not small.config.pruned_heads
    _close(_logits(small), _masked(enc, {1: [1, 2], 3: [0]}))
    loaded = load_classifier(surgery.export(small, tmp_path / "m"))
    _close(_logits(loaded), _logits(small))


# ------------------------------------------------------------------------------------------------
# bad requests
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("heads", "match"),
    [
        ({4: [0]}, r"layers are 1\.\.3, heads 0\.\.3"),
        ({0: [0]}, "out of range"),
        ({1: [4]}, r"heads 0\.\.3"),
        ({1: [-1]}, "out of range"),
        ({1: [0, 0]}, "named twice"),
        (["layer.1.head.2", "layer.1.head.2"], "named twice"),
        (["layer.1.head"], "not a head location"),
        (["layer.x.head.1"], "not a head location"),
        ("layer.3.ffn", "not a head location"),
        ([(1, 2, 3)], "not a head"),
        ({1: ["0"]}, "not integers"),
        ({True: [0]}, "not integers"),
        ({}, "no heads given"),
        ([], "no heads given"),
        (42, "must be a mapping"),
    ],
)
def test_bad_head_requests_are_one_clear_input_error(heads: Any, match: str) -> None:
    enc = _classifier("bert")
    with pytest.raises(InputError, match=match):
        surgery.prune_heads(enc, heads)


def test_albert_refuses_different_heads_per_position_and_points_to_masking() -> None:
    enc = _classifier("albert")
    with pytest.raises(InputError, match="mask_heads"):
        surgery.prune_heads(enc, {1: [0]})
    with pytest.raises(InputError, match="shared attention module"):
        surgery.prune_heads(enc, {1: [0], 2: [0], 3: [1]})


def test_parse_heads_sorts_and_groups() -> None:
    assert parse_heads({3: [2, 0], 1: [1]}, 3, 4, "t") == {1: [1], 3: [0, 2]}
    assert parse_heads([" layer.2.head.1 ", (2, 0)], 3, 4, "t") == {2: [0, 1]}


def test_models_exports_the_record_and_surgery_reexports_it() -> None:
    assert surgery.PRUNED_HEADS_KEY == tunescope.models.PRUNED_HEADS_KEY == PRUNED_HEADS_KEY
    assert surgery.pruned_heads is tunescope.models.pruned_heads
