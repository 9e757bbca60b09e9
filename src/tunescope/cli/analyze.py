"""``tunescope analyze``: every stage, one run folder, one report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tunescope.cli import _options as opt


def analyze(
    ctx: typer.Context,
    model: Annotated[
        str | None, typer.Argument(help="Pre-trained model (default: the embedded model).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder.")] = Path("runs/latest"),
    task: Annotated[str, typer.Option("--task", "-t", help="Task name.")] = "movie-sentiment",
    tuned: Annotated[str | None, typer.Option("--tuned", help="Fine-tuned model to compare with.")] = None,
    split: opt.Split = "validation",
    limit: opt.AnalysisLimit = 1000,
    pooling: Annotated[
        str,
        typer.Option(
            "--pooling",
            help="Sentence vector per text: mean (non-padding tokens, [CLS]/[SEP] included), mean_no_special "
            "or cls; several, e.g. cls,mean, run the representational stages once per pooling.",
        ),
    ] = "mean",
    data_dir: opt.DataDir = None,
    batch_size: opt.BatchSize = 32,
    stages: Annotated[str | None, typer.Option("--stages", help="Comma-separated stages to run.")] = None,
    finetune: Annotated[
        bool,
        typer.Option(
            "--finetune/--no-finetune",
            help="Without --tuned, fine-tune the model on the task (kept in RUN/models/tuned).",
        ),
    ] = True,
    epochs: Annotated[
        int, typer.Option("--epochs", help="Most fine-tuning epochs (every experiment; see --patience).")
    ] = 3,
    lr: Annotated[float, typer.Option("--lr", help="Peak fine-tuning learning rate (AdamW).")] = 5e-5,
    train_limit: Annotated[
        int, typer.Option("--train-limit", min=0, help="Training examples for fine-tuning (0 = all).")
    ] = 0,
    experiment_train_limit: Annotated[
        int,
        typer.Option(
            "--experiment-train-limit",
            min=0,
            help="Training examples of every arm of the fine-tuning experiments (ffn, selection, heads "
            "prune-then-tune), their full arm included (0 = as --train-limit).",
        ),
    ] = 2000,
    patience: Annotated[
        int,
        typer.Option(
            "--patience",
            help="Stop fine-tuning once the validation metric has not improved for N epochs "
            "(--epochs: the most; N >= --epochs never stops early).",
        ),
    ] = 1,
    precision: opt.Precision = "auto",
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="TOML file with these settings (keys as in AnalyzeConfig) and one \\[STAGE] table of "
            "options per stage; flags given as well win over it.",
        ),
    ] = None,
    device: opt.Device = "auto",
    seed: opt.Seed = 0,
    seeds: Annotated[
        str | None,
        typer.Option(
            "--seeds", help="Fine-tuning seeds, e.g. 0,1,2: the fine-tuning stages run once per seed."
        ),
    ] = None,
    n_boot: Annotated[
        int, typer.Option("--n-boot", help="Bootstrap resamples behind every interval (at least 100).")
    ] = 1000,
    confidence: Annotated[
        float, typer.Option("--confidence", help="Coverage of the intervals, in (0, 1).")
    ] = 0.95,
) -> None:
    """Run the analyses and write RUN/manifest.json, RUN/results/*.csv, RUN/figures and RUN/report.html.

    With no arguments: the embedded all-MiniLM-L6-v2 on the builtin movie-sentiment task, offline.
    A rerun of the same command skips the stages already done. Each stage's own options are flags
    --STAGE.OPTION (below, by stage) or a \\[STAGE] table in the --config file.

    Examples:

        tunescope analyze --out runs/demo

        tunescope analyze bert-base-uncased --tuned my-sst2-model --task sst2 --data-dir glue/ --out runs/sst2

        tunescope analyze --config run.toml --variability.budget 3
    """
    from tunescope.cli._stage_flags import explicit_params, given_stage_options
    from tunescope.pipeline import AnalyzeConfig
    from tunescope.pipeline import analyze as run_analyze

    values: dict[str, Any] = {
        "model": model,
        "out": out,
        "task": task,
        "tuned": tuned,
        "split": split,
        "limit": limit or None,
        "pooling": pooling,
        "data_dir": str(data_dir) if data_dir else None,
        "batch_size": batch_size,
        "stages": tuple(s.strip() for s in stages.split(",") if s.strip()) if stages else None,
        "finetune": finetune,
        "epochs": epochs,
        "learning_rate": lr,
        "train_limit": train_limit or None,
        "experiment_train_limit": experiment_train_limit or None,
        "patience": patience,
        "precision": precision,
        "device": device,
        "seed": seed,
        "seeds": _seeds(seeds) if seeds is not None else None,
        "n_boot": n_boot,
        "confidence": confidence,
    }
    field = {"lr": "learning_rate"}
    given = {field.get(name, name) for name in explicit_params(ctx)}
    overrides = {name: value for name, value in values.items() if name in given}
    options = given_stage_options(ctx)
    if config_file is not None:
        config = AnalyzeConfig.from_toml(config_file, overrides=overrides, options=options)
    else:
        config = AnalyzeConfig(**overrides, options=options)
    root = run_analyze(config)
    typer.echo(f"report: {root / 'report.html'}")


def _seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` as ``(0, 1, 2)``; anything else is a bad --seeds value."""
    from tunescope.errors import InputError

    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(
            f"--seeds takes whole numbers separated by commas, such as 0,1,2; got {text!r}"
        ) from None


def register(app: typer.Typer) -> None:
    from tunescope.cli._stage_flags import StageOptionsCommand

    app.command("analyze", cls=StageOptionsCommand)(analyze)
