"""Sequence packing: the samples of a micro-batch laid end to end in a few rows instead of one padded row each.

Attention stays inside each sample through `position_ids` that restart at 0 at every sample start:
transformers (5.x, Llama, Qwen2 and the other models built on `create_causal_mask`) reads a restart as
a sequence boundary when no 2-D `attention_mask` and no KV cache is given, and builds a block-diagonal
causal mask (sdpa, eager) or runs the variable-length kernel (flash_attention_2, which needs all
samples in one row: `pack_length: null`). `VisionLanguageModel.forward` passes the batch on that way.

The loss is unchanged: the same answer tokens of the same samples, averaged over the micro-batch.
Each sample's first label is masked, because in a packed row the previous sample's last token would
otherwise be trained to predict it (unpacked, the first token is never a target). Images keep their
order: the batch's `pixel_values` (or `image_features`) follow the samples in row-major order, as the
placeholder merge expects.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch

from vlmlab.data.chat_format import IGNORE_INDEX
from vlmlab.data.conversation_dataset import Sample
from vlmlab.models.batch import Batch

# per-sample image tensors (tiles, grid rows), concatenated in packing order
IMAGE_KEYS = ("pixel_values", "image_features", "image_grids")


def pack_rows(lengths: Sequence[int], pack_length: int | None) -> list[list[int]]:
    """Sample indices per row, first-fit decreasing into rows of at most `pack_length` tokens
    (`None`: one row holding every sample). Deterministic; rows in the order they were opened."""
    if pack_length is None:
        return [list(range(len(lengths)))]
    rows: list[list[int]] = []
    fill: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if lengths[i] > pack_length:
            raise ValueError(
                f"a sample has {lengths[i]} tokens, more than data.pack_length={pack_length}; set pack_length to at "
                "least data.max_length"
            )
        row = next((r for r, used in enumerate(fill) if used + lengths[i] <= pack_length), None)
        if row is None:
            rows.append([])
            fill.append(0)
            row = len(rows) - 1
        rows[row].append(i)
        fill[row] += lengths[i]
    return rows


def collate_packed(samples: Sequence[Sample], pad_token_id: int, pack_length: int | None) -> Batch:
    """Training batch of packed rows, padded on the right to the fullest row.

    `position_ids` restart at every sample (and at the padding tail, which thus attends only to
    itself); `attention_mask` marks real tokens (for counting) and is not given to the LLM;
    `cu_seq_lens` are the segment boundaries in the flattened [rows * width] batch (padding tails are
    segments too) and `max_seq_len` the longest segment, for variable-length attention kernels.
    """
    skipped = dict(Counter(s["skipped"] for s in samples if "skipped" in s))
    samples = [s for s in samples if "skipped" not in s]
    if not samples:
        return {"skipped": skipped}
    rows = pack_rows([len(s["input_ids"]) for s in samples], pack_length)
    width = max(sum(len(samples[i]["input_ids"]) for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    order = [i for row in rows for i in row]  # row-major: the order of the images' placeholders
    segments: list[int] = []
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            n = len(samples[i]["input_ids"])
            segments.append(n)
            input_ids[r, start : start + n] = samples[i]["input_ids"]
            labels[r, start + 1 : start + n] = samples[i]["labels"][1:]
            position_ids[r, start : start + n] = torch.arange(n)
            attention_mask[r, start : start + n] = 1
            start += n
        position_ids[r, start:] = torch.arange(width - start)
        if start < width:
            segments.append(width - start)
    batch: Batch = {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "attention_mask": attention_mask,
        "cu_seq_lens": torch.tensor([0, *segments], dtype=torch.int32).cumsum(0, dtype=torch.int32),
        "max_seq_len": max(segments),
        "ids": [samples[i]["id"] for i in order],
        "indices": [samples[i].get("index") for i in order],
        "tasks": [samples[i]["task"] for i in order],
        "sources": [samples[i].get("source", samples[i]["task"]) for i in order],
        "skipped": skipped,
    }
    for key in IMAGE_KEYS:
        if key in samples[0]:
            images = [samples[i][key] for i in order if samples[i].get(key) is not None]
            batch[key] = torch.cat(images) if images else None
    return batch
