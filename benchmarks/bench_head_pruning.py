"""Head-pruning benchmark: forward latency of physically pruned MiniLM vs the unpruned model.

    python -m benchmarks.bench_head_pruning [--quick] [--threads 2] [--seq-len 64]

On the embedded all-MiniLM-L6-v2 (6 layers x 12 heads), 30% and 50% of the 72 heads are removed with
``tunescope.surgery.prune_heads``: a seeded random choice over all heads (seed 0) that skips any head
whose removal would leave its layer empty, so layers lose different numbers of heads. Each model runs
a forward at batch 1 and batch 32 on random token ids of length ``--seq-len`` (full attention mask),
unpruned and pruned in the same process taking turns in every round (two warm-up rounds, then the
median of 30 rounds at batch 1 and 7 at batch 32), so a busy machine slows all of them alike. Also
reported: the parameters removed and the largest difference between the pruned model's last hidden
states and the unpruned model's with the same heads masked (``mask_heads``): float32 rounding.
"""

from __future__ import annotations

import argparse
import random
import statistics

import torch

from benchmarks._common import markdown_table, save, timed
from tunescope.models import load_encoder, mask_heads
from tunescope.surgery import count_parameters, prune_heads


def random_heads(n_layers: int, n_heads: int, fraction: float, seed: int = 0) -> dict[int, list[int]]:
    """``round(fraction * L * H)`` heads chosen at random, at least one head left in every layer."""
    rng = random.Random(seed)
    wanted = round(fraction * n_layers * n_heads)
    candidates = [(layer, head) for layer in range(1, n_layers + 1) for head in range(n_heads)]
    rng.shuffle(candidates)
    chosen: dict[int, list[int]] = {}
    for layer, head in candidates:
        if sum(len(h) for h in chosen.values()) == wanted:
            break
        if len(chosen.get(layer, [])) < n_heads - 1:
            chosen.setdefault(layer, []).append(head)
    return {layer: sorted(heads) for layer, heads in sorted(chosen.items())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--model", default=None, help="model folder (default: the embedded MiniLM)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    encoder = load_encoder(args.model)
    n_layers, n_heads = encoder.num_layers, encoder.num_heads
    generator = torch.Generator().manual_seed(0)
    vocab = int(encoder.config.vocab_size)
    batches = {
        size: {
            "input_ids": torch.randint(1000, vocab, (size, args.seq_len), generator=generator),
            "attention_mask": torch.ones(size, args.seq_len, dtype=torch.long),
        }
        for size in (1, 32)
    }
    repeats = {1: 5 if args.quick else 30, 32: 2 if args.quick else 7}

    def once(model: torch.nn.Module, size: int) -> float:
        def run() -> None:
            with torch.inference_mode():
                model(**batches[size])

        return timed(run, repeats=1, warmup=0)

    plans = {fraction: random_heads(n_layers, n_heads, fraction) for fraction in (0.3, 0.5)}
    models = {0.0: encoder.model, **{f: prune_heads(encoder, plan).model for f, plan in plans.items()}}
    # the models take turns in every round, so a load change on the machine hits them alike
    medians: dict[tuple[float, int], float] = {}
    for size in batches:
        times: dict[float, list[float]] = {f: [] for f in models}
        for round_ in range(repeats[size] + 2):
            for fraction, model in models.items():
                seconds = once(model, size)
                if round_ >= 2:  # two warm-up rounds
                    times[fraction].append(seconds)
        medians.update({(f, size): statistics.median(ts) for f, ts in times.items()})
    base_params = count_parameters(encoder)
    rows = []
    for fraction, heads in plans.items():
        with torch.inference_mode():
            with mask_heads(encoder, [(layer, h) for layer, hs in heads.items() for h in hs]):
                masked = encoder.model(**batches[32]).last_hidden_state
            diff = (models[fraction](**batches[32]).last_hidden_state - masked).abs().max().item()
        removed = base_params - count_parameters(models[fraction])
        for size in batches:
            rows.append(
                {
                    "heads_pruned": f"{sum(map(len, heads.values()))}/{n_layers * n_heads}",
                    "batch": size,
                    "unpruned_ms": medians[0.0, size] * 1e3,
                    "pruned_ms": medians[fraction, size] * 1e3,
                    "latency_ratio": medians[fraction, size] / medians[0.0, size],
                    "params_removed": removed,
                    "params_removed_share": removed / base_params,
                    "max_abs_diff_vs_masked": diff,
                }
            )
        kept = ", ".join(f"{layer}:{n_heads - len(heads.get(layer, []))}" for layer in range(1, n_layers + 1))
        print(f"{fraction:.0%}: heads kept per layer {kept}")
    print(markdown_table(rows))
    payload = {"rows": rows, "seq_len": args.seq_len, "threads": args.threads}
    print(f"\nunpruned parameters {base_params:,}; path {save('head_pruning', payload)}")


if __name__ == "__main__":
    main()
