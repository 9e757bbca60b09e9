"""Layer replay: the truncation sweep and the layer ablations from one pass per batch equal evaluating each
cut or ablated model on its own, and run only the layers they must."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
import transformers

from tunescope.data import Examples, get_task
from tunescope.errors import InputError, UnsupportedArchitectureError
from tunescope.inference import predictions
from tunescope.models import from_model
from tunescope.replay import Variant, layers_swapped, replay_predictions, supported
from tunescope.stages import ablation
from tunescope.surgery import count_parameters, reinit_layers, restore_layers, truncate
from tunescope.testing.tiny import tiny_config, tiny_model, tiny_tokenizer
from tunescope.truncation import truncation_sweep

pytestmark = [pytest.mark.models, pytest.mark.usefixtures("one_thread")]

REPLAYED = ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "deberta-v2", "mpnet")
LIMIT, BATCH = 20, 8  # three batches, the last one short


def _lively(encoder, seed):
    """``encoder`` with its matrices redrawn at std 0.2, so that every layer changes the logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in encoder.model.parameters():
            if param.ndim == 2:
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))
    return encoder


def _regressor(family, num_layers=3, seed=1):
    """A tiny one-output head: its predictions are its logits, so equal predictions mean equal logits."""
    return _lively(tiny_model(family, task="classifier", num_labels=1, num_layers=num_layers), seed)


@pytest.fixture(scope="module")
def sentiment():
    return get_task("movie-sentiment")


@pytest.fixture(scope="module")
def examples(sentiment):
    return sentiment.load("validation", limit=LIMIT)


@pytest.fixture(scope="module")
def scores(examples):
    """The same texts with float labels, for the regression heads."""
    labels = np.random.default_rng(0).normal(size=len(examples))
    return Examples(examples.texts, None, labels, "demo", "validation", None)


def _assert_same(got, want):
    torch.testing.assert_close(
        torch.from_numpy(got.predictions), torch.from_numpy(want.predictions), rtol=1e-5, atol=1e-6
    )
    assert np.array_equal(got.labels, want.labels) and np.array_equal(got.groups, want.groups)


# ------------------------------------------------------------------------------------------------
# truncation
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", REPLAYED)
def test_each_cut_from_one_pass_equals_the_truncated_model(family, scores):
    tuned = _regressor(family)
    assert supported(tuned)
    found = replay_predictions(tuned, scores, [Variant(k) for k in (3, 2, 1)], batch_size=BATCH)
    for keep, replayed in zip((3, 2, 1), found, strict=True):
        _assert_same(replayed.predictions, predictions(truncate(tuned, keep), scores, batch_size=BATCH))
        assert replayed.seconds_per_batch > 0
    assert not np.allclose(found[0].predictions.predictions, found[2].predictions.predictions)  # not vacuous
    assert tuned.num_layers == 3 and len(tuned.adapter.layers(tuned.model)) == 3  # the list is put back


def test_deberta_convolution_between_layers_is_the_models_own():
    """DeBERTa-v2 with ``conv_kernel_size`` mixes layer 1's output with the embeddings in the encoder,
    outside the layer module: a cut after layer 1 must still get it."""
    config = tiny_config("deberta-v2", num_layers=3)
    config.conv_kernel_size, config.num_labels = 3, 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.AutoModelForSequenceClassification.from_config(config).eval()
    tuned = _lively(from_model(model, tiny_tokenizer("deberta-v2")), seed=3)
    texts = get_task("movie-sentiment").load("validation", limit=LIMIT).texts
    scores = Examples(texts, None, np.linspace(0, 1, len(texts)), "demo", "validation", None)
    found = replay_predictions(tuned, scores, [Variant(3), Variant(1)], batch_size=BATCH)
    for keep, replayed in zip((3, 1), found, strict=True):
        _assert_same(replayed.predictions, predictions(truncate(tuned, keep), scores, batch_size=BATCH))


@pytest.mark.parametrize("family", ["bert", "distilbert", "albert"])
def test_truncation_sweep_rows_are_the_truncated_models_evaluated(family, examples, sentiment):
    tuned = _lively(tiny_model(family, task="classifier", num_layers=3), seed=1)
    assert supported(tuned) == (family != "albert")  # ALBERT: one cut model at a time
    rows = truncation_sweep(tuned, examples, sentiment, batch_size=BATCH, n_boot=200)
    assert [r["layers_kept"] for r in rows] == [3, 2, 1]
    full = predictions(tuned, examples, batch_size=BATCH)
    for row in rows:
        cut = truncate(tuned, row["layers_kept"])
        found = predictions(cut, examples, batch_size=BATCH)
        value = found.interval("accuracy", n_boot=200)
        delta = full.difference(found, "accuracy", n_boot=200)
        assert (row["value"], row["ci_low"], row["ci_high"]) == (value.value, value.low, value.high)
        assert (row["delta"], row["delta_ci_low"], row["delta_ci_high"]) == (
            delta.value,
            delta.low,
            delta.high,
        )
        assert row["params"] == count_parameters(cut)
        assert row["seconds_per_batch"] > 0


def test_albert_cannot_be_replayed(scores):
    tuned = tiny_model("albert", task="classifier", num_labels=1, num_layers=2)
    assert not supported(tuned)
    with pytest.raises(UnsupportedArchitectureError, match="albert shares layer modules"):
        replay_predictions(tuned, scores, [Variant(1)])
    with pytest.raises(UnsupportedArchitectureError, match="cannot be swapped"):
        with layers_swapped(tuned, []):
            pass


# ------------------------------------------------------------------------------------------------
# ablation
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "deberta-v2", "mpnet"])
def test_each_ablation_from_cached_lower_layers_equals_the_ablated_copy(family, scores):
    tuned = _regressor(family, seed=1)
    base = _lively(tiny_model(family, num_layers=3), seed=2)
    plan = ablation.ablations(3)
    found = ablation._replayed(tuned, base, scores, plan, seed=5, batch_size=BATCH, max_length=128)
    assert len(found) == len(plan)
    for (kind, layers), got in zip(plan, found, strict=True):
        if kind == "none":
            model = tuned
        elif kind == "reinit":
            model = reinit_layers(tuned, layers, seed=5)
        else:
            model = restore_layers(tuned, base, layers)
        _assert_same(got, predictions(model, scores, batch_size=BATCH))
    # all different (restore 3 and restore_top 3 are one model), so the comparison is not vacuous
    assert len({tuple(np.round(f.predictions, 4)) for f in found}) == len(plan) - 1


# ------------------------------------------------------------------------------------------------
# which layers run
# ------------------------------------------------------------------------------------------------
def _count_layer_calls(layer_type):
    """A global forward hook counting calls of every module of ``layer_type`` (by module object)."""
    calls: collections.Counter[int] = collections.Counter()

    def count(module, args, output):
        if type(module) is layer_type:
            calls[id(module)] += 1

    return calls, torch.nn.modules.module.register_module_forward_hook(count)


def test_truncation_runs_each_layer_once_per_batch(examples, sentiment):
    tuned = tiny_model("bert", task="classifier", num_layers=4)
    layers = tuned.adapter.layers(tuned.model)
    calls, handle = _count_layer_calls(type(layers[0]))
    try:
        truncation_sweep(tuned, examples, sentiment, batch_size=BATCH, n_boot=100)
    finally:
        handle.remove()
    n_batches = -(-LIMIT // BATCH)
    # once per batch, plus the untimed warm-up batch; nothing else runs a layer (no truncated copies)
    assert calls == {id(layer): n_batches + 1 for layer in layers}


def test_ablation_runs_each_variant_from_its_lowest_changed_layer(scores):
    tuned, base = _regressor("bert", num_layers=3), tiny_model("bert", num_layers=3)
    layers = tuned.adapter.layers(tuned.model)
    plan = ablation.ablations(3)
    calls, handle = _count_layer_calls(type(layers[0]))
    try:
        ablation._replayed(tuned, base, scores, plan, seed=0, batch_size=BATCH, max_length=128)
    finally:
        handle.remove()
    n_batches = -(-LIMIT // BATCH)
    # the recorded pass runs layers 1..3; ablation S runs layers min(S)..3 (tuned's own where not in S)
    own = [n_batches * (1 + sum(bool(s) and min(s) <= j not in s for _, s in plan)) for j in (1, 2, 3)]
    assert [calls[id(layer)] for layer in layers] == own == [n_batches * n for n in (1, 3, 5)]
    per_batch = 3 + sum(3 - min(s) + 1 for _, s in plan if s)  # 21 layer calls, against 30 for full passes
    assert sum(calls.values()) == n_batches * per_batch == n_batches * 21


# ------------------------------------------------------------------------------------------------
# the model is left as it was
# ------------------------------------------------------------------------------------------------
class _Broken(torch.nn.Module):
    def forward(self, *args, **kwargs):
        raise RuntimeError("broken layer")


def test_layer_list_and_mode_are_put_back_after_an_error(scores):
    tuned = _regressor("bert")
    tuned.model.train()
    stack = tuned.adapter.base_model(tuned.model).encoder.layer
    before = [id(m) for m in stack]
    with pytest.raises(RuntimeError, match="broken layer"):
        replay_predictions(tuned, scores, [Variant(1, (_Broken(),))], batch_size=BATCH)
    after = tuned.adapter.base_model(tuned.model).encoder.layer
    assert after is stack and [id(m) for m in after] == before
    assert tuned.model.training and all(m.training for m in tuned.model.modules())


@pytest.mark.parametrize("variant", [Variant(0), Variant(4), Variant(2, (torch.nn.Identity(),) * 2)])
def test_variants_with_the_wrong_depth_are_refused(variant, scores):
    with pytest.raises(InputError, match="1..3 in all|replays 0..3"):
        replay_predictions(_regressor("bert"), scores, [variant])
