"""Vision encoders from transformers: CLIP, SigLIP and DINOv2 vision towers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    PretrainedConfig,
    PreTrainedModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from vlmlab.models.blocks import repeated_block_classes
from vlmlab.models.encoders.base import ImagePreprocessing, VisionEncoder, feature_layers
from vlmlab.models.encoders.hf_preprocessing import checkpoint_recipe

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class _Family:
    config_cls: type[PretrainedConfig]
    model_cls: type[PreTrainedModel]
    num_prefix_tokens: int  # CLS tokens in front of the patches
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


FAMILIES: dict[str, _Family] = {
    "clip": _Family(CLIPVisionConfig, CLIPVisionModel, 1, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
    "siglip": _Family(SiglipVisionConfig, SiglipVisionModel, 0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "dinov2": _Family(Dinov2Config, Dinov2Model, 1, IMAGENET_MEAN, IMAGENET_STD),
}


class HFVisionEncoder(VisionEncoder):
    """A transformers vision tower with LLaVA's feature choice.

    Args:
        family: `clip`, `siglip` or `dinov2`.
        pretrained: hub id or local folder; `None` builds random weights from `config`.
        config: config fields for a model built from scratch (tiny test models), or overrides.
        feature_layer: index into the tower's hidden states (embeddings are 0), -2 as in LLaVA-1.5; a list
            of indices concatenates those layers' features per patch.
        feature_select: `default` drops the CLS token, `full` keeps it (LLaVA's
            `vision_feature_select_strategy`); SigLIP has no CLS so both are the same.
        image_size: input size override; DINOv2 interpolates its position embeddings.
        image_mean, image_std: normalisation overrides.
        interpolation, shortest_edge: resize overrides (see `ImagePreprocessing`).

    Preprocessing is the checkpoint's own: a `pretrained` hub id or folder that holds an image processor
    (preprocessor_config.json) gives its size, crop, interpolation, mean and std (`native_layout` is the layout
    its processor uses, e.g. `resize_crop` for CLIP); with `image_size` the short side before the crop scales
    with it. Without one (random weights, a bare tower): the config's size, bilinear, the family's mean and std.
    The arguments above override either.
    """

    def __init__(
        self,
        family: Literal["clip", "siglip", "dinov2"],
        pretrained: str | None = None,
        config: dict[str, Any] | None = None,
        feature_layer: int | Sequence[int] = -2,
        feature_select: Literal["default", "full"] = "default",
        image_size: int | None = None,
        image_mean: tuple[float, float, float] | None = None,
        image_std: tuple[float, float, float] | None = None,
        interpolation: str | None = None,
        shortest_edge: int | None = None,
    ) -> None:
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"unknown vision family '{family}'; valid choices: {', '.join(FAMILIES)}")
        if feature_select not in ("default", "full"):
            raise ValueError(f"feature_select must be 'default' or 'full', got '{feature_select}'")
        spec = FAMILIES[family]
        if pretrained is not None:
            self.model = spec.model_cls.from_pretrained(pretrained, **(config or {}))
        else:
            self.model = spec.model_cls(spec.config_cls(**(config or {})))
        self.family = family
        self.feature_layers = feature_layers(feature_layer)
        self.num_dropped_tokens = spec.num_prefix_tokens if feature_select == "default" else 0
        own = checkpoint_recipe(pretrained) if pretrained is not None else None
        recipe, self.native_layout = own if own is not None else ({"mean": spec.mean, "std": spec.std}, None)
        if image_size is not None:
            if recipe.get("shortest_edge"):  # the crop's margin kept in proportion (timm's crop_pct)
                recipe["shortest_edge"] = image_size * recipe["shortest_edge"] // recipe["height"]
            recipe.update(height=image_size, width=image_size)
        recipe.setdefault("height", self.model.config.image_size)
        recipe.setdefault("width", self.model.config.image_size)
        overrides = {
            "mean": image_mean,
            "std": image_std,
            "interpolation": interpolation,
            "shortest_edge": shortest_edge,
        }
        recipe.update({k: v for k, v in overrides.items() if v is not None})
        self.preprocessing = ImagePreprocessing(
            **{**recipe, "mean": tuple(recipe["mean"]), "std": tuple(recipe["std"])}
        )
        size = (self.preprocessing.height, self.preprocessing.width)
        # DINOv2 always interpolates its position embeddings; CLIP and SigLIP only when asked.
        self._forward_kwargs = (
            {"interpolate_pos_encoding": True}
            if family != "dinov2" and size != (self.model.config.image_size,) * 2
            else {}
        )
        self._probe_shapes()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values, output_hidden_states=True, **self._forward_kwargs)
        features = torch.cat([out.hidden_states[i] for i in self.feature_layers], dim=-1)  # (B, prefix + N, d * k)
        return features[:, self.num_dropped_tokens :]

    def block_classes(self) -> set[type[torch.nn.Module]]:
        return repeated_block_classes(self.model)
