"""Head importance, objectives, pruning curves and coherence (tunescope.heads) on tiny models."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch
import transformers

from tunescope import heads
from tunescope.data import Examples
from tunescope.data.tokens import TokenExamples
from tunescope.errors import CacheError, DataError, InputError, UnknownNameError
from tunescope.heads import (
    FITTED_LABEL,
    coherence,
    fit_mlm_head,
    head_importance,
    head_importance_batches,
    normalize_by_layer,
    objective_label,
    prune_curve,
)
from tunescope.models import Encoder, HeadGates, from_model, load_classifier, load_encoder
from tunescope.testing.reference_heads import ablation_importance, finite_difference_importance, task_loss
from tunescope.testing.tiny import FAMILIES, save_model, tiny_config, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

TF4 = transformers.__version__ < "5"
TEXTS = [
    "a good film",
    "the story was boring and the acting was even worse",
    "I loved it!",
    "not bad, but the ending made no sense at all",
    "great music",
    "the worst movie of the year",
]


def _examples(texts: list[str] = TEXTS, labels: bool = True) -> Examples:
    y = np.arange(len(texts)) % 2 if labels else None
    return Examples(list(texts), None, y, "demo", "test", ("neg", "pos") if labels else None)


def _hidden(enc: Encoder, texts: list[str]) -> torch.Tensor:
    batch = enc.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return enc.model(**batch).last_hidden_state


# ------------------------------------------------------------------------------------------------
# gates
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_all_ones_gates_leave_outputs_unchanged(family: str) -> None:
    enc = tiny_model(family)
    reference = _hidden(enc, TEXTS[:3])
    with HeadGates(enc, torch.ones(enc.num_layers, enc.num_heads, requires_grad=True)):
        torch.testing.assert_close(_hidden(enc, TEXTS[:3]), reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_gate_equals_zeroing_the_context_slice_by_hand(family: str) -> None:
    enc = tiny_model(family)
    layer, head, d = 2, 1, enc.head_dim
    gates = torch.ones(enc.num_layers, enc.num_heads)
    shared = enc.adapter.shared_layers()
    if shared:  # one projection serves every layer: zero the head in all of them
        gates[:, head] = 0.0
    else:
        gates[layer - 1, head] = 0.0
    with HeadGates(enc, gates):
        gated = _hidden(enc, TEXTS[:3])

    def zero_slice(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = args[0].clone()
        x[..., head * d : (head + 1) * d] = 0.0
        return (x, *args[1:])

    proj = enc.adapter.attention_output(enc.model, layer)
    handle = proj.register_forward_pre_hook(zero_slice)
    try:
        by_hand = _hidden(enc, TEXTS[:3])
    finally:
        handle.remove()
    assert not torch.allclose(gated, _hidden(enc, TEXTS[:3]), atol=1e-4)
    torch.testing.assert_close(gated, by_hand, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# importance against references
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["bert", "albert"])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_importance_equals_finite_differences(family: str, batch_size: int) -> None:
    enc = tiny_model(family, task="classifier")
    enc.model.double()
    ex = _examples()
    result = head_importance_batches(enc, ex, normalize=False, batch_size=batch_size, progress=False)
    assert result.n_batches == -(-len(ex) // batch_size)
    assert sorted(i for b in result.batch_indices for i in b) == list(range(len(ex)))
    expected = finite_difference_importance(enc, result.batch_indices, task_loss(ex))
    torch.testing.assert_close(result.raw, expected, rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(result.scores, result.raw)
    # the token normalisation: the sum of |gradients| over the number of non-padding tokens
    tokens = sum(len(ids) for ids in enc.tokenizer(ex.texts)["input_ids"])
    assert float(result.batch_tokens.sum()) == tokens


def test_importance_under_a_mask_equals_finite_differences_there() -> None:
    enc = tiny_model("distilbert", task="classifier")
    enc.model.double()
    ex = _examples()
    mask = torch.ones(2, 4)
    mask[0, 1] = mask[1, 3] = 0.0
    result = head_importance_batches(enc, ex, normalize=False, gates=mask, batch_size=3, progress=False)
    expected = finite_difference_importance(enc, result.batch_indices, task_loss(ex), at=mask)
    torch.testing.assert_close(result.raw, expected, rtol=1e-6, atol=1e-10)


def test_normalized_rows_have_unit_norm_and_keep_the_ranking_within_a_layer() -> None:
    enc = tiny_model("bert", task="classifier", num_layers=3)
    ex = _examples()
    raw = head_importance(enc, ex, normalize=False, progress=False)
    scores = head_importance(enc, ex, progress=False)
    torch.testing.assert_close(scores, raw / raw.norm(dim=1, keepdim=True))
    torch.testing.assert_close(scores.norm(dim=1), torch.ones(3, dtype=torch.float64))
    assert normalize_by_layer(torch.zeros(2, 3)).abs().sum() == 0


def test_scoring_leaves_parameters_grads_and_mode_alone() -> None:
    enc = tiny_model("roberta", task="classifier")
    ex = _examples()
    expected = head_importance(enc, ex, progress=False)
    enc.model.train()  # dropout on: importance is still computed in eval mode
    enc.model.classifier.dense.weight.requires_grad_(False)
    again = head_importance(enc, ex, progress=False)
    torch.testing.assert_close(again, expected)
    assert enc.model.training and enc.model.roberta.encoder.training
    assert all(p.grad is None for p in enc.model.parameters())
    frozen = {n for n, p in enc.model.named_parameters() if not p.requires_grad}
    assert frozen == {"classifier.dense.weight"}


def test_ablation_ranks_like_gradient_on_a_planted_model() -> None:
    enc, ex = _planted()
    scores = head_importance(enc, ex, normalize=False, batch_size=4, progress=False)
    enc.model.double()
    ablation = ablation_importance(enc, [list(range(len(ex)))], task_loss(ex))
    dead = scores.reshape(-1) == 0
    assert int(dead.sum()) == 9  # the planted dead heads: no gradient and no effect when removed
    assert torch.all(ablation.reshape(-1)[dead].abs() < 1e-12)
    assert torch.all(ablation.reshape(-1)[~dead].abs() > 1e-6)


@pytest.mark.skipif(not TF4, reason="transformers 5 ignores head_mask; this compares with its gradient")
@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "albert"])
def test_importance_equals_native_head_mask_gradient(family: str) -> None:
    enc = tiny_model(family, task="classifier", attn_implementation="eager")
    ex = _examples()
    result = head_importance_batches(enc, ex, normalize=False, batch_size=4, progress=False)
    total = torch.zeros(enc.num_layers, enc.num_heads, dtype=torch.float64)
    tokens = 0
    for indices in result.batch_indices:
        batch = enc.tokenizer([ex.texts[i] for i in indices], padding=True, return_tensors="pt")
        head_mask = torch.ones(enc.num_layers, enc.num_heads, requires_grad=True)
        labels = torch.as_tensor(ex.labels[list(indices)])
        loss = enc.model(**batch, labels=labels, head_mask=head_mask).loss
        (grad,) = torch.autograd.grad(loss, head_mask)
        total += grad.abs().double()
        tokens += int(batch["attention_mask"].sum())
    torch.testing.assert_close(result.raw, total / tokens, rtol=1e-5, atol=1e-5)


def test_token_classifier_task_objective() -> None:
    tokenizer = tiny_tokenizer("bert")
    config = tiny_config("bert", vocab_size=len(tokenizer))
    config.num_labels = 3
    torch.manual_seed(0)
    model = transformers.AutoModelForTokenClassification.from_config(config).eval()
    enc = from_model(model, tokenizer)
    ex = TokenExamples([["a", "good", "film"], ["bad"]], [[0, 1, 2], [1]], ("D", "A", "N"), "pos", "test")
    enc.model.double()
    result = head_importance_batches(enc, ex, normalize=False, batch_size=1, progress=False)
    assert result.raw.shape == (2, 4) and bool((result.raw > 0).all())
    with pytest.raises(InputError, match="sequence-level"):
        head_importance(enc, _examples(), progress=False)


# ------------------------------------------------------------------------------------------------
# objectives: errors
# ------------------------------------------------------------------------------------------------
def test_unknown_objective_lists_the_valid_names() -> None:
    with pytest.raises(UnknownNameError, match="kl, mlm, task"):
        head_importance(tiny_model("bert", task="classifier"), _examples(), "loss", progress=False)
    with pytest.raises(UnknownNameError, match="rank_by"):
        prune_curve(tiny_model("bert", task="classifier"), _examples(), rank_by="size", progress=False)


def test_task_objective_refuses_a_model_without_trained_head(tmp_path: pathlib.Path) -> None:
    with pytest.raises(InputError, match="classifier head"):
        head_importance(tiny_model("bert"), _examples(), progress=False)
    folder = save_model(tiny_model("bert"), tmp_path / "base")
    fresh = load_classifier(folder, num_labels=2)
    with pytest.raises(InputError, match="freshly initialised"):
        head_importance(fresh, _examples(), progress=False)
    with pytest.raises(DataError, match="labelled"):
        head_importance(tiny_model("bert", task="classifier"), _examples(labels=False), progress=False)


def test_mlm_without_head_and_without_fitting_is_an_error() -> None:
    with pytest.raises(InputError, match="fit_mlm_head=True"):
        head_importance(
            tiny_model("bert"), _examples(labels=False), "mlm", fit_mlm_head=False, progress=False
        )


def test_bad_arguments_are_refused_before_any_work() -> None:
    enc, ex = tiny_model("bert", task="classifier"), _examples()
    for step in (0, 1, 1.5, -0.1):
        with pytest.raises(InputError, match="step"):
            prune_curve(enc, ex, step=step, progress=False)
    with pytest.raises(InputError, match="batch_size"):
        head_importance(enc, ex, batch_size=0, progress=False)
    with pytest.raises(InputError, match="tokenizer"):
        head_importance(enc.model, ex, progress=False)
    with pytest.raises(InputError, match="gates"):
        head_importance_batches(enc, ex, gates=torch.ones(3, 4), progress=False)


def test_bare_model_with_tokenizer_gives_the_encoder_result() -> None:
    enc, ex = tiny_model("electra", task="classifier"), _examples()
    torch.testing.assert_close(
        head_importance(enc.model, ex, tokenizer=enc.tokenizer, progress=False),
        head_importance(enc, ex, progress=False),
    )


# ------------------------------------------------------------------------------------------------
# objectives: mlm
# ------------------------------------------------------------------------------------------------
def _tiny_mlm(tmp_path: pathlib.Path) -> tuple[str, Encoder]:
    tokenizer = tiny_tokenizer("bert")
    config = tiny_config("bert", vocab_size=len(tokenizer))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = transformers.BertForMaskedLM(config).eval()
    original = from_model(model, tokenizer)
    return save_model(original, tmp_path / "mlm"), original


def test_mlm_uses_the_checkpoints_own_head(tmp_path: pathlib.Path) -> None:
    folder, original = _tiny_mlm(tmp_path)
    enc = load_encoder(folder)
    ex = _examples(labels=False)
    assert enc.describe()["has_mlm_head"] and objective_label(enc, "mlm") == "mlm"
    ours = head_importance_batches(enc, ex, "mlm", batch_size=2, progress=False)
    direct = head_importance_batches(original, ex, "mlm", batch_size=2, progress=False)
    assert ours.label == direct.label == "mlm"
    torch.testing.assert_close(ours.raw, direct.raw, rtol=1e-5, atol=1e-9)
    assert bool((ours.raw > 0).all())
    curve = prune_curve(enc, ex, rank_by="mlm", objective="mlm", step=0.5, progress=False)
    assert {r["metric"] for r in curve} == {"mlm_loss", "mlm_accuracy"}
    assert type(enc.model).__name__ == "BertModel"  # the caller's model is left as it was


def test_mlm_masks_are_seeded_per_example_and_follow_80_10_10() -> None:
    enc = tiny_model("bert")
    ex = _examples(TEXTS * 20, labels=False)
    first = heads._mlm_rows(enc, ex, None, seed=0, tag="score")
    again = heads._mlm_rows(enc, ex, None, seed=0, tag="score")
    reversed_rows = heads._mlm_rows(enc, ex.subset(list(range(len(ex)))[::-1]), None, seed=0, tag="score")
    assert first == again
    assert first[0] == reversed_rows[-1]  # the same example gets the same masks wherever it is
    assert heads._mlm_rows(enc, ex, None, seed=1, tag="score") != first
    # proportions over many examples: 15% of the non-special tokens, 80% of those [MASK]
    long = _examples([f"{i} " + " ".join(TEXTS) for i in range(60)], labels=False)  # distinct texts
    rows = heads._mlm_rows(enc, long, None, seed=0, tag="score")
    original = enc.tokenizer(long.texts)["input_ids"]
    chosen = masked = 0
    for row, ids in zip(rows, original, strict=True):
        labels = np.array(row["mlm_labels"])
        picked = labels != -100
        chosen += int(picked.sum())
        masked += int((np.array(row["input_ids"])[picked] == enc.tokenizer.mask_token_id).sum())
        assert np.array_equal(labels[picked], np.array(ids)[picked])
        assert round(0.15 * (len(ids) - 2)) == int(picked.sum())
    assert 0.74 < masked / chosen < 0.86


def test_fitted_head_is_seeded_cached_and_labelled(tmp_path: pathlib.Path) -> None:
    enc = tiny_model("albert")  # untied widths: d_model 32, embeddings 16
    ex = _examples(labels=False)
    heads._MEMORY_CACHE.clear()
    first = fit_mlm_head(enc, ex, steps=30, cache_dir=tmp_path, progress=False)
    heads._MEMORY_CACHE.clear()
    refit = fit_mlm_head(enc, ex, steps=30, progress=False)
    for (name, a), b in zip(first.state_dict().items(), refit.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert first.label == FITTED_LABEL and first.final_loss == refit.final_loss
    cached = list(tmp_path.glob("mlm-head-*.safetensors"))
    assert len(cached) == 1
    heads._MEMORY_CACHE.clear()
    from_disk = fit_mlm_head(enc, ex, steps=30, cache_dir=tmp_path, progress=False)
    torch.testing.assert_close(from_disk.dense.weight, first.dense.weight, rtol=0, atol=0)
    other = fit_mlm_head(enc, ex, steps=30, seed=1, progress=False)
    assert not torch.equal(other.dense.weight, first.dense.weight)
    cached[0].write_bytes(b"not safetensors")
    heads._MEMORY_CACHE.clear()
    with pytest.raises(CacheError, match="delete it"):
        fit_mlm_head(enc, ex, steps=30, cache_dir=tmp_path, progress=False)


def test_mlm_importance_with_fitted_head_is_reproducible() -> None:
    enc = tiny_model("bert")
    ex = _examples(labels=False)
    heads._MEMORY_CACHE.clear()
    a = head_importance_batches(enc, ex, "mlm", batch_size=2, progress=False)
    heads._MEMORY_CACHE.clear()
    b = head_importance_batches(enc, ex, "mlm", batch_size=2, progress=False)
    assert a.label == b.label == FITTED_LABEL == objective_label(enc, "mlm")
    torch.testing.assert_close(a.batch_sums, b.batch_sums, rtol=0, atol=0)
    assert bool((a.raw > 0).all())


# ------------------------------------------------------------------------------------------------
# objectives: kl
# ------------------------------------------------------------------------------------------------
def test_kl_self_label_gradient_is_the_finite_difference_and_soft_targets_vanish() -> None:
    enc = tiny_model("bert", task="classifier", num_labels=3)
    enc.model.double()
    ex = _examples(labels=False)
    result = head_importance_batches(enc, ex, "kl", normalize=False, batch_size=3, progress=False)
    assert result.label == "kl"
    batch = enc.tokenizer(ex.texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        p = torch.softmax(enc.model(**batch).logits, -1)

    def self_label_loss(model_enc: Encoder, indices: list[int]) -> tuple[torch.Tensor, int]:
        part = model_enc.tokenizer([ex.texts[i] for i in indices], padding=True, return_tensors="pt")
        logits = model_enc.model(**part).logits
        loss = torch.nn.functional.cross_entropy(logits, p[list(indices)].argmax(-1))
        return loss, int(part["attention_mask"].sum())

    expected = finite_difference_importance(enc, result.batch_indices, self_label_loss)
    torch.testing.assert_close(result.raw, expected, rtol=1e-6, atol=1e-10)
    assert bool((result.raw > 0).all())
    # the literal KL (or cross-entropy with soft self-targets) has zero gradient at g = 1
    gates = torch.ones(2, 4, dtype=torch.float64, requires_grad=True)
    with HeadGates(enc, gates):
        q = torch.log_softmax(enc.model(**batch).logits, -1)
    kl = (p * (p.log() - q)).sum(-1).mean()
    (grad,) = torch.autograd.grad(kl, gates)
    assert float(grad.abs().max()) < 1e-12


def test_kl_hidden_state_estimates_the_squared_sensitivity() -> None:
    enc = tiny_model("bert")
    enc.model.double()
    ex = _examples(["the story was boring and the acting was even worse"], labels=False)
    assert objective_label(enc, "kl") == "kl (hidden state)"
    # E_r[(d/dg <r, h>/T)^2] = sum_t ||dh_t/dg||^2 / T^2: compare with finite-difference Jacobians
    batch = enc.tokenizer(ex.texts, return_tensors="pt")
    n_tokens = int(batch["attention_mask"].sum())
    eps, target = 1e-5, torch.zeros(2, 4, dtype=torch.float64)
    for layer in range(2):
        for head in range(4):
            outs = []
            for sign in (1, -1):
                gates = torch.ones(2, 4, dtype=torch.float64)
                gates[layer, head] += sign * eps
                with torch.no_grad(), HeadGates(enc, gates):
                    outs.append(enc.model(**batch).last_hidden_state[0])
            jac = (outs[0] - outs[1]) / (2 * eps)
            target[layer, head] = (jac**2).sum() / n_tokens**2
    squares = torch.stack(
        [
            (head_importance_batches(enc, ex, "kl", normalize=False, seed=s, progress=False).raw * n_tokens)
            ** 2
            for s in range(150)
        ]
    )
    ratio = squares.mean(0) / target
    assert bool(((ratio > 0.6) & (ratio < 1.4)).all()), ratio
    fixed = head_importance_batches(enc, ex, "kl", seed=0, progress=False)
    torch.testing.assert_close(
        fixed.batch_sums, head_importance_batches(enc, ex, "kl", progress=False).batch_sums
    )


# ------------------------------------------------------------------------------------------------
# coherence
# ------------------------------------------------------------------------------------------------
def _by_stat(rows: list[dict[str, object]]) -> dict[tuple[object, object], dict[str, object]]:
    return {(r["statistic"], r["k"] if r["statistic"].startswith("jac") else None): r for r in rows}  # type: ignore[union-attr]


def test_coherence_of_a_map_with_itself_is_one() -> None:
    x = torch.rand(6, 12, generator=torch.Generator().manual_seed(0))
    rows = coherence(x, x, n_boot=50)
    assert len(rows) == 2 + 2 * 3 and {r["resampled"] for r in rows} == {"heads"}
    for row in rows:
        assert row["value"] == pytest.approx(1.0)
        assert row["ci_low"] == pytest.approx(1.0) and row["ci_high"] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_coherence_with_a_random_permutation_is_near_zero(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 12, generator=gen, dtype=torch.float64)
    y = x.reshape(-1)[torch.randperm(72, generator=gen)].reshape(6, 12)
    rows = _by_stat(coherence(x, y, n_boot=200, seed=seed))
    for name in ("spearman", "kendall"):
        row = rows[(name, None)]
        assert abs(row["value"]) < 0.35  # type: ignore[arg-type]
        assert row["ci_low"] <= row["value"] <= row["ci_high"]  # type: ignore[operator]
    # top-half overlap of unrelated maps: about 1/3 (random halves of 72 share half their members)
    assert 0.15 < rows[("jaccard_top", 0.5)]["value"] < 0.55  # type: ignore[operator]


def test_coherence_resamples_batches_when_given_per_batch_sums() -> None:
    enc = tiny_model("bert", task="classifier", num_layers=3)
    ex = _examples()
    task = head_importance_batches(enc, ex, batch_size=1, progress=False)
    kl = head_importance_batches(enc, ex, "kl", batch_size=1, progress=False)
    rows = coherence(task, kl, n_boot=100)
    assert {r["resampled"] for r in rows} == {"batches"}
    assert {r["map_a"] for r in rows} == {"task"} and {r["map_b"] for r in rows} == {"kl"}
    spearman = _by_stat(rows)[("spearman", None)]
    assert spearman["value"] == pytest.approx(
        __import__("scipy").stats.spearmanr(task.scores.reshape(-1), kl.scores.reshape(-1)).statistic
    )
    assert spearman["ci_low"] <= spearman["value"] <= spearman["ci_high"]  # type: ignore[operator]
    self_rows = coherence(task, task, n_boot=30)
    assert all(r["ci_low"] == pytest.approx(1.0) for r in self_rows)
    other = head_importance_batches(enc, ex, batch_size=2, progress=False)
    with pytest.raises(InputError, match="different batches"):
        coherence(task, other, n_boot=10)
    with pytest.raises(InputError, match="both"):
        coherence(task.scores, kl.scores, per_batch_a=task, n_boot=10)
    with pytest.raises(InputError, match="shape"):
        coherence(torch.rand(2, 4), torch.rand(3, 4), n_boot=10)


def test_jaccard_by_hand() -> None:
    a = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    b = torch.tensor([[4.0, 1.0, 3.0, 2.0]])
    rows = _by_stat(coherence(a, b, ks=(0.5,), n_boot=10))
    assert rows[("jaccard_top", 0.5)]["value"] == pytest.approx(1 / 3)  # {0,1} vs {0,2}
    assert rows[("jaccard_bottom", 0.5)]["value"] == pytest.approx(1 / 3)  # {2,3} vs {1,3}


# ------------------------------------------------------------------------------------------------
# pruning curves
# ------------------------------------------------------------------------------------------------
def _planted() -> tuple[Encoder, Examples]:
    """A 3-layer classifier in which only heads (1,0), (2,2), (3,1) reach the output projection."""
    enc = tiny_model("bert", task="classifier", num_layers=3, seed=1)
    keep = {(1, 0), (2, 2), (3, 1)}
    d = enc.head_dim
    with torch.no_grad():
        for layer in range(1, 4):
            weight = enc.adapter.attention_output(enc.model, layer).weight
            for head in range(4):
                weight[:, head * d : (head + 1) * d] *= 4.0 if (layer, head) in keep else 0.0
    words = "good bad film story music plot acting ending great boring fun awful".split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=int(rng.integers(2, 7)))) for _ in range(24)]
    batch = enc.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():  # a sharper head, its bias set so that half the texts fall on each side
        enc.model.classifier.weight *= 100.0
        logits = enc.model(**batch).logits
        margins = (logits[:, 1] - logits[:, 0]).sort().values
        enc.model.classifier.bias[1] -= float(margins[11] + margins[12]) / 2
        labels = enc.model(**batch).logits.argmax(-1).numpy()
    return enc, Examples(texts, None, labels, "planted", "test", ("a", "b"))


def test_prune_curve_fractions_are_monotone_and_layers_are_kept() -> None:
    enc = tiny_model("bert", task="classifier", num_layers=3)
    ex = _examples()
    rows = prune_curve(enc, ex, step=0.2, progress=False)
    counts = [r["heads_pruned"] for r in rows]
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == 12 - 3
    assert [r["heads_pruned_fraction"] for r in rows] == [c / 12 for c in counts]
    assert {r["metric"] for r in rows} == {"accuracy"}
    for row in rows:
        pruned = [p for p in row["pruned"].split(";") if p]
        assert len(pruned) == row["heads_pruned"]
        per_layer = [sum(p.startswith(f"layer.{layer}.") for p in pruned) for layer in (1, 2, 3)]
        assert max(per_layer) <= 3
    rows = prune_curve(enc, ex, step=0.2, allow_empty_layers=True, rank_by="random", progress=False)
    assert rows[-1]["heads_pruned"] == 12 and rows[-1]["heads_pruned_fraction"] == 1.0
    layer_rows = prune_curve(enc, ex, step=0.25, scope="layer", rescore=False, progress=False)
    for row in layer_rows:
        pruned = [p for p in row["pruned"].split(";") if p]
        per_layer = [sum(p.startswith(f"layer.{layer}.") for p in pruned) for layer in (1, 2, 3)]
        assert len(set(per_layer)) == 1
    assert [r["heads_pruned"] for r in layer_rows] == [0, 3, 6, 9]


def test_random_ranking_is_seeded() -> None:
    enc, ex = tiny_model("bert", task="classifier", num_layers=3), _examples()
    a = prune_curve(enc, ex, rank_by="random", seed=5, progress=False)
    b = prune_curve(enc, ex, rank_by="random", seed=5, progress=False)
    c = prune_curve(enc, ex, rank_by="random", seed=6, progress=False)
    assert a == b and [r["pruned"] for r in a] != [r["pruned"] for r in c]


def test_task_ranking_beats_random_on_a_planted_model() -> None:
    enc, ex = _planted()
    assert ex.labels.sum() == len(ex) // 2  # type: ignore[union-attr]
    ranked = prune_curve(enc, ex, rank_by="task", objective="kl", step=0.25, batch_size=8, progress=False)
    kl = [r["value"] for r in ranked if r["metric"] == "kl"]
    assert [r["heads_pruned"] for r in ranked if r["metric"] == "kl"] == [0, 3, 6, 9]
    assert max(kl) < 1e-10  # the dead heads go first and change nothing
    assert {p for p in ranked[-1]["pruned"].split(";")}.isdisjoint(
        {"layer.1.head.0", "layer.2.head.2", "layer.3.head.1"}
    )
    random_kl = [
        np.mean(
            [
                r["value"]
                for r in prune_curve(
                    enc, ex, rank_by="random", objective="kl", step=0.25, seed=s, progress=False
                )
                if r["metric"] == "kl"
            ]
        )
        for s in range(4)
    ]
    assert min(random_kl) > 1e-4
    accuracy = prune_curve(enc, ex, rank_by="task", step=0.25, batch_size=8, progress=False)
    assert [r["value"] for r in accuracy] == [1.0] * 4
