"""Extraction: every layer in one pass, pooling checked against hand computation, order, cache, errors."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from tunescope.errors import InputError, TokenizerMismatchError, UnknownNameError
from tunescope.extract import Representations, extract
from tunescope.testing.tiny import FAMILIES, tiny_model

pytestmark = pytest.mark.models

TEXTS = [
    "the film was a delight from start to finish",
    "dull",
    "an uneven but often funny comedy about growing older",
    "i wanted to like it",
    "not good",
    "a slow , thoughtful and quietly devastating portrait of a family",
    "meh",
]
PAIRS = ["it was great", "bad", "so so", "i liked it", "awful", "moving", "boring"]


def _direct_hidden(encoder, texts, pairs=None):
    """All hidden states from one padded forward pass, the obvious way."""
    batch = encoder.tokenizer(texts, pairs, padding=True, truncation=True, return_tensors="pt")
    base = encoder.adapter.base_model(encoder.model)
    accepted = inspect.signature(base.forward).parameters
    batch = {k: v for k, v in batch.items() if k in accepted}
    encoder.model.eval()
    with torch.no_grad():
        hidden = base(**batch, output_hidden_states=True).hidden_states
    return [h.double() for h in hidden], batch["attention_mask"]


@pytest.mark.parametrize("family", FAMILIES)
def test_sentence_poolings_match_direct_forward(family):
    encoder = tiny_model(family)
    hidden, mask = _direct_hidden(encoder, TEXTS)
    weights = mask.unsqueeze(-1).double()
    cls = extract(encoder, TEXTS, pooling="cls", batch_size=3, progress=False)
    mean = extract(encoder, TEXTS, pooling="mean", batch_size=3, progress=False)
    assert cls.layers == tuple(range(encoder.num_layers + 1))
    for layer in cls.layers:
        torch.testing.assert_close(cls[layer].double(), hidden[layer][:, 0], atol=1e-5, rtol=1e-4)
        expected = (hidden[layer] * weights).sum(1) / weights.sum(1)
        torch.testing.assert_close(mean[layer].double(), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_pairs_match_direct_forward(family):
    encoder = tiny_model(family)
    hidden, mask = _direct_hidden(encoder, TEXTS, PAIRS)
    reps = extract(encoder, TEXTS, text_pairs=PAIRS, pooling="cls", batch_size=2, progress=False)
    for layer in reps.layers:
        torch.testing.assert_close(reps[layer].double(), hidden[layer][:, 0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("family", "pairs"), [("bert", None), ("bert", PAIRS), ("roberta", PAIRS)])
def test_mean_no_special_averages_the_ordinary_tokens_by_hand(family, pairs):
    encoder = tiny_model(family)
    hidden, _ = _direct_hidden(encoder, TEXTS, pairs)
    special_ids = set(encoder.tokenizer.all_special_ids)
    ids = encoder.tokenizer(TEXTS, pairs, truncation=True)["input_ids"]
    reps = extract(encoder, TEXTS, text_pairs=pairs, pooling="mean_no_special", batch_size=3, progress=False)
    for layer in reps.layers:
        for i, row_ids in enumerate(ids):
            # every position of this text whose id is not a special token ([CLS], [SEP], <s>, </s>, padding)
            keep = [pos for pos, token in enumerate(row_ids) if token not in special_ids]
            assert 0 < len(keep) < len(row_ids)
            expected = hidden[layer][i, keep].mean(0)
            torch.testing.assert_close(reps[layer][i].double(), expected, atol=1e-5, rtol=1e-4)
    mean = extract(encoder, TEXTS, text_pairs=pairs, pooling="mean", batch_size=3, progress=False)
    assert not torch.allclose(mean[1], reps[1])  # the special tokens are averaged in by "mean" only


def test_pooling_is_part_of_the_cache_key(tmp_path):
    encoder = tiny_model("bert")
    keys = {
        pooling: extract(encoder, TEXTS, pooling=pooling, cache_dir=tmp_path, progress=False).meta[
            "cache_key"
        ]
        for pooling in ("cls", "mean", "mean_no_special")
    }
    assert len(set(keys.values())) == 3
    again = extract(encoder, TEXTS, pooling="mean_no_special", cache_dir=tmp_path, progress=False)
    fresh = extract(encoder, TEXTS, pooling="mean_no_special", progress=False)
    assert again.meta["cache_key"] == keys["mean_no_special"] and again.pooling == "mean_no_special"
    torch.testing.assert_close(again[2], fresh[2])


def test_bucketing_restores_input_order():
    encoder = tiny_model("bert")
    one_batch = extract(encoder, TEXTS, pooling="mean", batch_size=len(TEXTS), progress=False)
    singles = extract(encoder, TEXTS, pooling="mean", batch_size=1, progress=False)
    for layer in one_batch.layers:
        torch.testing.assert_close(one_batch[layer], singles[layer], atol=1e-5, rtol=1e-4)
    # each row equals that text alone
    alone = extract(encoder, [TEXTS[5]], pooling="mean", progress=False)
    torch.testing.assert_close(singles[2][5], alone[2][0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("word_pooling", ["first", "mean"])
def test_token_pooling_aligns_words(word_pooling):
    encoder = tiny_model("bert")
    words = [t.split() for t in TEXTS]
    word_labels = [[len(w) % 3 for w in ws] for ws in words]
    reps = extract(
        encoder,
        TEXTS,
        pooling="tokens",
        word_pooling=word_pooling,
        word_labels=word_labels,
        batch_size=3,
        progress=False,
    )
    assert reps.n_rows == sum(len(w) for w in words)
    np.testing.assert_array_equal(reps.labels, np.concatenate([np.array(x) for x in word_labels]))
    # by hand: one example at a time, tokenizer word ids
    for e, ws in enumerate(words):
        enc = encoder.tokenizer(ws, is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            hidden = encoder.adapter.base_model(encoder.model)(**enc, output_hidden_states=True).hidden_states
        word_ids = enc.word_ids(0)
        rows = (reps.example_index == e).nonzero().flatten()
        assert reps.word_index[rows].tolist() == list(range(len(ws)))
        for w, row in enumerate(rows.tolist()):
            positions = [p for p, wid in enumerate(word_ids) if wid == w]
            take = positions[:1] if word_pooling == "first" else positions
            expected = hidden[1][0, take].mean(0)
            torch.testing.assert_close(reps[1][row], expected, atol=1e-5, rtol=1e-4)


def test_sentence_labels_follow_examples_and_words():
    encoder = tiny_model("bert")
    labels = np.arange(len(TEXTS)) % 2
    reps = extract(encoder, TEXTS, labels=labels, pooling="cls", progress=False)
    np.testing.assert_array_equal(reps.labels, labels)
    words = extract(encoder, TEXTS, labels=labels, pooling="tokens", progress=False)
    np.testing.assert_array_equal(words.labels, labels[words.example_index.numpy()])


def test_layer_subset_and_dtype():
    encoder = tiny_model("bert")
    reps = extract(encoder, TEXTS, layers=[2, 0], dtype=torch.float64, progress=False)
    assert reps.layers == (0, 2)
    assert reps[2].dtype == torch.float64
    with pytest.raises(InputError, match="layer 1 was not extracted"):
        reps[1]


def test_save_load_roundtrip(tmp_path):
    encoder = tiny_model("bert")
    reps = extract(encoder, TEXTS, labels=np.arange(7), pooling="tokens", progress=False)
    reps.save(tmp_path / "r.safetensors")
    back = Representations.load(tmp_path / "r.safetensors")
    assert back.layers == reps.layers and back.pooling == "tokens"
    for layer in reps.layers:
        assert torch.equal(back[layer], reps[layer])
    assert torch.equal(back.example_index, reps.example_index)
    np.testing.assert_array_equal(back.labels, reps.labels)
    assert back.meta["fingerprint"] == encoder.fingerprint


class _CountingForward:
    """Counts forward passes of a module; raises KeyboardInterrupt after ``stop_after`` of them."""

    def __init__(self, module, stop_after=None):
        self.calls, self.stop_after = 0, stop_after
        self.handle = module.register_forward_pre_hook(self)

    def __call__(self, module, args):
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise KeyboardInterrupt
        self.calls += 1


def test_cache_resumes_after_interrupt_and_recomputes_damaged_shards(tmp_path):
    encoder = tiny_model("bert")
    base = encoder.adapter.base_model(encoder.model)
    options = dict(pooling="mean", batch_size=2, shard_size=2, cache_dir=tmp_path, progress=False)
    fresh = extract(encoder, TEXTS, **{**options, "cache_dir": None})

    counter = _CountingForward(base, stop_after=2)  # two shards of one batch... then interrupt
    with pytest.raises(KeyboardInterrupt):
        extract(encoder, TEXTS, **options)
    counter.handle.remove()
    folder = next(tmp_path.iterdir())
    assert len(list(folder.glob("shard-*.safetensors"))) == 2
    assert not list(folder.glob("*.tmp"))

    counter = _CountingForward(base)
    resumed = extract(encoder, TEXTS, **options)
    counter.handle.remove()
    assert counter.calls == 2  # 7 texts = 4 shards of 2; only the last two were computed
    for layer in fresh.layers:
        torch.testing.assert_close(resumed[layer], fresh[layer])

    damaged = sorted(folder.glob("shard-*.safetensors"))[1]
    data = bytearray(damaged.read_bytes())
    data[-5] ^= 0xFF
    damaged.write_bytes(bytes(data))
    counter = _CountingForward(base)
    again = extract(encoder, TEXTS, **options)
    counter.handle.remove()
    assert counter.calls == 1  # only the damaged shard
    for layer in fresh.layers:
        torch.testing.assert_close(again[layer], fresh[layer])


def test_cache_key_changes_with_weights(tmp_path):
    encoder = tiny_model("bert")
    first = extract(encoder, TEXTS, cache_dir=tmp_path, progress=False)
    changed = tiny_model("bert")  # a fresh wrapper: fingerprints are computed once per Encoder
    with torch.no_grad():
        changed.adapter.attention_output(changed.model, 1).weight.mul_(2.0)
    second = extract(changed, TEXTS, cache_dir=tmp_path, progress=False)
    assert first.meta["cache_key"] != second.meta["cache_key"]
    assert not torch.allclose(first[2], second[2])


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        (
            {"pooling": "max"},
            UnknownNameError,
            "unknown pooling 'max'; choose one of: cls, mean, mean_no_special, tokens",
        ),
        ({"labels": [0, 1]}, InputError, "2 labels for 7 texts"),
        ({"text_pairs": ["x"]}, InputError, "1 text pairs for 7 texts"),
        ({"layers": [0, 9]}, InputError, "out of range"),
        ({"pooling": "tokens", "word_labels": [[0]] * 7}, InputError, "labels must align with words"),
        ({"words": [["a"]] * 7}, InputError, "only used with pooling='tokens'"),
        ({"batch_size": 0}, InputError, "must be positive"),
    ],
)
def test_bad_input_is_one_clear_error(kwargs, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        extract(tiny_model("bert"), TEXTS, progress=False, **kwargs)


def test_bad_texts():
    encoder = tiny_model("bert")
    with pytest.raises(InputError, match="not one string"):
        extract(encoder, "just one string", progress=False)
    with pytest.raises(InputError, match="no texts"):
        extract(encoder, [], progress=False)


def test_tokenizer_larger_than_model_is_rejected():
    encoder = tiny_model("bert")
    encoder.model.resize_token_embeddings(20)
    with pytest.raises(TokenizerMismatchError, match="embedding table has 20 rows"):
        extract(encoder, TEXTS, progress=False)


@pytest.mark.slow
def test_embedded_model_on_builtin_task():
    from tunescope.data import get_task
    from tunescope.models import load_encoder

    encoder = load_encoder()
    examples = get_task("movie-sentiment").load("validation", limit=48)
    reps = extract(encoder, examples, pooling="mean", progress=False)
    assert reps.layers == tuple(range(7))
    assert tuple(reps[6].shape) == (48, 384)
    np.testing.assert_array_equal(reps.labels, examples.labels)
    assert torch.isfinite(reps.stack()).all()


@pytest.mark.gpu
@pytest.mark.parametrize("pooling", ["cls", "mean", "tokens"])
def test_cuda_extraction_matches_cpu(pooling):
    encoder = tiny_model("bert")
    on_cpu = extract(encoder, TEXTS, pooling=pooling, progress=False)
    on_gpu = extract(encoder, TEXTS, pooling=pooling, device="cuda", progress=False)
    for layer in on_cpu.layers:
        assert on_gpu[layer].device.type == "cpu"  # results always come back to the CPU
        torch.testing.assert_close(on_gpu[layer], on_cpu[layer], atol=1e-3, rtol=1e-3)


@pytest.mark.gpu
def test_cuda_bfloat16_model_gives_float32_representations():
    encoder = tiny_model("bert")
    on_cpu = extract(encoder, TEXTS, pooling="mean", progress=False)
    encoder.model.to(device="cuda", dtype=torch.bfloat16)
    on_gpu = extract(encoder, TEXTS, pooling="mean", progress=False)
    assert on_gpu[2].dtype == torch.float32
    torch.testing.assert_close(on_gpu[2], on_cpu[2], atol=0.1, rtol=0.05)
