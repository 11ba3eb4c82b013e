"""Contrastive image-text losses, as open_clip computes them (`open_clip.loss.ClipLoss`, `SigLipLoss`).

Both take L2-normalised embeddings [B, d] of matching images and texts (row i of each is a pair). Under
several processes every process holds its local batch; the negatives are the global batch:
- CLIP (symmetric InfoNCE): every process gathers all embeddings, its own in place carrying their gradient,
  the others without (open_clip's default `gather_with_grad=False, local_loss=False`), and computes the loss
  of the global batch.
- SigLIP (pairwise sigmoid): every process scores its own images against all texts; the texts are gathered
  with their gradient, which flows back to the process that owns them (as open_clip's neighbour exchange).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.nn.functional import all_gather as all_gather_with_grad

CLIP_INIT_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's initial temperature
CLIP_MAX_LOGIT_SCALE = math.log(100)  # CLIP clamps the scale at 100
SIGLIP_INIT_LOGIT_SCALE = math.log(10)  # SigLIP's t' = log 10 ...
SIGLIP_INIT_LOGIT_BIAS = -10.0  # ... and b = -10


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_keeping_local_gradient(features: torch.Tensor) -> torch.Tensor:
    """All processes' features, concatenated in rank order; only this process's part carries a gradient."""
    rank, size = world()
    if size == 1:
        return features
    parts = [torch.zeros_like(features) for _ in range(size)]
    dist.all_gather(parts, features.detach())
    parts[rank] = features
    return torch.cat(parts)


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's loss: the mean of image->text and text->image cross-entropy over the global batch, with logits
    `logit_scale * cosine` (`logit_scale` already exponentiated, as open_clip passes it)."""
    all_image, all_text = gather_keeping_local_gradient(image), gather_keeping_local_gradient(text)
    logits = logit_scale * all_image @ all_text.T  # (B_global, B_global)
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def siglip_loss(
    image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor
) -> torch.Tensor:
    """SigLIP's loss: -sum over (local image, global text) pairs of log sigmoid(label * (scale * cos + bias)),
    label 1 for a pair and -1 otherwise, divided by the local batch size."""
    rank, size = world()
    texts = all_gather_with_grad(text) if size > 1 else [text]
    loss = image.new_zeros(())
    for owner, part in enumerate(texts):
        logits = logit_scale * image @ part.T + logit_bias
        labels = -torch.ones_like(logits)
        if owner == rank:
            labels += 2 * torch.eye(len(logits), device=logits.device, dtype=logits.dtype)
        loss = loss - F.logsigmoid(labels * logits).sum()
    return loss / len(image)
