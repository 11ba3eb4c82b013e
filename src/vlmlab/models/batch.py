"""`Batch`: a collated micro-batch, as the data collators write it and the model, the training module, the
objectives and the evaluators read it (`vlmlab.data.conversation_dataset.collate`,
`vlmlab.data.packing.collate_packed`)."""

from __future__ import annotations

from typing import TypedDict

import torch


class Batch(TypedDict, total=False):
    """Keys present in every batch: `skipped`, and unless every record was skipped the token rows and the
    per-sample lists. The others depend on the batch's kind (noted per key)."""

    input_ids: torch.Tensor  # [rows, length]
    attention_mask: torch.Tensor  # [rows, length]; 1 on tokens, 0 on padding
    labels: torch.Tensor  # training batches: the answer tokens, -100 elsewhere
    pixel_values: torch.Tensor | None  # [images or tiles, 3, H, W], in placeholder order; None: no image
    image_grids: torch.Tensor | None  # [images, 4]: each image's tile grid (tiled images), else None
    image_features: torch.Tensor | None  # from the feature cache, in place of pixel_values
    position_ids: torch.Tensor  # packed rows: positions restart at each sample
    cu_seq_lens: torch.Tensor  # packed rows: the samples' boundaries, for variable-length attention
    max_seq_len: int  # packed rows: the longest sample
    ids: list[str]  # the records' ids
    indices: list[int | None]  # the samples' positions in their dataset, where known
    tasks: list[str]
    sources: list[str]
    answers: list[list[str]]  # prompt batches: each record's reference answers
    skipped: dict[str, int]  # records of this batch that could not become samples, by reason
