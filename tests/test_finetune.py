"""Fine-tuning on tiny separable synthetic tasks: it learns, saves loadable folders, freezes, cuts, adapts,
resumes, keeps the best epoch, and refuses bad input before writing anything."""

from __future__ import annotations

import importlib
import json
import random

import numpy as np
import pytest
import torch
import transformers
import typer
from safetensors.torch import load_file

from tunescope.data import Examples, get_task
from tunescope.data.tokens import TokenExamples
from tunescope.errors import DataError, InputError, UnknownNameError
from tunescope.finetune import FinetuneConfig, finetune
from tunescope.inference import evaluate
from tunescope.models import load_classifier
from tunescope.testing.tiny import save_model, tiny_model

pytestmark = [pytest.mark.models, pytest.mark.usefixtures("one_thread")]

# the training loop looks its steps up in tunescope.finetune.loop, so that is where tests patch them
ft = importlib.import_module("tunescope.finetune.loop")

POSITIVE = "good great excellent best better fine nice love loved like liked enjoy enjoyed fun funny".split()
NEGATIVE = "bad terrible awful worst worse poor boring sad hate hated never not no too little".split()
FILLER = "the a film movie story plot actor scene music ending year day people man woman".split()
SUBWORDS = ["zzq", "qqx", "xzq", "vvk"]  # not in the tiny vocabulary: several sub-tokens each
FAST = {"learning_rate": 1e-2, "batch_size": 16, "warmup_ratio": 0.1, "max_length": 32}


# --- synthetic tasks ----------------------------------------------------------------------------
def sentiment(n: int, seed: int, split: str) -> Examples:
    """Label 1 iff the text's two content words come from the positive half of the vocabulary."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        y = rng.randrange(2)
        words = rng.sample(POSITIVE if y else NEGATIVE, 2) + rng.sample(FILLER, 2)
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(y)
    return Examples(texts, None, np.array(labels), "synthetic", split, ("negative", "positive"))


def graded(n: int, seed: int, split: str) -> Examples:
    """Regression target: the fraction of positive words among four."""
    rng = random.Random(seed)
    texts, targets = [], []
    for _ in range(n):
        k = rng.randint(0, 4)
        words = rng.choices(POSITIVE, k=k) + rng.choices(NEGATIVE, k=4 - k)
        rng.shuffle(words)
        texts.append(" ".join(words))
        targets.append(k / 4)
    return Examples(texts, None, np.array(targets, dtype=float), "synthetic-graded", split, None)


def paired(n: int, seed: int, split: str) -> Examples:
    """The label lives in the second text only (the first holds a random distractor)."""
    rng = random.Random(seed)
    first, second, labels = [], [], []
    for _ in range(n):
        y = rng.randrange(2)
        first.append(
            " ".join(rng.sample(FILLER, 2) + rng.sample(POSITIVE if rng.random() < 0.5 else NEGATIVE, 1))
        )
        second.append(" ".join(rng.sample(POSITIVE if y else NEGATIVE, 2)))
        labels.append(y)
    return Examples(first, second, np.array(labels), "synthetic-pairs", split, ("negative", "positive"))


def tagged(n: int, seed: int, split: str) -> TokenExamples:
    """Each word's tag is its vocabulary group (POS / NEG / NEU); some words split into sub-tokens."""
    rng = random.Random(seed)
    groups = (POSITIVE, NEGATIVE, FILLER + SUBWORDS)
    words, tags = [], []
    for _ in range(n):
        chosen = [rng.randrange(3) for _ in range(6)]
        words.append([rng.choice(groups[g]) for g in chosen])
        tags.append(chosen)
    return TokenExamples(words, tags, ("POS", "NEG", "NEU"), "synthetic-tags", split)


def _logits(model, texts):
    batch = _tokenizer()(texts, padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def _tokenizer():
    return tiny_model("bert").tokenizer


def _run(tmp_path, name, data=sentiment, encoder=None, **config):
    options = {**FAST, "epochs": 5, **config}
    return finetune(
        encoder or tiny_model("bert"),
        None,
        tmp_path / name,
        train=data(64, 1, "train"),
        validation=data(48, 2, "validation"),
        config=FinetuneConfig(**options),
        progress=False,
    )


# --- learning and saving ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def classified(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("ft"), "classifier")


def test_learns_separable_task_and_saves_loadable_folder(classified):
    result = classified
    assert result.metric == "accuracy" and result.best_value > 0.9
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4, 5]
    assert result.history[result.best_epoch - 1]["accuracy"] == result.best_value
    assert result.trainable_parameters == result.total_parameters > 0
    folder = result.path
    assert not (folder / "checkpoints").exists()
    record = json.loads((folder / "tunescope_finetune.json").read_text())
    assert record["best_epoch"] == result.best_epoch and record["config"]["epochs"] == 5
    plain = transformers.AutoModelForSequenceClassification.from_pretrained(folder)
    ours = load_classifier(folder)
    texts = sentiment(8, 9, "test").texts
    torch.testing.assert_close(_logits(plain, texts), _logits(ours.model, texts), rtol=0, atol=0)
    assert plain.config.id2label == {0: "negative", 1: "positive"}
    # the saved model is the best epoch's: it scores what the history says
    again = evaluate(ours, sentiment(48, 2, "validation"))
    assert again["accuracy"] == pytest.approx(result.best_value)


def test_finished_run_returns_without_training(classified, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run must not train again")

    monkeypatch.setattr(ft, "_train_epoch", no_training)
    again = _run(classified.path.parent, "classifier")
    assert again.history == classified.history and again.best_value == classified.best_value


def test_regression(tmp_path):
    result = _run(tmp_path, "regression", data=graded, epochs=6)
    assert result.metric == "pearson_spearman"
    assert result.history[result.best_epoch - 1]["pearson"] > 0.8
    config = transformers.AutoConfig.from_pretrained(result.path)
    assert config.problem_type == "regression" and config.num_labels == 1


def test_pairs(tmp_path):
    result = _run(tmp_path, "pairs", data=paired, epochs=6)
    assert result.best_value > 0.9


def test_token_classification(tmp_path):
    result = _run(tmp_path, "tokens", data=tagged, epochs=3)
    assert result.best_value > 0.9
    model = transformers.AutoModelForTokenClassification.from_pretrained(result.path)
    assert model.config.num_labels == 3 and model.config.id2label[2] == "NEU"
    from tunescope.models import from_model

    encoder = from_model(model, transformers.AutoTokenizer.from_pretrained(result.path))
    assert evaluate(encoder, tagged(48, 2, "validation"))["accuracy"] == pytest.approx(result.best_value)


# --- which parameters train ---------------------------------------------------------------------
def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_train_layers_freeze_everything_else(tmp_path):
    encoder = tiny_model("bert", task="classifier", num_layers=3)
    before = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    result = _run(tmp_path, "layer2", encoder=encoder, epochs=1, train_layers=(2,))
    after = load_file(str(result.path / "model.safetensors"))
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(
        k.startswith(("bert.encoder.layer.1.", "bert.pooler.", "classifier.")) for k in changed
    )
    assert any(k.startswith("bert.encoder.layer.1.") for k in changed)
    assert any(k.startswith("classifier.") for k in changed)
    head = encoder.adapter.classifier_head(encoder.model)
    expected = _numel(encoder.adapter.layer(encoder.model, 2)) + _numel(head)
    assert result.trainable_parameters == expected < result.total_parameters
    for k, v in before.items():  # the caller's encoder is untouched
        assert torch.equal(encoder.model.state_dict()[k], v)


def test_classifier_layer_cuts_the_model(tmp_path):
    result = _run(tmp_path, "cut", encoder=tiny_model("bert", num_layers=3), epochs=1, classifier_layer=1)
    config = json.loads((result.path / "config.json").read_text())
    assert config["num_hidden_layers"] == 1
    reloaded = load_classifier(result.path)
    assert len(reloaded.adapter.layers(reloaded.model)) == 1
    assert not any(".layer.1." in k for k in reloaded.model.state_dict())
    assert evaluate(reloaded, sentiment(48, 2, "validation"))["accuracy"] == pytest.approx(result.best_value)


def test_lora_trains_adapters_and_head_and_saves_merged(tmp_path, monkeypatch):
    pytest.importorskip("peft")
    exported = {}
    original = ft._export

    def capture(model, tokenizer, folder):
        exported["logits"] = _logits(model, sentiment(8, 9, "test").texts)
        exported["trainable"] = sorted(n for n, p in model.named_parameters() if p.requires_grad)
        original(model, tokenizer, folder)

    monkeypatch.setattr(ft, "_export", capture)
    encoder = tiny_model("bert", task="classifier")
    before = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    result = _run(tmp_path, "lora", encoder=encoder, epochs=2, adapter="lora", lora_r=2, adapter_layers=(2,))
    assert all(("lora_" in n and ".layer.1." in n) or "modules_to_save" in n for n in exported["trainable"])
    # 6 linears of layer 2 get r * (d_in + d_out) each; the pooler and classifier train fully
    d, ff, r = 32, 37, 2
    lora = r * (4 * (d + d) + (d + ff) + (ff + d))
    head = encoder.adapter.classifier_head(encoder.model)
    assert result.trainable_parameters == lora + _numel(head)
    plain = transformers.AutoModelForSequenceClassification.from_pretrained(result.path)
    assert not any("lora" in k for k in plain.state_dict())
    torch.testing.assert_close(
        _logits(plain, sentiment(8, 9, "test").texts), exported["logits"], atol=1e-5, rtol=1e-4
    )
    after = load_file(str(result.path / "model.safetensors"))
    assert torch.equal(
        after["bert.encoder.layer.0.attention.self.query.weight"],
        before["bert.encoder.layer.0.attention.self.query.weight"],
    )
    assert not torch.equal(
        after["bert.encoder.layer.1.attention.self.query.weight"],
        before["bert.encoder.layer.1.attention.self.query.weight"],
    )


# --- resume and model selection -----------------------------------------------------------------
def test_interrupted_run_resumes_and_matches_uninterrupted(tmp_path, monkeypatch):
    straight = _run(tmp_path, "straight", epochs=3)
    original = ft._write_checkpoint

    def crash_after_first(folder, epoch, *args):
        written = original(folder, epoch, *args)
        if epoch == 1:
            raise KeyboardInterrupt
        return written

    monkeypatch.setattr(ft, "_write_checkpoint", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "resumed", epochs=3)
    out = tmp_path / "resumed"
    assert (out / "checkpoints" / "epoch-1" / "state.json").is_file()
    assert not (out / "config.json").exists() and not (out / "tunescope_finetune.json").exists()

    trained = []
    train_epoch = ft._train_epoch

    def record(*args, epoch, **kwargs):
        trained.append(epoch)
        return train_epoch(*args, epoch=epoch, **kwargs)

    monkeypatch.setattr(ft, "_write_checkpoint", original)
    monkeypatch.setattr(ft, "_train_epoch", record)
    resumed = _run(tmp_path, "resumed", epochs=3)
    assert trained == [2, 3]
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    a = load_file(str(straight.path / "model.safetensors"))
    b = load_file(str(resumed.path / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
    for x, y in zip(straight.history, resumed.history, strict=True):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-5)


@pytest.mark.parametrize(("keep_best", "expected"), [(True, 2), (False, 3)])
def test_keep_best_saves_the_best_epoch(tmp_path, monkeypatch, keep_best, expected):
    scores = iter([0.5, 0.9, 0.7])
    monkeypatch.setattr(ft, "_validate", lambda *a, **k: {"accuracy": next(scores)})
    states = {}
    original = ft._write_checkpoint

    def remember(folder, epoch, model, *args):
        states[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return original(folder, epoch, model, *args)

    monkeypatch.setattr(ft, "_write_checkpoint", remember)
    result = _run(tmp_path, "best", epochs=3, keep_best=keep_best)
    assert result.best_epoch == expected and result.best_value == {2: 0.9, 3: 0.7}[expected]
    saved = load_file(str(result.path / "model.safetensors"))
    for key, value in saved.items():
        assert torch.equal(value, states[expected][key]), key
    assert not torch.equal(saved["classifier.weight"], states[1]["classifier.weight"])


# --- early stopping -----------------------------------------------------------------------------
STUCK = {"learning_rate": 1e-9}  # updates too small to change a prediction: accuracy never improves


def _crash_after(monkeypatch, stop_epoch):
    """Make ``_write_checkpoint`` raise KeyboardInterrupt once the checkpoint of ``stop_epoch`` is written."""
    original = ft._write_checkpoint

    def crash(folder, epoch, *args):
        written = original(folder, epoch, *args)
        if epoch == stop_epoch:
            raise KeyboardInterrupt
        return written

    monkeypatch.setattr(ft, "_write_checkpoint", crash)
    return original


def _trained_epochs(monkeypatch):
    trained = []
    train_epoch = ft._train_epoch

    def record(*args, epoch, **kwargs):
        trained.append(epoch)
        return train_epoch(*args, epoch=epoch, **kwargs)

    monkeypatch.setattr(ft, "_train_epoch", record)
    return trained


@pytest.mark.parametrize(
    ("scores", "patience", "best", "stopped"),
    [
        ([0.5, 0.8, 0.7, 0.8, 0.9, 0.95], 2, 2, 4),  # 0.8 again is no improvement: stale for 2 epochs
        ([0.5, 0.8, 0.7, 0.9, 0.6, 0.85], 2, 4, 6),  # stale for 2 epochs only at the maximum: not early
        ([0.9, 0.8, 0.95], 1, 1, 2),
    ],
)
def test_patience_stops_after_epochs_without_improvement_and_keeps_the_best(
    tmp_path, monkeypatch, scores, patience, best, stopped
):
    planted = iter(scores)
    monkeypatch.setattr(ft, "_validate", lambda *a, **k: {"accuracy": next(planted)})
    texts = sentiment(8, 3, "probe").texts
    states, logits = {}, {}
    original = ft._write_checkpoint

    def remember(folder, epoch, model, *args):
        states[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        logits[epoch] = _logits(model, texts)  # eval mode; the next epoch sets train mode again
        return original(folder, epoch, model, *args)

    monkeypatch.setattr(ft, "_write_checkpoint", remember)
    trained = _trained_epochs(monkeypatch)
    result = _run(tmp_path, "early", epochs=len(scores), patience=patience)
    assert trained == list(range(1, stopped + 1))
    assert [h["epoch"] for h in result.history] == trained
    assert (result.best_epoch, result.best_value) == (best, scores[best - 1])
    assert result.stopped_epoch == stopped
    assert result.stopped_early == (stopped < len(scores))
    record = json.loads((result.path / "tunescope_finetune.json").read_text())
    assert record["stopped_epoch"] == stopped and record["stopped_early"] == result.stopped_early
    assert record["config"]["patience"] == patience
    saved = load_file(str(result.path / "model.safetensors"))
    for key, value in saved.items():
        assert torch.equal(value, states[best][key]), key
    tuned = transformers.AutoModelForSequenceClassification.from_pretrained(result.path)
    torch.testing.assert_close(_logits(tuned, texts), logits[best], atol=1e-6, rtol=1e-5)
    assert not (result.path / "checkpoints").exists()


def test_early_stopping_is_reproducible_for_a_seed(tmp_path):
    first = _run(tmp_path, "first", epochs=4, patience=1, **STUCK)
    second = _run(tmp_path, "second", epochs=4, patience=1, **STUCK)
    assert first.stopped_early and first.stopped_epoch == second.stopped_epoch == 2
    assert first.best_epoch == second.best_epoch == 1
    for x, y in zip(first.history, second.history, strict=True):
        assert x["train_loss"] == y["train_loss"] and x["accuracy"] == y["accuracy"]
    a = load_file(str(first.path / "model.safetensors"))
    b = load_file(str(second.path / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("crash_epoch", [1, 3])  # mid-run; after the stopping epoch, before the export
def test_interrupted_early_stopping_run_resumes_and_stops_at_the_same_epoch(
    tmp_path, monkeypatch, crash_epoch
):
    options = {"epochs": 6, "patience": 2, **STUCK}
    straight = _run(tmp_path, "straight", **options)
    assert straight.stopped_early and straight.stopped_epoch == 3
    original = _crash_after(monkeypatch, crash_epoch)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "resumed", **options)
    assert not (tmp_path / "resumed" / "tunescope_finetune.json").exists()

    monkeypatch.setattr(ft, "_write_checkpoint", original)
    trained = _trained_epochs(monkeypatch)
    resumed = _run(tmp_path, "resumed", **options)
    assert trained == list(range(crash_epoch + 1, 4))
    assert (resumed.stopped_epoch, resumed.stopped_early, resumed.best_epoch) == (3, True, 1)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    a = load_file(str(straight.path / "model.safetensors"))
    b = load_file(str(resumed.path / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)

    again = _run(tmp_path, "resumed", **options)  # finished: reused, nothing trained
    assert trained == list(range(crash_epoch + 1, 4))
    assert (again.stopped_epoch, again.stopped_early) == (3, True)


def test_record_written_before_early_stopping_still_loads(tmp_path, monkeypatch):
    finished = _run(tmp_path, "old", epochs=2)
    path = finished.path / "tunescope_finetune.json"
    record = json.loads(path.read_text())
    for entry in ("stopped_epoch", "stopped_early"):
        del record[entry]
    del record["config"]["patience"]
    path.write_text(json.dumps(record))
    monkeypatch.setattr(ft, "_train_epoch", lambda *a, **k: pytest.fail("a finished run was retrained"))
    result = _run(tmp_path, "old", epochs=2)  # the key of a run without patience is as it was
    assert (result.stopped_epoch, result.stopped_early) == (2, False)
    assert result.config.patience is None and result.best_epoch == finished.best_epoch


# --- bad input: one clear error, nothing written ------------------------------------------------
def _refused(tmp_path, error, match, **kwargs):
    out = tmp_path / "refused"
    options = {"train": sentiment(16, 1, "train"), "validation": sentiment(8, 2, "validation"), **kwargs}
    model = options.pop("model", None) or tiny_model("bert")
    config = FinetuneConfig(**{**FAST, "epochs": 1, **options.pop("config", {})})
    with pytest.raises(error, match=match) as info:
        finetune(model, options.pop("task", None), out, config=config, progress=False, **options)
    assert "\n" not in str(info.value)
    assert not out.exists()


def test_head_that_does_not_fit_the_task(tmp_path):
    three = tiny_model("bert", task="classifier", num_labels=3)
    _refused(tmp_path, InputError, "3-way classifier head but the task has 2 labels.*base model", model=three)
    folder = tmp_path / "three"
    three.model.save_pretrained(folder)
    three.tokenizer.save_pretrained(folder)
    _refused(tmp_path, InputError, "3-way classifier head but the task has 2 labels", model=str(folder))
    regression = dict(train=graded(16, 1, "train"), validation=graded(8, 2, "validation"))
    two = tiny_model("bert", task="classifier")
    _refused(
        tmp_path, InputError, "classification head but the task is a regression", model=two, **regression
    )


def test_layers_out_of_range(tmp_path):
    _refused(
        tmp_path, InputError, r"train_layers \[5\] out of range.*1\.\.2", config={"train_layers": (1, 5)}
    )
    _refused(tmp_path, InputError, r"classifier_layer 3 out of range.*1\.\.2", config={"classifier_layer": 3})
    with pytest.raises(InputError, match="classifier_layer must be"):
        FinetuneConfig(classifier_layer=0)
    # with the model cut after layer 1, layer 2 no longer exists
    _refused(tmp_path, InputError, r"1\.\.1", config={"classifier_layer": 1, "train_layers": (2,)})


def test_too_little_data(tmp_path):
    _refused(tmp_path, DataError, "train split has 1 example", train=sentiment(1, 1, "train"))
    _refused(tmp_path, DataError, "validation split has 0 example", validation=sentiment(0, 1, "validation"))
    three = Examples(["good", "bad"], None, np.array([0, 2]), "tiny3", "train", ("a", "b", "c"))
    _refused(
        tmp_path,
        DataError,
        "2 training examples for 3 classes",
        train=three,
        validation=three,
        model=tiny_model("bert", task="classifier", num_labels=3),
    )
    _refused(tmp_path, DataError, "no labels", validation=Examples(["a", "b"], None, None, "x", "test", None))


def test_bad_options_and_names(tmp_path):
    with pytest.raises(UnknownNameError, match="unknown adapter 'prefix'; choose one of: lora"):
        FinetuneConfig(adapter="prefix")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="adapter_layers needs an adapter"):
        FinetuneConfig(adapter_layers=(1,))
    with pytest.raises(InputError, match="learning_rate must be positive"):
        FinetuneConfig(learning_rate=0)
    with pytest.raises(InputError, match=r"patience must be at least 1 or None \(--patience\), got 0"):
        FinetuneConfig(patience=0)
    with pytest.raises(InputError, match="patience needs eval_each_epoch=True"):
        FinetuneConfig(epochs=3, patience=1, eval_each_epoch=False)
    with pytest.raises(UnknownNameError, match="unknown task"):
        finetune(None, "no-such-task", tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_out_of_another_run_is_refused(classified, tmp_path):
    with pytest.raises(InputError, match="other settings"):
        _run(classified.path.parent, "classifier", epochs=1)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        _run(tmp_path, "busy", epochs=1)


# --- command line -------------------------------------------------------------------------------
@pytest.fixture
def cli(monkeypatch):
    """``tunescope.cli.main.main`` with the finetune command registered (until main.py registers it)."""
    from tunescope.cli import main as cli_main
    from tunescope.cli.finetune import register

    app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
    register(app)

    @app.command("noop", hidden=True)
    def _noop() -> None:  # a second command keeps typer from flattening the app into one command
        """Unused."""

    monkeypatch.setattr(cli_main, "app", app)
    return cli_main.main


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-bert-base")
    encoder = tiny_model("bert")
    encoder.model.save_pretrained(folder)
    encoder.tokenizer.save_pretrained(folder)
    return str(folder)


def test_cli_finetune(cli, tiny_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TUNESCOPE_NO_PROGRESS", "1")
    out = tmp_path / "tuned"
    args = ["finetune", tiny_folder, "--task", "movie-sentiment", "--out", str(out), "--train-limit", "24"]
    code = cli([*args, "--validation-limit", "8", "--batch-size", "8", "--lr", "1e-3", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "best accuracy" in printed and str(out) in printed
    assert transformers.AutoConfig.from_pretrained(out).num_labels == get_task("movie-sentiment").num_labels


def test_cli_finetune_patience(cli, tiny_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TUNESCOPE_NO_PROGRESS", "1")
    out = tmp_path / "tuned"
    args = ["finetune", tiny_folder, "--task", "movie-sentiment", "--out", str(out), "--train-limit", "24"]
    args += ["--validation-limit", "8", "--batch-size", "8", "--lr", "1e-9", "--device", "cpu"]
    code = cli([*args, "--epochs", "5", "--patience", "1"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "stopped early after epoch 2/5: accuracy had not improved for 1 epoch(s)" in printed
    assert "at epoch 1/5" in printed


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--train-layers", "7"], "train_layers [7] out of range"),
        (["--train-layers", "x"], "takes layer numbers"),
        (["--adapter", "prefix"], "unknown adapter"),
        (["--train-limit", "1"], "train split has 1 example"),
        (["--patience", "0"], "patience must be at least 1"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(cli, tiny_folder, tmp_path, capsys, extra, words):
    out = tmp_path / "never"
    code = cli(
        ["finetune", tiny_folder, "--task", "movie-sentiment", "--out", str(out), "--device", "cpu", *extra]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err, err
    assert words in err
    assert not out.exists()


# --- the embedded model -------------------------------------------------------------------------
@pytest.mark.slow
def test_minilm_movie_sentiment_one_epoch(tmp_path):
    task = get_task("movie-sentiment")
    config = FinetuneConfig(epochs=1, learning_rate=1e-4, batch_size=16)
    result = finetune(
        None, task, tmp_path / "minilm", config=config, train_limit=400, validation_limit=200, progress=False
    )
    assert result.best_value > 0.6
    assert result.trainable_parameters == result.total_parameters > 22_000_000
    tuned = load_classifier(result.path)
    assert tuned.num_layers == 6 and tuned.model.config.id2label[1] == "positive"


# ------------------------------------------------------------------------------------------------
# batches: random or grouped by length
# ------------------------------------------------------------------------------------------------
def _lognormal_lengths(n, seed):
    return [int(v) for v in np.clip(np.random.default_rng(seed).lognormal(3.0, 0.7, n), 2, 512)]


@pytest.mark.parametrize("group", [True, False])
@pytest.mark.parametrize(("n", "size"), [(1, 4), (7, 4), (203, 4), (1000, 8), (4001, 32)])
def test_each_epoch_visits_every_row_once_in_ceil_n_over_b_batches(n, size, group):
    from tunescope.finetune.loop import _batches

    config = FinetuneConfig(batch_size=size, group_by_length=group)
    lengths = _lognormal_lengths(n, n)
    for epoch in (1, 2):
        batches = _batches(lengths, config, epoch)
        assert len(batches) == -(-n // size)
        assert all(1 <= len(b) <= size for b in batches)
        assert sorted(i for b in batches for i in b) == list(range(n))


@pytest.mark.parametrize("group", [True, False])
def test_batches_depend_only_on_seed_and_epoch(group):
    from tunescope.finetune.loop import _batches

    lengths = _lognormal_lengths(500, 0)
    config = FinetuneConfig(batch_size=8, seed=3, group_by_length=group)
    first = _batches(lengths, config, 1)
    assert _batches(lengths, config, 1) == first
    assert _batches(lengths, config, 2) != first
    assert _batches(lengths, FinetuneConfig(batch_size=8, seed=4, group_by_length=group), 1) != first


def test_length_grouped_batches_pad_less_and_start_with_the_longest():
    from tunescope.finetune.loop import _batches

    lengths = _lognormal_lengths(4000, 1)

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    grouped = _batches(lengths, FinetuneConfig(batch_size=32), 1)
    shuffled = _batches(lengths, FinetuneConfig(batch_size=32, group_by_length=False), 1)
    assert padded(grouped) < 0.4 * padded(shuffled)  # random batches are 3.8x the real tokens here
    assert padded(grouped) < 1.25 * sum(lengths)
    assert max(lengths[i] for i in grouped[0]) == max(lengths)
    # the order of the batches is shuffled: their lengths are not sorted
    tops = [max(lengths[i] for i in b) for b in grouped]
    assert tops[1:] != sorted(tops[1:], reverse=True)


def test_length_grouped_training_is_reproducible_for_a_seed(tmp_path):
    # learning itself is tested above: every other test trains with length-grouped batches (the default)
    first, second = (_run(tmp_path, name, epochs=2, seed=5, group_by_length=True) for name in ("a", "b"))
    for x, y in zip(first.history, second.history, strict=True):
        assert x["train_loss"] == y["train_loss"] and x["accuracy"] == y["accuracy"]
    a = load_file(str(first.path / "model.safetensors"))
    b = load_file(str(second.path / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    shuffled = _run(tmp_path, "c", epochs=2, seed=5, group_by_length=False)
    assert shuffled.history[0]["train_loss"] != first.history[0]["train_loss"]


def test_features_are_tokenised_once_per_tokenizer_examples_and_length(tmp_path):
    from tunescope.inference import _tokenise, features

    examples = Examples(
        ["a good film", "bad", "fine enough"], None, np.array([1, 0, 1]), "demo", "train", ("n", "p")
    )
    first = tiny_model("bert", num_layers=1)
    second = load_classifier(
        save_model(first, tmp_path / "copy"), num_labels=2
    )  # another load, same tokenizer
    calls = []

    class Counting:
        def __init__(self, tokenizer):
            self.tokenizer = tokenizer
            self.backend_tokenizer = tokenizer.backend_tokenizer

        def __call__(self, *args, **kwargs):
            calls.append(args)
            return self.tokenizer(*args, **kwargs)

    rows = features(Counting(first.tokenizer), examples, 16)
    assert features(Counting(second.tokenizer), examples, 16) == rows and len(calls) == 1
    assert rows == _tokenise(first.tokenizer, examples, 16)  # the cache changes no row
    features(Counting(second.tokenizer), examples, 8)  # another length
    relabelled = Examples(examples.texts, None, np.array([0, 0, 1]), "demo", "train", ("n", "p"))
    assert [r["labels"] for r in features(Counting(second.tokenizer), relabelled, 16)] == [0, 0, 1]
    assert len(calls) == 3


def test_features_of_one_vocabulary_follow_each_tokenizers_model_inputs():
    # DistilBERT and MPNet load BERT's vocabulary but take no token_type_ids: the cache must not hand
    # them the rows it kept for BERT (their forward fails on the extra input)
    import copy

    from tunescope.inference import features

    examples = Examples(["a good film", "bad"], None, np.array([1, 0]), "demo", "train", ("n", "p"))
    bert = tiny_model("bert", num_layers=1).tokenizer
    without = copy.deepcopy(bert)
    without.model_input_names = ["input_ids", "attention_mask"]
    assert "token_type_ids" in features(bert, examples, 16)[0]
    assert "token_type_ids" not in features(without, examples, 16)[0]
    assert "token_type_ids" in features(bert, examples, 16)[0]


# --- precision ----------------------------------------------------------------------------------
def test_bf16_trains_under_autocast_with_float32_weights_and_learns(tmp_path, monkeypatch):
    seen = []
    original = ft._train_epoch

    def watching(model, *args, **kwargs):
        handle = model.register_forward_hook(
            lambda m, a, out: seen.append((torch.is_autocast_enabled("cpu"), out.logits.dtype))
        )
        try:
            return original(model, *args, **kwargs)
        finally:
            handle.remove()

    monkeypatch.setattr(ft, "_train_epoch", watching)
    result = _run(tmp_path, "bf16", epochs=3, precision="bf16")
    assert seen and all(on and dtype == torch.bfloat16 for on, dtype in seen)
    assert result.config.precision == "bf16" and result.best_value > 0.9
    weights = load_file(str(result.path / "model.safetensors"))
    assert all(w.dtype == torch.float32 for w in weights.values())
    seen.clear()
    fp32 = _run(tmp_path, "fp32", epochs=1)
    assert seen and not any(on for on, _ in seen) and {d for _, d in seen} == {torch.float32}
    assert fp32.config.precision == "fp32"


def test_bf16_training_is_reproducible_and_resumes(tmp_path):
    first, second = (_run(tmp_path, name, epochs=2, seed=3, precision="bf16") for name in ("a", "b"))
    assert [h["train_loss"] for h in first.history] == [h["train_loss"] for h in second.history]
    again = _run(tmp_path, "a", epochs=2, seed=3, precision="bf16")  # the finished run, found on disk
    assert again.history == first.history


def test_auto_precision_is_resolved_from_the_hardware_and_keys_the_run(tmp_path, monkeypatch):
    from tunescope.finetune import resolve_precision
    from tunescope.finetune.record import _run_key

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"  # asked for by name: used even where emulated
    plain = _run(tmp_path, "plain", epochs=1)
    auto = _run(tmp_path, "plain", epochs=1, precision="auto")  # the same run: reused, not retrained
    assert auto.config.precision == "fp32" and auto.history == plain.history
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert resolve_precision("auto", "cpu") == "bf16"
    assert resolve_precision("auto", "meta") == "fp32"
    labels = type("L", (), {"kind": "sequence", "regression": False, "names": ("n", "p"), "metrics": ["a"]})
    data = sentiment(4, 0, "train")
    keys = {p: _run_key(FinetuneConfig(precision=p), labels, "f", data, data) for p in ("fp32", "bf16")}
    assert keys["fp32"] != keys["bf16"]
    with pytest.raises(UnknownNameError, match="fp16"):
        FinetuneConfig(precision="fp16")  # type: ignore[arg-type]
    with pytest.raises(UnknownNameError, match="fp16"):
        resolve_precision("fp16", "cpu")
