"""Stage options are declared once: the config, the ``--stage.option`` flags, their old aliases and a
``--config`` TOML file all give the same configuration, and every bad value is one error."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path

import pytest

from tunescope import pipeline, runfolder
from tunescope.cli import analyze as analyze_cli
from tunescope.cli.main import main
from tunescope.errors import InputError, UnknownNameError
from tunescope.options import make_options, option, parse_text, specs
from tunescope.pipeline import STAGES, AnalyzeConfig, Stage
from tunescope.stages import discover


@pytest.fixture
def cli_config(monkeypatch):
    """The AnalyzeConfig a command line builds (the run itself is not the subject here)."""
    seen: list[AnalyzeConfig] = []

    def capture(config: AnalyzeConfig) -> Path:
        seen.append(config)
        return config.out

    monkeypatch.setattr(pipeline, "analyze", capture)

    def build(*args: str) -> AnalyzeConfig:
        seen.clear()
        assert main(["analyze", *args]) == 0
        return seen[0]

    return build


def test_every_stage_option_has_a_default_a_help_line_and_a_flag():
    stages = discover()
    with_options = [name for name, stage in stages.items() if stage.options is not None]
    assert {"similarity", "ffn", "probes", "variability", "domains"} <= set(with_options)
    config = AnalyzeConfig()
    for name in with_options:
        cls = stages[name].options
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
        assert config.options_for(name) == cls()
        for spec in specs(name, cls):
            assert spec.help and spec.flag == f"--{name}.{spec.name.replace('_', '-')}"
            assert f"{name}.{spec.name}" in config.to_json()


def test_flags_file_and_aliases_give_the_same_config(tmp_path, cli_config):
    flags = cli_config(
        "--out",
        str(tmp_path / "run"),
        "--limit",
        "8",
        "--epochs",
        "2",
        "--variability.budget",
        "3",
        "--ffn.layers",
        "2-3",
        "--similarity.rsa",
        "none",
        "--probes.tasks",
        "pos",
        "--domains.ood-tasks",
        "nyt-sentiment",
    )
    file = tmp_path / "run.toml"
    file.write_text(
        f'out = "{tmp_path / "run"}"\nlimit = 8\nepochs = 2\n'
        '[variability]\nbudget = 3\n[ffn]\nlayers = [2, 3]\n[similarity]\nrsa = "none"\n'
        '[probes]\ntasks = ["pos"]\n[domains]\nood_tasks = ["nyt-sentiment"]\n'
    )
    from_file = cli_config("--config", str(file))
    aliases = cli_config(
        "--out",
        str(tmp_path / "run"),
        "--limit",
        "8",
        "--epochs",
        "2",
        "--budget",
        "3",
        "--ffn-layers",
        "2,3",
        "--rsa",
        "none",
        "--probe-tasks",
        "pos",
        "--ood-tasks",
        "nyt-sentiment",
    )
    library = AnalyzeConfig(
        out=tmp_path / "run",
        limit=8,
        epochs=2,
        options={
            "variability": {"budget": 3},
            "ffn": {"layers": (2, 3)},
            "similarity": {"rsa": None},
            "probes": {"tasks": ("pos",)},
            "domains": {"ood_tasks": ("nyt-sentiment",)},
        },
    )
    assert flags == from_file == aliases == library
    assert flags.digest() == library.digest()
    assert flags.options_for("ffn").layers == (2, 3) and flags.options_for("similarity").rsa is None


def test_flags_win_over_the_file_and_the_rest_keeps_the_defaults(tmp_path, cli_config):
    file = tmp_path / "run.toml"
    file.write_text("limit = 8\n[variability]\nbudget = 3\n")
    config = cli_config("--config", str(file), "--limit", "16", "--variability.budget", "4")
    assert config.limit == 16 and config.options_for("variability").budget == 4
    assert config.epochs == AnalyzeConfig().epochs
    assert cli_config("--config", str(file), "--limit", "0").limit is None  # 0 = all, as the flag says


def test_the_cli_defaults_are_the_config_defaults():
    defaults = {f.name: f.default for f in dataclasses.fields(AnalyzeConfig) if f.name != "options"}
    renamed = {"lr": "learning_rate"}
    for param in inspect.signature(analyze_cli.analyze).parameters.values():
        name = renamed.get(param.name, param.name)
        if name in defaults and param.default is not inspect.Parameter.empty:
            same = param.default == defaults[name]
            assert same or (param.default in (0, None) and defaults[name] is None), name


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[variability]\nbudgt = 2\n", "unknown option of stage variability 'budgt'"),
        ("[variabilty]\nbudget = 2\n", "unknown stage 'variabilty'"),
        ("[layers]\nx = 1\n", "stage layers has no options"),
        ("limit = 'x'\n", "limit takes a whole number"),
        ("lr = 0.1\n", "unknown config field 'lr'"),
        ("limit = \n", "is not valid TOML"),
        ("[variability]\nbudget = true\n", "takes a whole number, got True"),
        ("[ffn]\nlayers = [1, 'x']\n", "--ffn.layers takes a whole number, got 'x'"),
        ("[ffn]\nlayers = '3-x'\n", "--ffn.layers takes layer numbers"),
    ],
)
def test_a_bad_config_file_is_one_error_and_writes_nothing(tmp_path, capsys, text, message):
    file = tmp_path / "run.toml"
    file.write_text(text)
    assert main(["analyze", "--config", str(file), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_a_missing_config_file_is_named(tmp_path, capsys):
    assert main(["analyze", "--config", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "run")]) == 2
    assert "nope.toml: no such file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--variability.budget", "0", "at least 1 layer"),
        ("--variability.budget", "two", "takes a whole number"),
        ("--similarity.measures", "nope", "unknown similarity measure"),
        ("--similarity.rsa", "cosine", "takes RDM,COMPARE"),
        ("--ffn.layers", "3-1", "runs backwards"),
        ("--probes.tasks", "noun", "unknown probe task"),
    ],
)
def test_a_bad_stage_flag_is_one_error_and_writes_nothing(tmp_path, capsys, flag, value, message):
    assert main(["analyze", flag, value, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_the_change_note_names_the_stage_option():
    before = AnalyzeConfig().to_json()
    after = AnalyzeConfig(options={"variability": {"budget": 3}}).to_json()
    assert runfolder.config_changes(before, after) == "variability.budget 2 -> 3"
    assert AnalyzeConfig().digest() != AnalyzeConfig(options={"variability": {"budget": 3}}).digest()
    assert AnalyzeConfig().digest() == AnalyzeConfig(options={"variability": {"budget": 2}}).digest()


@dataclass(frozen=True)
class _EntropyOptions:
    threshold: float = option(0.5, help="Entropy threshold.")
    heads: tuple[int, ...] = option((), help="Heads to look at.")


def test_a_plugin_stage_gets_its_options_flags_and_file_table(monkeypatch, tmp_path, cli_config):
    discover()
    stage = Stage("entropy", "Entropy", lambda ctx: [], options=_EntropyOptions)
    monkeypatch.setitem(STAGES, "entropy", stage)
    assert AnalyzeConfig().options_for("entropy") == _EntropyOptions()
    config = cli_config("--entropy.threshold", "0.25", "--entropy.heads", "1,2")
    assert config.options_for("entropy") == _EntropyOptions(threshold=0.25, heads=(1, 2))
    file = tmp_path / "run.toml"
    file.write_text("[entropy]\nthreshold = 1\n")  # an int where a float is declared: taken as 1.0
    assert cli_config("--config", str(file)).options_for("entropy").threshold == 1.0


def test_make_options_checks_types():
    cls = _EntropyOptions
    assert make_options("entropy", cls, None) == cls()
    assert make_options("entropy", cls, {"heads": [3, 1]}).heads == (3, 1)
    with pytest.raises(InputError, match="--entropy.threshold takes a number"):
        make_options("entropy", cls, {"threshold": [1]})
    with pytest.raises(UnknownNameError, match="choose one of: heads, threshold"):
        make_options("entropy", cls, {"thresh": 1.0})
    with pytest.raises(InputError, match="must be a _EntropyOptions or a mapping"):
        make_options("entropy", cls, 3)


@pytest.mark.parametrize(
    ("text", "hint", "value"),
    [
        ("3", int, 3),
        ("0.5", float, 0.5),
        ("yes", bool, True),
        ("off", bool, False),
        ("a, b", tuple[str, ...], ("a", "b")),
        ("1,2", tuple[int, ...], (1, 2)),
        ("none", tuple[str, ...], ()),
        ("none", int | None, None),
        ("4", int | None, 4),
    ],
)
def test_parse_text(text, hint, value):
    assert parse_text(text, hint, "--x") == value


def test_options_for_an_unknown_stage():
    with pytest.raises(InputError, match="stage layers has no options"):
        AnalyzeConfig().options_for("layers")
