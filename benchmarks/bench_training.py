"""Training throughput: ``finetune`` against a bare training loop, and length-grouped vs random batches.

    python -m benchmarks.bench_training [--quick] [--device cpu|cuda] [--train N] [--model DIR]

Every fine-tuning experiment of ``analyze`` (the run's model, FFN removal, the selection arms,
prune-then-tune, every seed) goes through :func:`tunescope.finetune.finetune`, so its seconds per
training example are the training stages' cost. On two sets of training texts, the embedded MiniLM with
a fresh seeded head, batch 32, ``max_length`` 128, one epoch at 5e-5:

* ``movie``: the first N movie-sentiment training snippets (short: 27 tokens on average);
* ``lognormal``: N texts of movie-corpus words with log-normal lengths (``bench_extract``'s skewed set,
  most short, a tail cut at 128 tokens), labelled at random (only the speed is measured).

Three ways to train each set, side by side in one process, from the same weights:

* ``bare``: the floor. Tokenised and padded into length-grouped batches before the clock starts, then
  only forward, backward, ``AdamW.step`` and ``zero_grad``;
* ``grouped``: ``finetune`` as ``analyze`` runs it (``group_by_length=True``: tokenisation, collation,
  gradient clipping, the schedule, the checkpoint after the epoch; its recorded training seconds);
* ``random``: ``finetune`` with ``group_by_length=False`` (batches of randomly shuffled examples).

Goals: ``grouped`` within 1.2x of ``bare`` per example; ``random`` / ``grouped`` >= 1.5 on the
log-normal set. Also the padding each batching adds (padded tokens / real tokens).

Where the device computes bfloat16 natively (``resolve_precision("auto", device) == "bf16"``), it then
times ``finetune`` on both sets in float32 and with ``precision="bf16"`` (the ``analyze`` default
there), and the bf16 bare loop, and reports the ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import markdown_table, save
from benchmarks.bench_extract import skewed_corpus
from tunescope.data import Examples, get_task
from tunescope.finetune import FinetuneConfig, finetune, resolve_precision
from tunescope.finetune.loop import _batches
from tunescope.models import load_classifier


def _fresh(model: str | None, device: str):
    torch.manual_seed(0)
    return load_classifier(model, num_labels=2, problem_type="single_label_classification", device=device)


def bare_seconds(model: str | None, examples: Examples, config: FinetuneConfig, device: str) -> float:
    """One epoch of forward, backward and AdamW over pre-tokenised, pre-padded length-grouped batches.

    With ``config.precision == "bf16"`` the forward pass and loss run under bfloat16 autocast, as
    :func:`tunescope.finetune.finetune` trains then.
    """
    encoder = _fresh(model, device)
    tok = encoder.tokenizer
    ids = tok(list(examples.texts), truncation=True, max_length=config.max_length)["input_ids"]
    batches = []
    for idx in _batches([len(i) for i in ids], config, 1):
        batch = tok.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
        batch["labels"] = torch.as_tensor(examples.labels[idx])
        batches.append({k: v.to(device) for k, v in batch.items()})
    net = encoder.model
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.learning_rate)
    start = time.perf_counter()
    bf16 = config.precision == "bf16"
    for batch in batches:
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            loss = net(**batch).loss
        loss.float().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def finetune_seconds(
    model: str | None, examples: Examples, validation: Examples, config: FinetuneConfig, device: str
) -> float:
    """``finetune``'s recorded training seconds for one epoch (validation and export excluded)."""
    with tempfile.TemporaryDirectory() as tmp:
        start = _fresh(model, device)
        result = finetune(
            start,
            None,
            Path(tmp) / "m",
            config=config,
            train=examples,
            validation=validation,
            device=device,
            progress=False,
        )
        return result.train_seconds


def padding(lengths: list[int], config: FinetuneConfig) -> float:
    """Tokens in the padded batches of epoch 1 over real tokens."""
    batches = _batches(lengths, config, 1)
    return sum(len(b) * max(lengths[i] for i in b) for b in batches) / sum(lengths)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="320 training examples")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default=None, help="model folder (default: the embedded MiniLM)")
    parser.add_argument("--train", type=int, default=1000)
    args = parser.parse_args()
    n = 320 if args.quick else args.train
    task = get_task("movie-sentiment")
    movie = task.load("train", limit=n)
    validation = task.load("validation", limit=32)
    words = " ".join(task.load("train").texts).split()
    labels = np.random.default_rng(0).integers(0, 2, n)
    skewed = Examples(skewed_corpus(words, n), None, labels, "lognormal", "train", ("negative", "positive"))
    grouped = FinetuneConfig(epochs=1, learning_rate=5e-5, batch_size=32, max_length=128)
    shuffled = dataclasses.replace(grouped, group_by_length=False)
    tok = _fresh(args.model, "cpu").tokenizer
    rows = []
    fp32_seconds: dict[str, float] = {}  # finetune's fp32 seconds per set, reused by the precision table
    for name, examples in (("movie", movie), ("lognormal", skewed)):
        lengths = [len(i) for i in tok(list(examples.texts), truncation=True, max_length=128)["input_ids"]]
        bare = bare_seconds(args.model, examples, grouped, args.device)
        ours = finetune_seconds(args.model, examples, validation, grouped, args.device)
        fp32_seconds[name] = ours
        rand = finetune_seconds(args.model, examples, validation, shuffled, args.device)
        rows.append(
            {
                "texts": f"{name} ({n}, {np.mean(lengths):.0f} tokens on average)",
                "bare_ms_per_ex": 1000 * bare / n,
                "grouped_ms_per_ex": 1000 * ours / n,
                "random_ms_per_ex": 1000 * rand / n,
                "grouped_over_bare": ours / bare,
                "random_over_grouped": rand / ours,
                "padding_grouped": padding(lengths, grouped),
                "padding_random": padding(lengths, shuffled),
            }
        )
        print(markdown_table(rows[-1:]), flush=True)
    print("\ngoals: grouped_over_bare <= 1.2; random_over_grouped >= 1.5 on lognormal\n")
    print(markdown_table(rows))
    precisions = []
    if resolve_precision("auto", args.device) == "bf16":  # only where bf16 is native; emulated it is slow
        bf16 = dataclasses.replace(grouped, precision="bf16")
        for name, examples in (("movie", movie), ("lognormal", skewed)):
            fp32_s = fp32_seconds[name]
            bf16_s = finetune_seconds(args.model, examples, validation, bf16, args.device)
            bare_bf16 = bare_seconds(args.model, examples, bf16, args.device)
            precisions.append(
                {
                    "texts": name,
                    "fp32_ms_per_ex": 1000 * fp32_s / n,
                    "bf16_ms_per_ex": 1000 * bf16_s / n,
                    "fp32_over_bf16": fp32_s / bf16_s,
                    "bf16_over_bare_bf16": bf16_s / bare_bf16,
                }
            )
        print("\nfine-tuning precision (--precision fp32 vs bf16, both length-grouped):\n")
        print(markdown_table(precisions))
    payload = {"rows": rows, "precision": precisions, "n": n, "device": args.device}
    print("saved", save("bench_training", payload))


if __name__ == "__main__":
    main()
