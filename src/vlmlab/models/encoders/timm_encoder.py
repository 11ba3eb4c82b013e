"""Vision encoders from timm: any `timm.create_model` name with `forward_intermediates`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import timm
import torch

from vlmlab.models.encoders.base import ImagePreprocessing, VisionEncoder, feature_layers


class TimmVisionEncoder(VisionEncoder):
    """Features of one block of a timm backbone.

    Args:
        model_name: a timm model name, e.g. `vit_large_patch14_clip_336.openai`.
        pretrained: load timm's pretrained weights (from the hub, or from `checkpoint_path`).
        checkpoint_path: a local weights file used instead of the hub when `pretrained` is true.
        feature_layer: block whose output is used; negative counts from the end (-2 = penultimate, as LLaVA);
            a list of blocks concatenates their features per patch. Blocks after the last one used, and the
            final norm and head, are removed from the model (timm's `prune_intermediate_layers`).
        keep_prefix_tokens: keep CLS/register tokens in front of the patch tokens.
        image_size: input size override (timm resizes position embeddings).
        model_kwargs: extra constructor arguments (depth, embed_dim, patch_size, ... for tiny models).
        interpolation, crop_pct: preprocessing overrides (`resize_crop` scales the short side to the input size
            / crop_pct before the centre crop).

    Preprocessing is timm's eval transform for pretrained weights (the pretrained config's interpolation,
    crop_pct, mean and std, reproduced exactly for `data.image_resize=resize_crop`, its `center` crop mode); for
    random weights: bilinear, the config's mean and std (no checkpoint defines one).
    """

    def __init__(
        self,
        model_name: str,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        feature_layer: int | Sequence[int] = -2,
        keep_prefix_tokens: bool = False,
        image_size: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
        interpolation: str | None = None,
        crop_pct: float | None = None,
    ) -> None:
        super().__init__()
        kwargs = dict(model_kwargs or {})
        if image_size is not None:
            kwargs["img_size"] = image_size
        if checkpoint_path is not None:
            kwargs["pretrained_cfg_overlay"] = {"file": checkpoint_path}
        self.model = timm.create_model(model_name, pretrained=pretrained, num_classes=0, **kwargs)
        if not hasattr(self.model, "forward_intermediates"):
            raise ValueError(
                f"timm model '{model_name}' has no forward_intermediates(), so vlmlab cannot take features "
                "from a chosen block; pick a ViT, EVA, ConvNeXt or another timm model that has it."
            )
        self.feature_layers = feature_layers(feature_layer)
        try:
            # The blocks after the last chosen one and the final norm and head take no part in the features:
            # dropped, so that they hold no memory and DDP finds no parameter without a gradient.
            self.feature_layers = self.model.prune_intermediate_layers(
                self.feature_layers, prune_norm=True, prune_head=True
            )
        except (AssertionError, IndexError) as err:  # timm asserts on an out-of-range block index
            raise ValueError(
                f"timm model '{model_name}': feature_layer={feature_layer} is not a valid block ({err})"
            ) from err
        self.keep_prefix_tokens = keep_prefix_tokens
        data_config = timm.data.resolve_model_data_config(self.model)
        _, height, width = data_config["input_size"]
        # A size set at construction lives on the patch embedding; the pretrained config still says 224.
        patch_embed_size = getattr(getattr(self.model, "patch_embed", None), "img_size", None)
        if patch_embed_size is not None:
            height, width = patch_embed_size
        self.preprocessing = timm_preprocessing(
            model_name, data_config, (height, width), pretrained, interpolation, crop_pct
        )
        try:
            self._probe_shapes()
        except AssertionError as err:  # timm asserts on an out-of-range block index
            raise ValueError(
                f"timm model '{model_name}': feature_layer={feature_layer} is not a valid block ({err})"
            ) from err

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        outs = self.model.forward_intermediates(
            pixel_values,
            indices=self.feature_layers,
            return_prefix_tokens=self.keep_prefix_tokens,
            norm=False,
            stop_early=True,
            output_fmt="NCHW",
            intermediates_only=True,
        )
        prefix = None
        if self.keep_prefix_tokens:
            outs, prefixes = zip(*outs)
            prefix = torch.cat(prefixes, dim=-1)
        out = torch.cat(outs, dim=1)  # layers side by side: (B, C * k, H, W)
        features = out.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C), row-major patches
        if prefix is not None:
            features = torch.cat([prefix, features], dim=1)
        return features

    def block_classes(self) -> set[type[torch.nn.Module]]:
        blocks = getattr(self.model, "blocks", None) or getattr(self.model, "stages", None)
        if blocks is None:
            return set()
        return {type(block) for block in blocks}


def timm_preprocessing(
    model_name: str,
    data_config: dict[str, Any],
    size: tuple[int, int],
    pretrained: bool,
    interpolation: str | None,
    crop_pct: float | None,
) -> ImagePreprocessing:
    """The recipe of timm's eval transform (`transforms_imagenet_eval`: the short side to size / crop_pct, then a
    centre crop) for pretrained weights; vlmlab's default (bilinear, no margin) for random ones."""
    mean, std = tuple(data_config["mean"]), tuple(data_config["std"])
    if not pretrained:
        pct = crop_pct or 1.0
        return ImagePreprocessing(*size, mean, std, interpolation or "bilinear", math.floor(min(size) / pct))
    mode = data_config.get("crop_mode") or "center"
    if mode != "center" and crop_pct is None:
        raise ValueError(
            f"timm model '{model_name}' is evaluated with crop_mode='{mode}', which vlmlab does not reproduce (it "
            "reproduces 'center'); set model.encoder.crop_pct to use a centre crop"
        )
    pct = crop_pct or data_config["crop_pct"]
    return ImagePreprocessing(
        *size, mean, std, interpolation or data_config["interpolation"], math.floor(min(size) / pct), "timm"
    )
