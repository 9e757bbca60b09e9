"""``tunescope extract``: every layer's representations of a task's texts, to a safetensors file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunescope.cli import _options as opt


def extract(
    model: Annotated[
        str | None, typer.Argument(help="Model folder or hub id (default: the embedded model).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .safetensors file.")] = Path(
        "reps.safetensors"
    ),
    task: opt.Task = None,
    pooling: Annotated[
        str,
        typer.Option(
            "--pooling",
            help=(
                "mean (average of the non-padding tokens, [CLS]/[SEP] included), mean_no_special (the same "
                "without the special tokens), cls (first token) or tokens (one vector per word)."
            ),
        ),
    ] = "mean",
    word_pooling: Annotated[
        str, typer.Option("--word-pooling", help="first or mean sub-token (tokens).")
    ] = "first",
    layers: Annotated[
        str | None, typer.Option("--layers", help="Comma-separated layers, e.g. 0,3,6.")
    ] = None,
    split: opt.Split = "validation",
    limit: opt.AnalysisLimit = None,
    data_dir: opt.DataDir = None,
    data: opt.DataFile = None,
    text: opt.TextColumn = None,
    text_pair: opt.PairColumn = None,
    label: opt.LabelColumn = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    max_length: Annotated[int | None, typer.Option("--max-length")] = None,
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help="Resumable shard cache.")] = None,
    device: opt.Device = "auto",
    seed: opt.Seed = 0,
) -> None:
    """Extract all layers (0 = embeddings) in one pass and save them.

    Examples:

        tunescope extract --task movie-sentiment --pooling mean --out reps.safetensors

        tunescope extract --task movie-sentiment --pooling mean_no_special --out reps.safetensors

        tunescope extract path/to/model --data my.csv --text sentence --label label --out reps.safetensors
    """
    import torch

    from tunescope._io import check_output_dir, check_output_file
    from tunescope.extract import POOLINGS
    from tunescope.extract import extract as run_extract
    from tunescope.locations import parse_layers
    from tunescope.models import load_encoder
    from tunescope.pipeline import resolve_device

    out = check_output_file(out)  # before anything slow
    if cache_dir is not None:
        check_output_dir(cache_dir, "--cache-dir")
    if pooling not in POOLINGS:
        from tunescope.errors import UnknownNameError

        raise UnknownNameError("pooling", pooling, POOLINGS)
    chosen = parse_layers(layers, option="--layers", first=0) if layers else None
    wanted = list(chosen) if chosen is not None else None
    torch.manual_seed(seed)
    examples = opt.load_examples(
        task,
        data,
        text=text,
        text_pair=text_pair,
        label=label,
        split=split,
        data_dir=data_dir,
        limit=limit or None,
    )
    encoder = load_encoder(model, device=str(resolve_device(device)))
    reps = run_extract(
        encoder,
        examples,
        pooling=pooling,
        word_pooling=word_pooling,
        layers=wanted,
        batch_size=batch_size,
        max_length=max_length,
        cache_dir=cache_dir,
    )
    reps.meta.update({"task": examples.task, "split": examples.split})
    reps.save(out)
    typer.echo(
        f"wrote {reps.n_rows} rows x {len(reps)} layers x {reps[reps.layers[0]].shape[1]} dims to {out}"
    )


def register(app: typer.Typer) -> None:
    app.command("extract")(extract)
