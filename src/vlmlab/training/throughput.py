"""Batch measures for Lightning's `ThroughputMonitor` (conf/experiment/scaling_*.yaml): samples and
LLM tokens (image tokens included, padding excluded) of a training batch."""

from __future__ import annotations

from typing import Any


def batch_size(batch: dict[str, Any]) -> int:
    return int(batch["input_ids"].shape[0]) if "input_ids" in batch else 0


def tokens(batch: dict[str, Any]) -> int:
    return int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0
