"""Next-token cross-entropy at the answer positions only, computed in chunks.

The plain path (`labels=` into a transformers causal LM) projects every position of the batch onto the
whole vocabulary: with Qwen's 151,936 rows that is B x T x V floats for the logits, as many again for
the log-softmax autograd keeps, and their gradients in the backward pass; for most models this is the
largest tensor of the step. Here the last hidden states of the positions whose next token is an answer
token (shifted label != -100) are gathered first, and `lm_head` + cross-entropy run on `chunk_size` of
them at a time under activation checkpointing, so a chunk's logits are freed as soon as its loss is
summed and recomputed in the backward pass. Positions outside the answers (the prompt, image tokens,
padding) never reach `lm_head` at all, which also saves their FLOPs.

The result equals transformers' `ForCausalLMLoss` (logits upcast to fp32, mean over the answer
tokens): `tests/test_loss.py` checks the loss and every gradient against the plain path.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

LossImpl = Literal["full", "chunked"]
IGNORE_INDEX = -100


def _chunk_loss(lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = lm_head(hidden).float()  # (n, V); fp32 as transformers' loss upcasts
    return F.cross_entropy(logits, targets, reduction="sum")


def chunked_cross_entropy(
    hidden: torch.Tensor, labels: torch.Tensor, lm_head: nn.Module, chunk_size: int = 1024
) -> torch.Tensor:
    """Mean cross-entropy of `lm_head(hidden[:, t])` against `labels[:, t + 1]` over unmasked targets.

    Args:
        hidden: the LLM's last hidden states (after its final norm), (B, T, d).
        labels: token ids (B, T), `-100` where the position is not trained on.
        lm_head: the output projection d -> V (the LLM's `get_output_embeddings()`).
        chunk_size: positions projected onto the vocabulary at a time; peak extra memory is about
            3 x chunk_size x V fp32 values (logits, log-softmax and its gradient).
    """
    if chunk_size <= 0:
        raise ValueError(f"loss_chunk_size must be a positive number of positions, got {chunk_size}")
    targets = labels[:, 1:]  # (B, T-1): position t predicts token t + 1
    keep = targets != IGNORE_INDEX
    hidden = hidden[:, :-1][keep]  # (N, d), N = answer targets of the batch
    targets = targets[keep]  # (N,)
    total = None
    # At least one (possibly empty) chunk, so that a batch without answer tokens still gives a loss in
    # the graph (nan = 0 / 0, as the plain path's mean over nothing) that the NaN policy can handle.
    for start in range(0, max(1, targets.numel()), chunk_size):
        end = start + chunk_size
        part = checkpoint(_chunk_loss, lm_head, hidden[start:end], targets[start:end], use_reentrant=False)
        total = part if total is None else total + part
    return total / targets.numel()
