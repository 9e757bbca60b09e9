"""The command line: exit codes, one-line errors, and the subcommands on tiny and embedded models."""

from __future__ import annotations

import json

import pytest

from tunescope.cli.main import main
from tunescope.extract import Representations
from tunescope.testing.tiny import tiny_model

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-bert-cli")
    encoder = tiny_model("bert")
    encoder.model.save_pretrained(folder)
    encoder.tokenizer.save_pretrained(folder)
    return str(folder)


def _one_line_error(capsys, code, expected_words):
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err, err
    assert expected_words in err


def test_extract_task_to_file(tmp_path, tiny_folder, capsys):
    out = tmp_path / "reps.safetensors"
    code = main(
        [
            "extract",
            tiny_folder,
            "--task",
            "movie-sentiment",
            "--limit",
            "20",
            "--pooling",
            "mean",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert code == 0, capsys.readouterr().err
    reps = Representations.load(out)
    assert reps.n_rows == 20 and reps.pooling == "mean" and reps.meta["task"] == "movie-sentiment"


def test_extract_user_file_tokens(tmp_path, tiny_folder, capsys):
    data = tmp_path / "mine.csv"
    data.write_text("sentence,label\nhello there world,pos\nthis is bad,neg\n", encoding="utf-8")
    out = tmp_path / "tok.safetensors"
    code = main(
        [
            "extract",
            tiny_folder,
            "--data",
            str(data),
            "--text",
            "sentence",
            "--label",
            "label",
            "--pooling",
            "tokens",
            "--layers",
            "0,2",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    reps = Representations.load(out)
    assert reps.layers == (0, 2) and reps.n_rows == 6


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["extract", "TINY", "--pooling", "max", "--out", "OUT"], "unknown pooling 'max'"),
        (["extract", "TINY", "--task", "nope", "--out", "OUT"], "unknown task 'nope'"),
        (["extract", "TINY", "--layers", "a,b", "--out", "OUT"], "--layers takes layer numbers"),
        (["extract", "/no/such/model", "--out", "OUT"], "/no/such/model"),
        (["extract", "TINY", "--data", "/no/such.csv", "--text", "t", "--out", "OUT"], "/no/such.csv"),
        (["analyze", "TINY", "--pooling", "tokens", "--out", "RUN"], "unknown sentence pooling"),
        (["report", "RUN"], "not a tunescope run folder"),
        (["compare", "TINY", "TINY", "--measure", "cka", "--out", "RUN"], "unknown similarity measure 'cka'"),
        (["compare", "TINY", "TINY", "--rsa", "euclid,spearman", "--out", "RUN"], "unknown RDM method"),
        (["compare", "TINY", "TINY", "--rsa", "correlation", "--out", "RUN"], "takes RDM,COMPARE"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, tiny_folder, capsys, args, words):
    out, run = tmp_path / "out.safetensors", tmp_path / "run"
    run.mkdir()
    args = [{"TINY": tiny_folder, "OUT": str(out), "RUN": str(run)}.get(a, a) for a in args]
    _one_line_error(capsys, main(args), words)
    assert not out.exists()


def test_compare_two_models(tmp_path, tiny_folder, capsys):
    out = tmp_path / "cmp"
    code = main(
        [
            "compare",
            tiny_folder,
            tiny_folder,
            "--limit",
            "24",
            "--out",
            str(out),
            "--device",
            "cpu",
            "-m",
            "linear_cka",
            "-m",
            "rbf_cka",
        ]
    )
    assert code == 0, capsys.readouterr().err
    rows = (out / "results" / "cka.csv").read_text().splitlines()
    assert rows[0] == "pooling,model_a,layer_a,model_b,layer_b,measure,split,value"
    # the same model twice: A and B agree exactly, layer by layer
    same = [r for r in (row.split(",") for row in rows[1:]) if r[1] == "A" and r[3] == "B" and r[2] == r[4]]
    assert same and all(float(r[-1]) == pytest.approx(1.0) for r in same)
    assert (out / "results" / "rsa.csv").exists() and (out / "report.html").exists()
    figures = {p.name for p in (out / "figures").iterdir()}
    assert {"linear_cka_A_vs_B.png", "rbf_cka_A_vs_A.png", "rsa_correlation_spearman_A_vs_B.png"} <= figures


def test_offline_hub_id_names_the_fix(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _one_line_error(capsys, main(["info", "nonexistent-org/nonexistent-model-xyz"]), "local")


def test_usage_error_is_not_a_traceback(capsys):
    assert main(["extract", "--no-such-option"]) == 2


@pytest.mark.slow
def test_info_describes_embedded_model(capsys):
    assert main(["info", "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["family"] == "bert"
    assert (described["num_layers"], described["num_heads"], described["hidden_size"]) == (6, 12, 384)
    assert described["has_mlm_head"] is False
