"""Batch measures for Lightning's `ThroughputMonitor` (conf/experiment/scaling_*.yaml): samples and
LLM tokens (image tokens included, padding excluded) of a training batch."""

from __future__ import annotations

from vlmlab.models.batch import Batch


def batch_size(batch: Batch) -> int:
    return int(batch["input_ids"].shape[0]) if "input_ids" in batch else 0


def tokens(batch: Batch) -> int:
    return int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0
