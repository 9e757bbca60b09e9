"""Damaged files, on purpose: a model folder ends in one error line naming the file and the fix; a
fine-tuning output folder skips (with a warning) what it cannot use and resumes from what it can."""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tunescope.data import Examples
from tunescope.data.tokens import TokenExamples
from tunescope.errors import DataError, InputError, ModelLoadError
from tunescope.finetune import FinetuneConfig, finetune
from tunescope.models import load_classifier, load_encoder
from tunescope.testing.tiny import save_model, tiny_model

pytestmark = [pytest.mark.models, pytest.mark.usefixtures("one_thread")]

ft = importlib.import_module("tunescope.finetune.loop")  # the loop looks its steps up there: tests patch it


# --- ways a file gets damaged -------------------------------------------------------------------
def _half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _few_bytes(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:10])


def _random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(2048))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _json_list(path: Path) -> None:
    path.write_text("[1, 2, 3]\n")


DAMAGES: dict[str, Callable[[Path], None]] = {
    "cut to half": _half,
    "cut to 10 bytes": _few_bytes,
    "random bytes": _random_bytes,
    "empty": _empty,
}
JSON_DAMAGES = {**DAMAGES, "a JSON list": _json_list}
CHECKPOINT_DAMAGES = {**DAMAGES, "deleted": lambda path: path.unlink()}


def _one_line_naming(error: BaseException, path: Path, *hints: str) -> None:
    message = str(error)
    assert "\n" not in message, message
    assert str(path) in message, message
    for hint in hints:
        assert hint in message, message


# --- model folders ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT classifier saved as a user's checkpoint would be (copy it before damaging it)."""
    return Path(save_model(tiny_model("bert", task="classifier"), tmp_path_factory.mktemp("tiny") / "m"))


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "model"))


@pytest.mark.parametrize("loader", [load_encoder, load_classifier], ids=["encoder", "classifier"])
@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_damaged_safetensors(model_folder, tmp_path, damage, loader):
    folder = _copy(model_folder, tmp_path)
    damage(folder / "model.safetensors")
    with pytest.raises(ModelLoadError, match="model.safetensors is damaged") as info:
        loader(folder)
    _one_line_naming(info.value, folder / "model.safetensors", "re-save the model with save_pretrained()")


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_damaged_pytorch_bin(model_folder, tmp_path, damage):
    folder = _copy(model_folder, tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    assert load_encoder(folder).num_layers == 2  # the undamaged .bin folder loads
    damage(folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pytorch_model.bin is damaged") as info:
        load_encoder(folder)
    _one_line_naming(info.value, folder / "pytorch_model.bin", "re-save the model")


@pytest.fixture(scope="module")
def sharded_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    encoder = tiny_model("bert")
    folder = tmp_path_factory.mktemp("sharded") / "m"
    encoder.model.save_pretrained(folder, max_shard_size="20KB")
    encoder.tokenizer.save_pretrained(folder)
    return folder


def test_damaged_shard_and_index(sharded_folder, tmp_path):
    folder = _copy(sharded_folder, tmp_path)
    assert load_encoder(folder).num_layers == 2
    shard = sorted(folder.glob("model-*.safetensors"))[1]
    original = shard.read_bytes()
    _half(shard)
    with pytest.raises(ModelLoadError, match="is damaged") as info:
        load_encoder(folder)
    _one_line_naming(info.value, shard, "re-save the model")
    shard.unlink()
    with pytest.raises(ModelLoadError, match="is missing") as info:
        load_encoder(folder)
    _one_line_naming(info.value, shard, "model.safetensors.index.json", "copy the whole folder again")
    shard.write_bytes(original)
    _half(folder / "model.safetensors.index.json")
    with pytest.raises(ModelLoadError, match="not valid JSON") as info:
        load_encoder(folder)
    _one_line_naming(info.value, folder / "model.safetensors.index.json", "re-save the model")


@pytest.mark.parametrize("damage", JSON_DAMAGES.values(), ids=JSON_DAMAGES.keys())
def test_damaged_config_json(model_folder, tmp_path, damage):
    folder = _copy(model_folder, tmp_path)
    damage(folder / "config.json")
    with pytest.raises(ModelLoadError, match="config.json is unreadable") as info:
        load_classifier(folder)
    _one_line_naming(info.value, folder / "config.json", "re-save the model with save_pretrained()")


@pytest.mark.parametrize(
    ("entry", "value", "words"),
    [
        ("hidden_size", "abc", "hidden_size must be a whole number >= 1, got 'abc'"),
        ("num_hidden_layers", "x", "num_hidden_layers must be a whole number >= 1, got 'x'"),
        ("num_attention_heads", None, "num_attention_heads must be a whole number >= 1, got None"),
        ("hidden_size", [32], "hidden_size must be a whole number >= 1, got [32]"),
        ("vocab_size", 311.5, "vocab_size must be a whole number >= 1, got 311.5"),
        ("num_hidden_layers", 0, "num_hidden_layers must be a whole number >= 1, got 0"),
        ("intermediate_size", True, "intermediate_size must be a whole number >= 1, got True"),
        ("hidden_dropout_prob", "high", "hidden_dropout_prob must be a number, got 'high'"),
        ("num_attention_heads", 5, "hidden_size 32 is not a multiple of num_attention_heads 5"),
        ("model_type", ["bert"], "model_type must be a family name"),
    ],
)
def test_wrongly_typed_config_values(model_folder, tmp_path, entry, value, words):
    folder = _copy(model_folder, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config[entry] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError) as info:
        load_classifier(folder)
    _one_line_naming(info.value, folder / "config.json", words)
    if entry != "model_type":
        assert "correct that entry, or re-save the model" in str(info.value)


@pytest.mark.parametrize("damage", JSON_DAMAGES.values(), ids=JSON_DAMAGES.keys())
@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json"])
def test_damaged_tokenizer_files(model_folder, tmp_path, name, damage):
    folder = _copy(model_folder, tmp_path)
    damage(folder / name)
    with pytest.raises(ModelLoadError, match=f"{name} is unreadable") as info:
        load_encoder(folder)
    _one_line_naming(info.value, folder / name, "re-save the tokenizer with tokenizer.save_pretrained()")


@pytest.mark.parametrize("damage", [_empty, _random_bytes], ids=["empty", "random bytes"])
def test_damaged_vocab_txt(model_folder, tmp_path, damage):
    """A folder whose tokenizer is built from vocab.txt (no tokenizer.json); an empty vocab.txt used to
    load silently as a tokenizer of five special tokens."""
    folder = _copy(model_folder, tmp_path)
    vocab = load_encoder(folder).tokenizer.get_vocab()
    (folder / "tokenizer.json").unlink()
    (folder / "vocab.txt").write_text("\n".join(sorted(vocab, key=vocab.__getitem__)) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    assert len(load_encoder(folder).tokenizer) == len(vocab)  # the undamaged folder loads
    damage(folder / "vocab.txt")
    with pytest.raises(ModelLoadError, match="vocab.txt is unreadable") as info:
        load_encoder(folder)
    _one_line_naming(info.value, folder / "vocab.txt", "tokenizer.save_pretrained()")


@pytest.mark.parametrize("value", ["abc", [7], [1.5]])
def test_damaged_surgery_record(model_folder, tmp_path, value):
    folder = _copy(model_folder, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "tunescope_removed_ffn": value}))
    with pytest.raises(ModelLoadError, match="tunescope_removed_ffn") as info:
        load_encoder(folder)
    _one_line_naming(info.value, folder / "config.json", "correct or remove that entry")


def test_cli_prints_one_line_and_exits_2(model_folder, tmp_path, capsys):
    from tunescope.cli.main import main

    folder = _copy(model_folder, tmp_path)
    _half(folder / "model.safetensors")
    code = main(["info", str(folder)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err, err
    assert f"{folder / 'model.safetensors'} is damaged" in err and "Traceback" not in err


def test_describe_warns_about_a_damaged_file_it_did_not_need(model_folder, tmp_path, caplog):
    folder = _copy(model_folder, tmp_path)
    encoder = load_encoder(folder)
    _few_bytes(Path(shutil.copy(folder / "model.safetensors", folder / "extra.safetensors")))
    with caplog.at_level(logging.WARNING, logger="tunescope"):
        described = encoder.describe()
    assert described["has_classifier_head"] is True  # still read from model.safetensors
    assert f"{folder / 'extra.safetensors'} is damaged" in caplog.text


# --- fine-tuning ----------------------------------------------------------------------------------
POSITIVE = "good great excellent best fine nice love liked enjoy fun".split()
NEGATIVE = "bad terrible awful worst poor boring sad hate never not".split()
FILLER = "the a film movie story plot actor scene music ending".split()
CONFIG = FinetuneConfig(epochs=3, learning_rate=1e-2, batch_size=8, max_length=16, keep_best=False)


def _examples(n: int, seed: int, split: str) -> Examples:
    rng = random.Random(seed)
    labels = [i % 2 for i in range(n)]
    texts = [" ".join(rng.sample(POSITIVE if y else NEGATIVE, 2) + rng.sample(FILLER, 2)) for y in labels]
    return Examples(texts, None, np.array(labels), "synthetic", split, ("negative", "positive"))


def _finetune(out: Path, config: FinetuneConfig = CONFIG, **data: Any) -> Any:
    options = {"train": _examples(24, 1, "train"), "validation": _examples(8, 2, "validation"), **data}
    return finetune(tiny_model("bert"), None, out, config=config, progress=False, **options)


def _weights(result: Any) -> dict[str, torch.Tensor]:
    return load_file(str(result.path / "model.safetensors"))


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Any:
    """The uninterrupted run every resumed one must end like."""
    return _finetune(tmp_path_factory.mktemp("straight") / "out")


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    """A run stopped after epoch 2 of 3, with the checkpoints of epochs 1 and 2 on disk (as keep_best
    leaves them when epoch 1 scored best; here pruning is switched off to get that layout)."""
    out = tmp_path_factory.mktemp("interrupted") / "out"
    original = ft._write_checkpoint

    def stop_after_second(folder, epoch, *args):
        written = original(folder, epoch, *args)
        if epoch == 2:
            raise KeyboardInterrupt
        return written

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ft, "_write_checkpoint", stop_after_second)
        patch.setattr(ft, "_prune", lambda folder, keep: None)
        with pytest.raises(KeyboardInterrupt):
            _finetune(out)
    assert sorted(p.name for p in (out / "checkpoints").glob("epoch-*")) == ["epoch-1", "epoch-2"]
    return out


@pytest.fixture
def trained(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The epochs the next runs train, in order."""
    epochs: list[int] = []
    train_epoch = ft._train_epoch

    def record(*args, epoch, **kwargs):
        epochs.append(epoch)
        return train_epoch(*args, epoch=epoch, **kwargs)

    monkeypatch.setattr(ft, "_train_epoch", record)
    return epochs


def _same_as_straight(result: Any, straight: Any) -> None:
    """Bit for bit: the shuffle and the RNG of each epoch come from the checkpoint or the seed."""
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert [h["train_loss"] for h in result.history] == [h["train_loss"] for h in straight.history]
    expected = _weights(straight)
    got = _weights(result)
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


def test_resume_from_an_undamaged_checkpoint_is_bit_for_bit(interrupted, straight, tmp_path, trained, caplog):
    out = Path(shutil.copytree(interrupted, tmp_path / "out"))
    with caplog.at_level(logging.WARNING, logger="tunescope"):
        result = _finetune(out)
    assert trained == [3]
    _same_as_straight(result, straight)
    assert f"resuming fine-tuning in {out} after epoch 2 of 3" in caplog.text
    assert not (out / "checkpoints").exists()


@pytest.mark.parametrize("damage", CHECKPOINT_DAMAGES.values(), ids=CHECKPOINT_DAMAGES.keys())
@pytest.mark.parametrize("name", ["trainable.safetensors", "trainer_state.pt", "state.json"])
def test_damaged_latest_checkpoint_resumes_from_the_one_before(
    interrupted, straight, tmp_path, trained, caplog, name, damage
):
    out = Path(shutil.copytree(interrupted, tmp_path / "out"))
    damaged = out / "checkpoints" / "epoch-2" / name
    damage(damaged)
    with caplog.at_level(logging.WARNING, logger="tunescope"):
        result = _finetune(out)
    assert trained == [2, 3]
    _same_as_straight(result, straight)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]  # the CLI prints these
    assert any(f"fine-tuning checkpoint file {damaged} is damaged" in r.getMessage() for r in warnings)
    assert any(f"resuming fine-tuning in {out} after epoch 1 of 3" in r.getMessage() for r in warnings)
    assert all("\n" not in r.getMessage() for r in warnings)


def _other_run(path: Path) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), "key": "0" * 20}))


def _other_epoch(path: Path) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), "epoch": 5}))


def _no_trainer_parts(path: Path) -> None:
    torch.save({"optimizer": {}}, path)


def _foreign_optimizer(path: Path) -> None:  # reads, but the optimizer refuses it
    torch.save({"optimizer": {"nothing": 1}, "scheduler": {}, "rng": {"cpu": torch.get_rng_state()}}, path)


def _other_tensors(path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"classifier.weight": torch.zeros(2, 32)}, str(path))


@pytest.mark.parametrize(
    ("name", "change", "words"),
    [
        ("state.json", _other_run, "belongs to another run"),
        ("state.json", _other_epoch, "do not describe epoch 2 of this run"),
        ("trainer_state.pt", _no_trainer_parts, "lacks the optimizer, scheduler or random-generator state"),
        ("trainer_state.pt", _foreign_optimizer, "does not fit this optimizer"),
        ("trainable.safetensors", _other_tensors, "not the ones this model trains"),
    ],
    ids=[
        "state of another run",
        "state of another epoch",
        "trainer parts missing",
        "foreign optimizer",
        "other tensors",
    ],
)
def test_checkpoint_files_that_read_but_do_not_fit_are_skipped(
    interrupted, straight, tmp_path, trained, caplog, name, change, words
):
    out = Path(shutil.copytree(interrupted, tmp_path / "out"))
    change(out / "checkpoints" / "epoch-2" / name)
    with caplog.at_level(logging.WARNING, logger="tunescope"):
        result = _finetune(out)
    assert trained == [2, 3]
    _same_as_straight(result, straight)  # nothing of the skipped checkpoint leaked into the run
    assert words in caplog.text and "skipping checkpoint epoch-2" in caplog.text


def test_no_usable_checkpoint_starts_again(interrupted, straight, tmp_path, trained, caplog):
    out = Path(shutil.copytree(interrupted, tmp_path / "out"))
    _random_bytes(out / "checkpoints" / "epoch-2" / "trainer_state.pt")
    _json_list(out / "checkpoints" / "epoch-1" / "state.json")
    with caplog.at_level(logging.WARNING, logger="tunescope"):
        result = _finetune(out)
    assert trained == [1, 2, 3]
    _same_as_straight(result, straight)
    assert f"no usable checkpoint in {out / 'checkpoints'}; fine-tuning again from epoch 1" in caplog.text


def test_checkpoint_whose_best_epoch_is_damaged_is_not_used(interrupted, straight, tmp_path, trained):
    """The final model is the best epoch's, so a checkpoint is only usable with its best epoch's weights."""
    out = Path(shutil.copytree(interrupted, tmp_path / "out"))
    state_file = out / "checkpoints" / "epoch-2" / "state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "best_epoch": 1}))
    _half(out / "checkpoints" / "epoch-1" / "trainable.safetensors")
    _same_as_straight(_finetune(out), straight)
    assert trained == [1, 2, 3]


@pytest.mark.parametrize("damage", JSON_DAMAGES.values(), ids=JSON_DAMAGES.keys())
def test_damaged_run_json_is_rewritten(interrupted, straight, tmp_path, trained, caplog, damage):
    out = Path(shutil.copytree(interrupted, tmp_path / "out"))
    damage(out / "checkpoints" / "run.json")
    with caplog.at_level(logging.WARNING, logger="tunescope"):
        result = _finetune(out)
    assert trained == [3]  # the checkpoints' own state.json say they are this run's
    _same_as_straight(result, straight)
    assert f"{out / 'checkpoints' / 'run.json'} is damaged" in caplog.text


def test_damaged_run_json_does_not_hide_another_run(interrupted, tmp_path, trained):
    out = Path(shutil.copytree(interrupted, tmp_path / "out"))
    _half(out / "checkpoints" / "run.json")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other = dataclasses.replace(CONFIG, learning_rate=2e-2)
    with pytest.raises(InputError, match="holds checkpoints of a run with other settings") as info:
        _finetune(out, other)
    assert "\n" not in str(info.value)
    assert trained == [] and {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def _without_history(path: Path) -> None:
    record = json.loads(path.read_text())
    del record["history"]
    path.write_text(json.dumps(record))


DONE_DAMAGES = {**JSON_DAMAGES, "an entry missing": _without_history}


@pytest.mark.parametrize("damage", DONE_DAMAGES.values(), ids=DONE_DAMAGES.keys())
def test_damaged_done_record_trains_again(straight, tmp_path, trained, caplog, damage):
    out = Path(shutil.copytree(straight.path, tmp_path / "out"))
    damage(out / "tunescope_finetune.json")
    with caplog.at_level(logging.WARNING, logger="tunescope"):
        result = _finetune(out)
    assert trained == [1, 2, 3]
    _same_as_straight(result, straight)
    assert f"{out / 'tunescope_finetune.json'} is damaged" in caplog.text
    assert json.loads((out / "tunescope_finetune.json").read_text())["best_epoch"] == 3


def test_finished_run_with_damaged_model_trains_again(straight, tmp_path, trained, caplog):
    out = Path(shutil.copytree(straight.path, tmp_path / "out"))
    _few_bytes(out / "model.safetensors")
    with caplog.at_level(logging.WARNING, logger="tunescope"):
        result = _finetune(out)
    assert trained == [1, 2, 3]
    _same_as_straight(result, straight)
    assert f"{out / 'model.safetensors'} is damaged" in caplog.text


def test_finished_run_returns_at_once(straight, tmp_path, trained):
    out = Path(shutil.copytree(straight.path, tmp_path / "out"))
    assert _finetune(out).history == straight.history and trained == []


@pytest.mark.parametrize("file", ["model.safetensors", "config.json"])
def test_finetune_from_a_damaged_model_folder(model_folder, tmp_path, file):
    folder = _copy(model_folder, tmp_path)
    _half(folder / file)
    out = tmp_path / "out"
    with pytest.raises(ModelLoadError) as info:
        finetune(
            str(folder),
            None,
            out,
            train=_examples(8, 1, "train"),
            validation=_examples(4, 2, "v"),
            progress=False,
        )
    _one_line_naming(info.value, folder / file, "re-save the model")
    assert not out.exists()


# --- one-class training data --------------------------------------------------------------------
def test_one_class_training_set_is_refused(tmp_path):
    train = Examples(
        ["good film", "nice film", "fine film"], None, np.array([1, 1, 1]), "t", "train", ("n", "p")
    )
    out = tmp_path / "out"
    with pytest.raises(
        DataError, match=r"training split of t has only one class \('p', all 3 examples\)"
    ) as e:
        _finetune(out, train=train)
    assert "a classifier needs at least two" in str(e.value) and "\n" not in str(e.value)
    assert not out.exists()


def test_one_tag_training_set_is_refused(tmp_path):
    tags = ("POS", "NEG")
    train = TokenExamples([["good", "fine"], ["nice"]], [[0, 0], [0]], tags, "tags", "train")
    validation = TokenExamples([["bad"], ["good"]], [[1], [0]], tags, "tags", "validation")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"only one tag \('POS', all 3 words\); a tagger needs at least two"):
        _finetune(out, train=train, validation=validation)
    assert not out.exists()


def test_one_valued_regression_targets_are_allowed(tmp_path):
    train = Examples(["good", "bad", "fine", "poor"], None, np.full(4, 0.5), "r", "train", None)
    validation = Examples(["good", "bad"], None, np.array([1.0, 0.0]), "r", "validation", None)
    config = FinetuneConfig(epochs=1, batch_size=4, max_length=8)
    assert _finetune(tmp_path / "out", config, train=train, validation=validation).best_epoch == 1
