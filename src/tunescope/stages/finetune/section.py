"""Report section of the ``finetune`` stage: what training the run did and how well it went."""

from __future__ import annotations

from typing import Any

from tunescope.report._section import Section


def build(sec: Section) -> dict[str, Any] | None:
    rows = sec.table("finetune")
    if not rows:
        return None
    kept = next((r for r in rows if r["kept"] == "True"), rows[-1])
    config = sec.manifest["config"]
    limit = config.get("train_limit")
    seconds = sum(float(r["train_seconds"]) for r in rows)
    sentence = (
        f"Fine-tuned for {len(rows)} epoch(s) on "
        f"{f'the first {limit:,}' if limit else 'all'} training examples of {config['task']} "
        f"({int(kept['trainable_params']):,} parameters trained, {seconds:.0f} s): validation "
        f"{kept['metric']} {float(kept['value']):.3f} at epoch {kept['epoch']}, the weights kept in "
        "models/tuned."
    )
    return {"sentence": sentence, "rows": rows}
