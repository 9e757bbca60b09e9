"""Head benchmarks: all-heads importance from gate gradients vs ablating one head at a time.

    python -m benchmarks.bench_heads [--device cpu|cuda] [--n 64]

1. Importance (:func:`tunescope.heads.head_importance`, objective ``task``): one forward and one backward
   per batch give all ``L * H`` scores. The baseline ablates heads one at a time: the full model once,
   then each head gated to zero alone, ``L * H + 1`` forward passes over the same pre-tokenised,
   length-sorted batches (inference mode). Embedded MiniLM (6 layers x 12 heads), 64 movie snippets,
   2 CPU threads, one timed run each after one warm-up forward. Goal: ratio >= 18x.

The classifier is MiniLM with its head trained for one epoch on 256 other snippets (encoder frozen),
so that ``task`` importance has a trained head to differentiate; the timing does not depend on it.
Each part is one function returning result rows; :func:`main` runs them and saves the JSON.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import torch

from benchmarks._common import markdown_table, save
from tunescope.data import Examples, get_task
from tunescope.finetune import FinetuneConfig, finetune
from tunescope.heads import head_importance
from tunescope.inference import collator, features, length_batches
from tunescope.models import Encoder, HeadGates, load_trained_classifier


def tuned_minilm(device: str, train_examples: int = 256) -> Encoder:
    """The embedded MiniLM with a sentiment head trained for one epoch (encoder frozen)."""
    task = get_task("movie-sentiment")
    out = tempfile.mkdtemp(prefix="bench-heads-")
    config = FinetuneConfig(epochs=1, train_layers=(), learning_rate=1e-3, batch_size=32)
    result = finetune(
        None,
        task,
        out,
        config=config,
        train_limit=train_examples,
        validation_limit=64,
        device=device,
        progress=False,
    )
    return load_trained_classifier(result.path, device=device)


def ablation_baseline(encoder: Encoder, examples: Examples, batch_size: int) -> torch.Tensor:
    """Loss increase when each head alone is switched off: ``L * H + 1`` forward passes per batch."""
    rows = features(encoder.tokenizer, examples, 512)
    collate = collator(encoder.tokenizer, "sequence")
    device = next(encoder.model.parameters()).device
    batches = [
        {k: v.to(device) for k, v in collate([rows[i] for i in idx]).items()}
        for idx in length_batches(rows, batch_size)
    ]
    n_layers, n_heads = encoder.num_layers, encoder.num_heads
    gates = torch.ones(n_layers, n_heads, device=device)

    def mean_loss() -> float:
        with torch.inference_mode(), HeadGates(encoder, gates):
            return sum(float(encoder.model(**batch).loss) for batch in batches) / len(batches)

    full = mean_loss()
    out = torch.zeros(n_layers, n_heads)
    for layer in range(n_layers):
        for head in range(n_heads):
            gates[layer, head] = 0.0
            out[layer, head] = mean_loss() - full
            gates[layer, head] = 1.0
    return out


def bench_importance(encoder: Encoder, examples: Examples, *, batch_size: int = 32) -> list[dict[str, Any]]:
    """Time gradient importance (one backward per batch) against one-at-a-time ablation."""
    batch = encoder.tokenizer(examples.texts[:batch_size], padding=True, return_tensors="pt")
    with torch.inference_mode():  # warm-up forward (allocations, thread pools)
        encoder.model(**batch.to(next(encoder.model.parameters()).device))
    start = time.perf_counter()
    scores = head_importance(encoder, examples, normalize=False, batch_size=batch_size, progress=False)
    gradient_s = time.perf_counter() - start
    start = time.perf_counter()
    ablation = ablation_baseline(encoder, examples, batch_size)
    ablation_s = time.perf_counter() - start
    from scipy.stats import spearmanr

    # raw (unnormalised) scores, so that heads of different layers compare as the ablation deltas do
    rho = float(spearmanr(scores.reshape(-1).numpy(), ablation.reshape(-1).numpy()).statistic)
    n_passes = encoder.num_layers * encoder.num_heads + 1
    return [
        {
            "benchmark": (
                f"all-heads importance, {len(examples)} movie snippets, {encoder.num_layers}x"
                f"{encoder.num_heads} heads: 1 fwd+bwd per batch vs {n_passes} ablation forwards"
            ),
            "tunescope_s": gradient_s,
            "baseline_s": ablation_s,
            "ratio": ablation_s / gradient_s,
            "goal": ">= 18",
            "spearman_vs_ablation": rho,
        }
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=64, help="movie snippets to score")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    encoder = tuned_minilm(args.device)
    examples = get_task("movie-sentiment").load("test", limit=args.n)
    rows = bench_importance(encoder, examples)
    print(markdown_table(rows))
    print(f"saved {save('heads', {'rows': rows})}")


if __name__ == "__main__":
    main()
