"""Fine-tuning benchmark: seconds per epoch and accuracy of full, top-layer and LoRA fine-tuning.

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
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._common import markdown_table, save
from tunescope.data import get_task
from tunescope.finetune import FinetuneConfig, finetune
from tunescope.metrics import evaluate
from tunescope.models import load_classifier

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
    print(
        f"\nmovie-sentiment, {n_train} train / {n_val} validation, batch {args.batch_size}, "
        f"device {args.device}, {torch.get_num_threads()} threads\n"
    )
    print(markdown_table(rows))
    path = save(
        "finetune",
        {
            "train": n_train,
            "validation": n_val,
            "batch_size": args.batch_size,
            "device": args.device,
            "rows": rows,
        },
    )
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
