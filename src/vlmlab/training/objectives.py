"""Stage objectives: what a stage's loss is and how its validation scores the model. The training module
calls its objective; nothing else needs to know which one a stage uses.

- `LanguageModelling` (`objective: lm`, every LLaVA stage): the LLM's next-token loss on answer tokens.
- `ContrastiveAlignment` (`objective: contrastive`): CLIP- or SigLIP-style pretraining of the vision encoder
  against a text tower on image-caption pairs (the caption is the sample's answer text), with projection heads
  to a shared space; validation reports image->text and text->image retrieval recall per source.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from vlmlab.data.chat_format import IGNORE_INDEX
from vlmlab.eval.retrieval import RetrievalRecall
from vlmlab.models.batch import Batch
from vlmlab.models.contrastive_loss import (
    CLIP_INIT_LOGIT_SCALE,
    CLIP_MAX_LOGIT_SCALE,
    SIGLIP_INIT_LOGIT_BIAS,
    SIGLIP_INIT_LOGIT_SCALE,
    clip_loss,
    siglip_loss,
    world,
)
from vlmlab.models.image_layout import base_tile_indices
from vlmlab.models.text_towers import TextTower
from vlmlab.models.vlm import VisionLanguageModel
from vlmlab.training.flops import FlopsEstimate
from vlmlab.training.stage import StageSpec


class LanguageModelling(nn.Module):
    """The mean next-token loss on answer tokens (`loss: chunked | full` as the stage says)."""

    generates = True  # the stage trains the LLM to answer: generation-based validation applies

    def __init__(self, model: VisionLanguageModel, stage: StageSpec) -> None:
        super().__init__()
        self.chunk_size = stage.loss_chunk_size if stage.loss == "chunked" else None
        self.flops = FlopsEstimate.of(model, stage)

    def loss(self, model: VisionLanguageModel, batch: Batch) -> torch.Tensor:
        return model.batch_loss(batch, self.chunk_size)

    def batch_flops(self, batch: Batch) -> int:
        return self.flops(batch)

    def validation_step(self, module: Any, model: VisionLanguageModel, batch: Batch) -> None:
        module.log("val/loss", self.loss(model, batch), prog_bar=True, sync_dist=True, batch_size=len(batch["ids"]))

    def on_validation_epoch_end(self, module: Any) -> None:
        """Nothing to add: generation-based validation is a callback."""

    def after_optimizer_step(self) -> None:
        """No parameters of its own."""


def answer_texts(batch: Batch, tokenizer: Any) -> list[str]:
    """Each row's answer text (its label tokens, decoded): the caption of an image-caption sample."""
    labels = batch["labels"]
    return [tokenizer.decode(row[row != IGNORE_INDEX].tolist(), skip_special_tokens=True).strip() for row in labels]


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """`x` unchanged, its gradient multiplied by `factor`."""
    return x * factor - x.detach() * (factor - 1)


class ContrastiveAlignment(nn.Module):
    """Contrastive pretraining of the vision encoder: images (mean of the encoder's patch features) and their
    captions (the text tower's pooled output) are projected to `embed_dim`, L2-normalised and scored with the
    CLIP or SigLIP loss (`vlmlab.models.contrastive_loss`), the negatives being the global batch.

    Learnable temperature (and, for SigLIP, bias) as the papers initialise them: CLIP log(1/0.07), the scale
    clamped at 100 after every step; SigLIP t' = log 10, b = -10. Under several processes the CLIP loss is
    every process's global loss with gradients through its own embeddings only; the embeddings' gradient is
    scaled by the number of processes so that the processes' average (DDP, FSDP) is the global batch's
    gradient, as on one process (the temperature's gradient is already the global one on every process).
    SigLIP's gathered texts carry their gradient back already.
    """

    generates = False

    def __init__(self, model: VisionLanguageModel, text_tower: TextTower, kind: str, embed_dim: int) -> None:
        super().__init__()
        self.kind = kind
        self.text_tower = text_tower
        self.image_projection = nn.Linear(model.encoder.output_dim, embed_dim)
        self.text_projection = nn.Linear(text_tower.output_dim, embed_dim)
        siglip = kind == "siglip"
        # shape (1,), not scalars: FSDP2 shards only parameters with a dimension
        self.logit_scale = nn.Parameter(torch.tensor([SIGLIP_INIT_LOGIT_SCALE if siglip else CLIP_INIT_LOGIT_SCALE]))
        self.logit_bias = nn.Parameter(torch.tensor([SIGLIP_INIT_LOGIT_BIAS])) if siglip else None
        self.tokenizer = model.llm.tokenizer  # decodes the captions from the batch's label tokens
        self.recall: dict[str, RetrievalRecall] = {}

    def forward(self, model: VisionLanguageModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised (image, text) embeddings of the batch's pairs [B, embed_dim] each. (Called as a module,
        so that FSDP2 gathers this objective's sharded weights around it.) A tiled image (anyres) is seen
        through its base tile, the whole image; a native-resolution encoder's image through the mean of its own
        tokens."""
        pixel_values, rows, grids = batch["pixel_values"], len(batch["ids"]), batch.get("image_grids")
        if pixel_values is not None and not model.native_resolution:
            pixel_values = pixel_values[base_tile_indices(grids, len(pixel_values))]
        images = 0 if pixel_values is None else len(grids) if model.native_resolution else len(pixel_values)
        if images != rows or batch.get("position_ids") is not None:
            raise ValueError(
                "the contrastive objective needs one image per sample, unpacked (a caption source, "
                f"data.packing=false); this batch has {rows} samples and {images} images"
            )
        pixel_values = pixel_values.to(next(model.encoder.parameters()).dtype)
        if model.native_resolution:  # packed tokens of every image -> each image's mean
            tokens = model.encoder(pixel_values, grids).split(model.image_layout.counts(grids).tolist())
            features = torch.stack([t.mean(dim=0) for t in tokens])  # (B, d_vis)
        else:
            features = model.encoder(pixel_values).mean(dim=1)  # (B, d_vis)
        text = self.text_tower(answer_texts(batch, self.tokenizer))  # (B, d_text)
        return F.normalize(self.image_projection(features), dim=-1), F.normalize(self.text_projection(text), dim=-1)

    def _contrastive_loss(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        scale = self.logit_scale.exp()
        if self.kind == "siglip":
            return siglip_loss(image, text, scale, self.logit_bias)
        return clip_loss(image, text, scale)

    def loss(self, model: VisionLanguageModel, batch: Batch) -> torch.Tensor:
        image, text = self(model, batch)
        _, size = world()
        if self.kind == "clip" and size > 1:  # the embeddings' gradient x processes (see the class docstring)
            image, text = scale_gradient(image, size), scale_gradient(text, size)
        return self._contrastive_loss(image, text)

    def batch_flops(self, batch: Batch) -> int:
        return 0  # not estimated for this objective: no MFU is logged

    def validation_step(self, module: Any, model: VisionLanguageModel, batch: Batch) -> None:
        image, text = self(model, batch)
        module.log("val/loss", self._contrastive_loss(image, text), sync_dist=True, batch_size=len(batch["ids"]))
        for source in sorted(set(batch["sources"])):
            rows = torch.tensor([s == source for s in batch["sources"]], device=image.device)
            if source not in self.recall:
                self.recall[source] = RetrievalRecall().to(image.device)
            self.recall[source].update(image[rows], text[rows])

    def on_validation_epoch_end(self, module: Any) -> None:
        """Retrieval recall per source, over the whole validation split (gathered from every process)."""
        for source, metric in sorted(self.recall.items()):
            for name, value in metric.compute().items():
                module.log(f"val/{source}/{name}", value, sync_dist=False)
            metric.reset()

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        if self.kind == "clip":
            self.logit_scale.clamp_(0, CLIP_MAX_LOGIT_SCALE)


def build_objective(stage: StageSpec, model: VisionLanguageModel, model_cfg: DictConfig) -> nn.Module:
    """The stage's objective; a contrastive one builds the text tower `model.text_tower` describes (one built
    from a config gets the LLM's tokenizer)."""
    if stage.objective == "lm":
        return LanguageModelling(model, stage)
    tower_cfg = model_cfg.get("text_tower")
    if tower_cfg is None:
        raise ValueError(
            f"stage '{stage.name}' has objective: contrastive but the model has no text tower: choose one with "
            "model/text_tower=tiny_text (or clip_text_l14_336, siglip_text_so400m)"
        )
    pretrained = tower_cfg.get("pretrained") is not None
    tower = instantiate(tower_cfg, **({} if pretrained else {"tokenizer": model.llm.tokenizer}))
    return ContrastiveAlignment(model, tower, stage.contrastive_loss, stage.contrastive_dim)
