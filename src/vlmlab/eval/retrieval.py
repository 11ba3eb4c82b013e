"""Zero-shot image-text retrieval recall as a torchmetrics `Metric`: for the pairs (image i, text i) of a
split, how often the matching text is among the k texts closest to an image (i2t) and the matching image
among the k images closest to a text (t2i), by cosine similarity. Each pair is its own item (an image with
several captions appears once per caption)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import Metric


class RetrievalRecall(Metric):
    """`update(image_embeddings, text_embeddings)` with matching rows; `compute()` gives
    {i2t_r1, i2t_r5, t2i_r1, t2i_r5, ...} for `ks`. The embeddings are gathered across processes."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, ks: Sequence[int] = (1, 5), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ks = tuple(ks)
        self.add_state("images", default=[], dist_reduce_fx="cat")
        self.add_state("texts", default=[], dist_reduce_fx="cat")

    def update(self, images: torch.Tensor, texts: torch.Tensor) -> None:
        if images.shape != texts.shape:
            raise ValueError(f"image embeddings {tuple(images.shape)} and text embeddings {tuple(texts.shape)} differ")
        self.images.append(F.normalize(images.detach().float(), dim=-1))
        self.texts.append(F.normalize(texts.detach().float(), dim=-1))

    def compute(self) -> dict[str, torch.Tensor]:
        images = torch.cat(self.images) if isinstance(self.images, list) else self.images
        texts = torch.cat(self.texts) if isinstance(self.texts, list) else self.texts
        similarity = images @ texts.T  # (N, N): row i is image i against every text
        target = torch.arange(len(similarity), device=similarity.device)
        # rank of the match = how many candidates score higher (ties count against it)
        i2t_rank = (similarity > similarity[target, target].unsqueeze(1)).sum(1)
        t2i_rank = (similarity.T > similarity[target, target].unsqueeze(1)).sum(1)
        values = {}
        for k in self.ks:
            values[f"i2t_r{k}"] = (i2t_rank < k).float().mean()
            values[f"t2i_r{k}"] = (t2i_rank < k).float().mean()
        return values
