"""Fine-tuning benchmark: seconds per epoch and accuracy of full, top-layer, LoRA and FFN-removed
fine-tuning, and the latency of the truncation sweep.

    python -m benchmarks.bench_finetune [--quick] [--device cpu|cuda] [--threads N] [--model DIR]

The embedded MiniLM (all-MiniLM-L6-v2, 22.7M parameters) on ``movie-sentiment``: 1,500 training
examples, batch 32, ``max_length`` 128, one epoch, validation accuracy on 500 examples before (fresh
head) and after. Three ways of fine-tuning, each at its customary learning rate:

* ``full``: every parameter, AdamW at 5e-5;
* ``layers_5_6``: only the top two layers and the head (``train_layers=(5, 6)``), 1e-4;
* ``lora_r8``: LoRA on every linear of all six layers plus the head, 5e-4 (needs peft).

Thin over the public API: ``load_classifier`` + ``evaluate`` for the "before" accuracy (the same
seeded head :func:`tunescope.finetune.finetune` starts from) and ``finetune`` for the rest; the
seconds are the ones ``finetune`` records per epoch (training only, evaluation separate).

Two more tables (skip them with ``--no-surgery``):

* **FFN removed vs full** (the ``ffn`` stage of ``analyze``; Sridhar & Sarah 2020): the FFN sublayer of
  ``L // 3`` layers is removed (``--ffn-layers``, default: the layers with the highest CKA between FFN
  input and layer output on the validation texts, :func:`tunescope.ffn.ffn_cka`), then the model
  is fine-tuned exactly like ``full`` (same seeded head, data, recipe, one epoch); the table gives the
  training seconds and their ratio to ``full``'s, the parameters and the accuracy. ``full`` is trained
  first, so any one-off warm-up (CUDA kernels, allocator) is charged to it.
* **Truncation sweep** (the ``truncation`` stage): the classifier (``full`` fine-tuned, else the fresh
  head) cut after layer ``k`` for ``k = L..1`` (:func:`tunescope.surgery.truncate`), evaluated on the
  validation examples; seconds per evaluation batch (median of 3 timed passes after one warm-up; 1 with
  ``--quick``; tokenisation and scoring included, as the stage measures it) and accuracy.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._common import markdown_table, save, timed
from tunescope.data import Examples, Task, get_task
from tunescope.ffn import choose_ffn_layers, default_count, ffn_cka
from tunescope.finetune import FinetuneConfig, FinetuneResult, finetune
from tunescope.inference import evaluate
from tunescope.models import Encoder, load_classifier, load_encoder
from tunescope.surgery import count_parameters, remove_ffn, truncate

MODES: dict[str, dict[str, object]] = {
    "full": {"learning_rate": 5e-5},
    "layers_5_6": {"learning_rate": 1e-4, "train_layers": (5, 6)},
    "lora_r8": {"learning_rate": 5e-4, "adapter": "lora", "lora_r": 8},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="300 training and 200 validation examples")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--model", default=None, help="model folder (default: the embedded MiniLM)")
    parser.add_argument("--train", type=int, default=1500)
    parser.add_argument("--validation", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: " + ", ".join(MODES))
    parser.add_argument("--ffn-layers", default=None, help="e.g. 2,5 (default: L // 3 layers chosen by CKA)")
    parser.add_argument("--no-surgery", action="store_true", help="skip the FFN and truncation tables")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n_train, n_val = (300, 200) if args.quick else (args.train, args.validation)
    task = get_task("movie-sentiment")
    train = task.load("train", limit=n_train)
    validation = task.load("validation", limit=n_val)

    torch.manual_seed(0)  # the seed finetune() initialises its fresh head with
    start = load_classifier(args.model, num_labels=2, problem_type="single_label_classification")
    before = evaluate(start, validation, device=args.device)["accuracy"]
    del start

    rows = []
    results: dict[str, FinetuneResult] = {}
    ffn_rows: list[dict[str, object]] = []
    truncation_rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as scratch:
        for mode in [m.strip() for m in args.modes.split(",")]:
            if mode not in MODES:
                raise SystemExit(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
            options = MODES[mode]
            if options.get("adapter") and importlib.util.find_spec("peft") is None:
                print(f"skipping {mode}: peft is not installed")
                continue
            config = FinetuneConfig(epochs=1, batch_size=args.batch_size, max_length=128, **options)  # type: ignore[arg-type]
            began = time.perf_counter()
            result = finetune(
                args.model,
                task,
                Path(scratch) / mode,
                config=config,
                train=train,
                validation=validation,
                device=args.device,
                progress=False,
            )
            results[mode] = result
            epoch = result.history[0]
            rows.append(
                {
                    "mode": mode,
                    "lr": config.learning_rate,
                    "trainable params": result.trainable_parameters,
                    "s / epoch": epoch["seconds"],
                    "examples / s": n_train / epoch["seconds"],
                    "eval s": epoch["eval_seconds"],
                    "acc before": before,
                    "acc after": result.best_value,
                    "wall s": time.perf_counter() - began,
                }
            )
            print(markdown_table(rows[-1:]), flush=True)
        if not args.no_surgery:
            if "full" not in results:
                config = FinetuneConfig(epochs=1, batch_size=args.batch_size, max_length=128, **MODES["full"])  # type: ignore[arg-type]
                results["full"] = finetune(
                    args.model,
                    task,
                    Path(scratch) / "full",
                    config=config,
                    train=train,
                    validation=validation,
                    device=args.device,
                    progress=False,
                )
            full = results["full"]
            ffn_rows = ffn_comparison(args, task, train, validation, full, Path(scratch) / "ffn-removed")
            print(markdown_table(ffn_rows), flush=True)
            tuned = load_classifier(full.path, device=args.device)
            truncation_rows = truncation_sweep(
                tuned, validation, args.batch_size, repeats=1 if args.quick else 3
            )
            print(markdown_table(truncation_rows), flush=True)
    print(
        f"\nmovie-sentiment, {n_train} train / {n_val} validation, batch {args.batch_size}, "
        f"device {args.device}, {torch.get_num_threads()} threads\n"
    )
    print(markdown_table(rows))
    if ffn_rows:
        print("\nFFN removed vs full (one epoch each, same head, data and recipe)\n")
        print(markdown_table(ffn_rows))
        print(f"\ntruncation sweep (evaluation batch {args.batch_size}, no retraining)\n")
        print(markdown_table(truncation_rows))
    path = save(
        "finetune",
        {
            "train": n_train,
            "validation": n_val,
            "batch_size": args.batch_size,
            "device": args.device,
            "rows": rows,
            "ffn": ffn_rows,
            "truncation": truncation_rows,
        },
    )
    print(f"\nsaved {path}")


def ffn_comparison(
    args: argparse.Namespace,
    task: Task,
    train: Examples,
    validation: Examples,
    full: FinetuneResult,
    out: Path,
) -> list[dict[str, object]]:
    """Fine-tune the model with some FFNs removed exactly as ``full`` was; one row each."""
    base = load_encoder(args.model, device=args.device)
    if args.ffn_layers:
        layers = sorted(int(x) for x in args.ffn_layers.split(","))
        cka: dict[int, float] = {}
    else:
        cka = ffn_cka(base, validation, batch_size=args.batch_size)
        layers = choose_ffn_layers(cka, default_count(base.num_layers))
    del base
    torch.manual_seed(0)  # the head finetune() draws for full
    start = remove_ffn(
        load_classifier(args.model, num_labels=2, problem_type="single_label_classification"), layers
    )
    config = FinetuneConfig(epochs=1, batch_size=args.batch_size, max_length=128, **MODES["full"])  # type: ignore[arg-type]
    removed = finetune(
        start,
        task,
        out,
        config=config,
        train=train,
        validation=validation,
        device=args.device,
        progress=False,
    )
    rows: list[dict[str, object]] = []
    for name, result, removed_layers in (("full", full, []), ("ffn_removed", removed, layers)):
        rows.append(
            {
                "model": name,
                "ffn removed": ",".join(map(str, removed_layers)) or "-",
                "cka": "/".join(f"{cka[x]:.3f}" for x in removed_layers if x in cka) or "-",
                "params": result.total_parameters,
                "train s": result.train_seconds,
                "train s / full": result.train_seconds / full.train_seconds,
                "acc": result.best_value,
            }
        )
    return rows


def truncation_sweep(
    tuned: Encoder, validation: Examples, batch_size: int, *, repeats: int
) -> list[dict[str, object]]:
    """Seconds per evaluation batch and accuracy with the top layers dropped, k = L..1."""
    n_batches = max(1, -(-len(validation) // batch_size))
    rows: list[dict[str, object]] = []
    for keep in range(tuned.num_layers, 0, -1):
        model = truncate(tuned, keep)
        run = functools.partial(evaluate, model, validation, batch_size=batch_size)
        accuracy = run()["accuracy"]  # also the warm-up pass
        seconds = timed(run, repeats=repeats, warmup=0)
        rows.append(
            {
                "layers kept": keep,
                "params": count_parameters(model),
                "s / batch": seconds / n_batches,
                "acc": accuracy,
            }
        )
    return rows


if __name__ == "__main__":
    main()
