"""Extraction benchmarks: overhead over a bare forward loop, and length bucketing vs arrival order.

    python -m benchmarks.bench_extract [--quick] [--device cpu|cuda]

1. All-layer extraction (mean pooling, every layer) vs a bare ``model(**batch)`` loop over the very same
   (length-sorted, pre-tokenised) batches, in the same process. Goal: time ratio <= 1.10.
2. Length-bucketed vs arrival-order batching on a corpus whose lengths are log-normal (most texts short,
   a few long). Goal: speed-up >= 2.5x. Also the matmul floor: the FLOPs of the real (unpadded) tokens
   divided by the measured matmul rate.
"""

from __future__ import annotations

import argparse
import random

import torch

from benchmarks._common import markdown_table, matmul_rate, save, timed
from tunescope.data import get_task
from tunescope.extract import extract
from tunescope.models import load_encoder


def skewed_corpus(words: list[str], n: int, seed: int = 0) -> list[str]:
    """``n`` texts of random corpus words, lengths log-normal (median 18 words, a tail past 200)."""
    rng = random.Random(seed)
    lengths = [min(400, max(3, int(rng.lognormvariate(2.9, 0.9)))) for _ in range(n)]
    return [" ".join(rng.choice(words) for _ in range(k)) for k in lengths]


def forward_flops(config, tokens: int, seq_sq: int) -> float:
    """Matmul FLOPs of an encoder forward: 2 * tokens * weights per layer + attention's 4 * T^2 * d."""
    d, ff, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    return layers * (2 * tokens * (4 * d * d + 2 * d * ff) + 4 * seq_sq * d)


def bare_loop(encoder, texts, batch_size, max_length, device):
    """The reference: tokenise once, sort by length, then only ``model(**batch)``."""
    tok = encoder.tokenizer
    lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=max_length)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    batches = [
        {
            k: v.to(device)
            for k, v in tok(
                [texts[i] for i in order[s : s + batch_size]],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).items()
        }
        for s in range(0, len(texts), batch_size)
    ]

    def run():
        with torch.inference_mode():
            for batch in batches:
                encoder.model(**batch)

    def run_with_tokenizer():
        """The same loop, tokenising inside the timing (texts in, as extraction starts)."""
        ids = tok(texts, truncation=True, max_length=max_length)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))
        with torch.inference_mode():
            for s in range(0, len(texts), batch_size):
                chunk = [texts[i] for i in order[s : s + batch_size]]
                batch = tok(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
                encoder.model(**batch.to(device))

    return run, run_with_tokenizer, lengths


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer texts and repeats")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default=None, help="model folder (default: the embedded MiniLM)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    device = torch.device(args.device)
    encoder = load_encoder(args.model, device=str(device))
    batch_size, max_length = args.batch_size, 512
    repeats = 1 if args.quick else 3
    rows = []

    # 1. overhead over the bare loop, real movie snippets
    texts = get_task("movie-sentiment").load("train", limit=256 if args.quick else 2000).texts
    run_bare, run_tokenizing, _ = bare_loop(encoder, texts, batch_size, max_length, device)
    bare = timed(run_bare, repeats=repeats)
    bare_tokenizing = timed(run_tokenizing, repeats=repeats)
    ours = timed(
        lambda: extract(
            encoder, texts, pooling="mean", batch_size=batch_size, max_length=max_length, progress=False
        ),
        repeats=repeats,
    )
    rows.append(
        {
            "benchmark": f"all-layer mean extraction vs bare forward ({len(texts)} movie snippets)",
            "tunescope_s": ours,
            "baseline_s": bare,
            "ratio": ours / bare,
            "goal": "<= 1.10",
        }
    )
    rows.append(
        {
            "benchmark": "same, baseline tokenising inside the timing too (texts in, like extraction)",
            "tunescope_s": ours,
            "baseline_s": bare_tokenizing,
            "ratio": ours / bare_tokenizing,
            "goal": "<= 1.10",
        }
    )

    # 2. bucketing on skewed lengths
    words = " ".join(get_task("movie-sentiment").load("train").texts).split()
    corpus = skewed_corpus(words, 300 if args.quick else 2000)
    sorted_s = timed(
        lambda: extract(
            encoder, corpus, pooling="mean", batch_size=batch_size, max_length=max_length, progress=False
        ),
        repeats=repeats,
    )
    arrival_s = timed(
        lambda: extract(
            encoder,
            corpus,
            pooling="mean",
            batch_size=batch_size,
            max_length=max_length,
            sort_by_length=False,
            progress=False,
        ),
        repeats=1,
        warmup=0,
    )
    lengths = [
        len(ids) for ids in encoder.tokenizer(corpus, truncation=True, max_length=max_length)["input_ids"]
    ]
    rate = matmul_rate(torch.float32, str(device))
    floor = forward_flops(encoder.model.config, sum(lengths), sum(n * n for n in lengths)) / rate
    rows.append(
        {
            "benchmark": f"length-bucketed vs arrival order ({len(corpus)} log-normal texts)",
            "tunescope_s": sorted_s,
            "baseline_s": arrival_s,
            "ratio": arrival_s / sorted_s,
            "goal": ">= 2.5x",
        }
    )
    rows.append(
        {
            "benchmark": "bucketed extraction vs matmul floor (real tokens / measured float32 rate)",
            "tunescope_s": sorted_s,
            "baseline_s": floor,
            "ratio": floor / sorted_s,
            "goal": "share of floor",
        }
    )
    print(markdown_table(rows))
    print(
        f"\nmatmul rate {rate / 1e9:.1f} GFLOP/s ({device}); tokens {sum(lengths):,}; "
        f"path {save('extract', {'rows': rows, 'matmul_gflops': rate / 1e9, 'device': str(device)})}"
    )


if __name__ == "__main__":
    main()
