"""Native-resolution vision towers: every image at its own shape, all images' patches one packed sequence.

`forward(patches, grids)` takes the patches of several images end to end ([sum of patches, patch_dim], from
`vlmlab.data.native_resolution.pack_patches`) and their grids ([num_images, 3]: frames, patch rows, patch columns),
and returns their features end to end ([sum of tokens, output_dim]). Attention stays within each image
(block-diagonal: each image's own SDPA call, or flash-attention's variable-length kernel where transformers uses
it), so an image's features do not depend on what it is packed with, and no padding is computed.

- `Qwen2VLVisionEncoder`: transformers' Qwen2-VL tower (2D rotary positions, 2 x 2 patch merger).
- `Siglip2NaFlexEncoder`: transformers' SigLIP2 vision model (position embeddings resized to each image's grid),
  run packed instead of padded to `max_num_patches`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, Siglip2VisionConfig, Siglip2VisionModel
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel
from transformers.utils import cached_file

from vlmlab.models.blocks import repeated_block_classes
from vlmlab.models.encoders.hf_encoder import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from vlmlab.models.encoders.hf_preprocessing import pixel_statistics, saved_processor
from vlmlab.models.encoders.patch_recipe import PatchRecipe
from vlmlab.models.image_layout import NativeTokenLayout

QWEN2_VL_PREFIXES = ("model.visual.", "visual.")  # transformers >= 4.52 saves the first, the published files the second


@dataclass(frozen=True)
class PatchFlops:
    """Forward FLOPs of a native-resolution tower on packed images: `per_patch` x n + `per_pair` x n^2 for each image
    of n patches (linear layers, embeddings and merger grow with n; the attention products with n^2)."""

    per_patch: int
    per_pair: int

    def __call__(self, grids: torch.Tensor) -> int:
        patches = grids.prod(-1)
        return int(self.per_patch * patches.sum() + self.per_pair * (patches**2).sum())


class NativeResolutionEncoder(nn.Module):
    """Packed patches of images at their own shapes -> packed features (see the module docstring).

    Subclasses build `model`, set `recipe`, `output_dim` and `patches_per_token` (patches per output token: 4 for a
    2 x 2 merger, else 1), implement `forward`, and call `_probe_flops()` at the end of `__init__`."""

    recipe: PatchRecipe
    output_dim: int
    patches_per_token: int
    flops: PatchFlops  # forward FLOPs of the images of a batch's grids, packed

    @property
    def token_layout(self) -> NativeTokenLayout:
        """Tokens per image of a grid, and the most an image gives under the recipe's budget."""
        r = self.recipe
        patches = r.max_num_patches if r.layout == "siglip2" else r.max_pixels // r.patch_size**2
        return NativeTokenLayout(self.patches_per_token, patches // self.patches_per_token)

    def _probe_flops(self) -> None:
        """`flops` from `FlopCounterMode` on blank images of 2 x 2 and 4 x 4 merged blocks: two sizes give its two
        constants."""
        side = self.recipe.merge_size
        patch_dim = self.recipe.patch_dim
        counts = []
        for blocks in (2, 4):
            grid = torch.tensor([[1, blocks * side, blocks * side]])
            with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
                self.forward(torch.zeros(int(grid.prod()), patch_dim), grid)
            counts.append((int(grid.prod()), int(counter.get_total_flops())))
        (n1, f1), (n2, f2) = counts
        per_pair = (f2 * n1 - f1 * n2) // (n1 * n2 * (n2 - n1))
        self.flops = PatchFlops(per_patch=(f1 - per_pair * n1 * n1) // n1, per_pair=per_pair)

    def block_classes(self) -> set[type[nn.Module]]:
        return repeated_block_classes(self.model)


def processor_patch_recipe(pretrained: str) -> PatchRecipe | None:
    """The recipe of the image processor saved with a hub id or folder (`saved_processor`); None without one."""
    processor = saved_processor(pretrained)
    if processor is None:
        return None
    fields = pixel_statistics(processor, pretrained)
    if hasattr(processor, "max_num_patches"):
        return PatchRecipe("siglip2", processor.patch_size, 1, 1, max_num_patches=processor.max_num_patches, **fields)
    size = processor.size
    return PatchRecipe(
        "qwen2_vl",
        processor.patch_size,
        processor.merge_size,
        processor.temporal_patch_size,
        min_pixels=int(size.shortest_edge),
        max_pixels=int(size.longest_edge),
        **fields,
    )


def weight_files(pretrained: str) -> list[str]:
    """The safetensors files of a hub id or folder (one file, or the shards its index lists)."""
    try:
        index = cached_file(pretrained, "model.safetensors.index.json")
    except OSError:  # not sharded
        return [cached_file(pretrained, "model.safetensors")]
    with open(index) as handle:
        shards = sorted(set(json.load(handle)["weight_map"].values()))
    outside = [shard for shard in shards if Path(shard).name != shard or shard in ("", ".", "..")]
    if outside:  # the index may come from someone else: it names files of its own folder, nothing beside it
        raise ValueError(
            f"{pretrained}: model.safetensors.index.json names {outside[0]!r}, which is not a file of that folder; "
            "a shard is named by its file name alone"
        )
    return [cached_file(pretrained, shard) for shard in shards]


def tower_weights(pretrained: str, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The tensors under the first of `prefixes` that the checkpoint uses, without it; only those are read."""
    files = weight_files(pretrained)
    for prefix in prefixes:
        weights: dict[str, torch.Tensor] = {}
        for path in files:
            with safe_open(path, framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (a safetensors handle is not a dict)
                    if key.startswith(prefix):
                        weights[key.removeprefix(prefix)] = handle.get_tensor(key)
        if weights:
            return weights
    raise ValueError(f"{pretrained}: no weights under {' or '.join(prefixes)}; is it a Qwen2-VL checkpoint?")


class Qwen2VLVisionEncoder(NativeResolutionEncoder):
    """Qwen2-VL's vision tower (transformers' `Qwen2VisionTransformerPretrainedModel`).

    Args:
        pretrained: a Qwen2-VL checkpoint (hub id or folder, the whole model's): its vision config and only its
            vision weights are read; None builds random weights from `config`.
        config: `Qwen2VLVisionConfig` fields (a tiny tower for tests), or overrides of the checkpoint's.
        output: `merged` (the tower's own 2 x 2 patch merger, Qwen2-VL's connector: one token per 4 patches in the
            LLM's width) or `patches` (the last block's features per patch, for a vlmlab connector).
        min_tokens, max_tokens: the token budget per image (tokens after merging); None: the checkpoint
            processor's `min_pixels` / `max_pixels` (random weights: 4 and 256).
        interpolation: resize filter override (the processor's: bicubic).
        image_mean, image_std: normalisation overrides (the processor's: CLIP's).
        keep_aspect_ratio: false stretches every image to the square of `max_tokens` (a fixed-size encoder's resize,
            at this tower).
    """

    def __init__(
        self,
        pretrained: str | None = None,
        config: dict[str, Any] | None = None,
        output: Literal["merged", "patches"] = "merged",
        min_tokens: int | None = None,
        max_tokens: int | None = None,
        interpolation: str | None = None,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        keep_aspect_ratio: bool = True,
    ) -> None:
        super().__init__()
        if output not in ("merged", "patches"):
            raise ValueError(f"output must be 'merged' or 'patches', got '{output}'")
        if pretrained is not None:
            whole = AutoConfig.from_pretrained(pretrained)
            if whole.model_type != "qwen2_vl":
                raise ValueError(
                    f"{pretrained} holds a '{whole.model_type}' model, not Qwen2-VL (model_type qwen2_vl); "
                    "Qwen2.5-VL's tower (window attention) is another architecture"
                )
            vision_config = whole.vision_config
            for key, value in (config or {}).items():
                setattr(vision_config, key, value)
            self.model = Qwen2VisionTransformerPretrainedModel(vision_config)
            self.model.load_state_dict(tower_weights(pretrained, QWEN2_VL_PREFIXES), strict=True)
            own = processor_patch_recipe(pretrained)
        else:
            self.model = Qwen2VisionTransformerPretrainedModel(Qwen2VLVisionConfig(**(config or {})))
            own = None
        vision = self.model.config
        self.output = output
        unit = (vision.patch_size * vision.spatial_merge_size) ** 2
        fields = {
            "mean": OPENAI_CLIP_MEAN,
            "std": OPENAI_CLIP_STD,
            "interpolation": "bicubic",
            "min_pixels": 4 * unit,
            "max_pixels": 256 * unit,
        }
        if own is not None:
            fields.update(mean=own.mean, std=own.std, interpolation=own.interpolation, min_pixels=own.min_pixels)
            fields.update(max_pixels=own.max_pixels, rescale_factor=own.rescale_factor)
        fields.update({k: v * unit for k, v in (("min_pixels", min_tokens), ("max_pixels", max_tokens)) if v})
        fields.update({"interpolation": interpolation} if interpolation else {})
        fields.update({"mean": tuple(image_mean)} if image_mean else {})
        fields.update({"std": tuple(image_std)} if image_std else {})
        self.recipe = PatchRecipe(
            "qwen2_vl",
            vision.patch_size,
            vision.spatial_merge_size,
            vision.temporal_patch_size,
            square=not keep_aspect_ratio,
            **fields,
        )
        self.output_dim = vision.hidden_size if output == "merged" else vision.embed_dim
        self.patches_per_token = vision.spatial_merge_size**2 if output == "merged" else 1
        self._probe_flops()

    def forward(self, patches: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
        out = self.model(patches, grid_thw=grids)
        return out.pooler_output if self.output == "merged" else out.last_hidden_state


class Siglip2NaFlexEncoder(NativeResolutionEncoder):
    """SigLIP2 NaFlex (transformers' `Siglip2VisionModel`), every image's patches in one packed sequence.

    Its own forward runs the model's modules (patch embedding, position embeddings resized to each image's grid by
    the model's `resize_positional_embeddings`, encoder layers, final norm) on the packed patches, with attention
    within each image: the features of transformers' padded batch, without its padding.

    Args:
        pretrained: a SigLIP2 checkpoint (hub id or folder; its vision model is loaded); None: random weights.
        config: `Siglip2VisionConfig` fields (a tiny tower for tests), or overrides.
        feature_layer: the layer whose output is taken (as transformers' `hidden_states`: 0 the embeddings,
            -1 the last layer, taken after the final norm as `last_hidden_state`).
        max_tokens: the patch budget per image; None: the checkpoint processor's `max_num_patches` (random
            weights: the config's `num_patches`).
        interpolation: resize filter override (the processor's: bilinear).
        keep_aspect_ratio: false stretches every image to the largest square within `max_tokens` patches (a
            fixed-size encoder's resize, at this tower).
    """

    def __init__(
        self,
        pretrained: str | None = None,
        config: dict[str, Any] | None = None,
        feature_layer: int = -1,
        max_tokens: int | None = None,
        interpolation: str | None = None,
        keep_aspect_ratio: bool = True,
    ) -> None:
        super().__init__()
        if pretrained is not None:
            self.model = Siglip2VisionModel.from_pretrained(pretrained, **(config or {}))
            own = processor_patch_recipe(pretrained)
        else:
            self.model = Siglip2VisionModel(Siglip2VisionConfig(**(config or {})))
            own = None
        vision = self.model.config
        layers = len(self.model.encoder.layers)
        if not -layers - 1 <= feature_layer <= layers:
            raise ValueError(f"feature_layer={feature_layer}: the tower has {layers} layers (0 is the embeddings)")
        self.feature_layer = feature_layer % (layers + 1)
        fields: dict[str, Any] = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear"}
        budget = vision.num_patches
        if own is not None:
            fields.update(mean=own.mean, std=own.std, interpolation=own.interpolation)
            fields.update(rescale_factor=own.rescale_factor)
            budget = own.max_num_patches
        fields.update({"interpolation": interpolation} if interpolation else {})
        budget = max_tokens or budget
        square = not keep_aspect_ratio
        self.recipe = PatchRecipe("siglip2", vision.patch_size, 1, 1, max_num_patches=budget, square=square, **fields)
        self.output_dim = vision.hidden_size
        self.patches_per_token = 1
        self._probe_flops()

    def forward(self, patches: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
        embeddings = self.model.embeddings
        hidden = embeddings.patch_embedding(patches.to(embeddings.patch_embedding.weight.dtype))
        side = embeddings.position_embedding_size
        table = embeddings.position_embedding.weight.reshape(side, side, -1)
        shapes = grids[:, 1:]
        lengths = shapes.prod(-1).tolist()
        positions = [  # each image's own (none padded to the longest)
            embeddings.resize_positional_embeddings(table, shape[None], max_length=length)[0]
            for shape, length in zip(shapes, lengths)
        ]
        hidden = hidden + torch.cat(positions)
        for layer in self.model.encoder.layers[: self.feature_layer]:
            hidden = encoder_layer(layer, hidden, lengths)
        if self.feature_layer == len(self.model.encoder.layers):
            hidden = self.model.post_layernorm(hidden)
        return hidden


def encoder_layer(layer: nn.Module, hidden: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """A SigLIP2 encoder layer (pre-norm attention, then pre-norm MLP) on packed tokens [N, d], each image
    attending to itself."""
    hidden = hidden + packed_self_attention(layer.self_attn, layer.layer_norm1(hidden), lengths)
    return hidden + layer.mlp(layer.layer_norm2(hidden))


def packed_self_attention(attention: nn.Module, hidden: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Bidirectional multi-head attention of a SigLIP2 attention module within each run of `lengths` tokens."""
    heads, head_dim = attention.num_heads, attention.head_dim

    def split(x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # [N, d] -> per image [1, heads, n, head_dim]
        return x.view(-1, heads, head_dim).transpose(0, 1).unsqueeze(0).split(lengths, dim=2)

    queries, keys, values = (split(proj(hidden)) for proj in (attention.q_proj, attention.k_proj, attention.v_proj))
    dropout = attention.dropout if attention.training else 0.0
    out = torch.cat(
        [
            nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=attention.scale)
            for q, k, v in zip(queries, keys, values)
        ],
        dim=2,
    )  # [1, heads, N, head_dim]
    return attention.out_proj(out.squeeze(0).transpose(0, 1).reshape(hidden.shape))
