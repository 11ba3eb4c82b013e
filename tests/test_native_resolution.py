"""Native-resolution encoders against transformers, from PNG files: vlmlab's patches equal Qwen2-VL's and SigLIP2's
image processors (sizes, grids, pixels), its towers' features equal transformers' models on those inputs, and a packed
sequence of images gives each image's features alone. Tiny random models saved with `save_pretrained`; images of very
different shapes (30 x 200, 200 x 30, ...).

The reference is the official implementation of both families, transformers 5.24.0 (pinned in constraints.txt; its
v5.24.0 tag on the default branch), run here: `Qwen2VLImageProcessor` and `Siglip2ImageProcessor` (torchvision
backend), `Qwen2VLForConditionalGeneration` and `Siglip2VisionModel`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Siglip2Config,
    Siglip2ImageProcessor,
    Siglip2Model,
)

from vlmlab.data.native_resolution import image_patches, pack_patches
from vlmlab.models.encoders.native_resolution import Qwen2VLVisionEncoder, Siglip2NaFlexEncoder
from vlmlab.models.encoders.patch_recipe import PatchRecipe, qwen2_vl_size, siglip2_size
from vlmlab.models.image_layout import NativeTokenLayout

SHAPES = [(30, 200), (200, 30), (64, 64), (33, 47), (120, 90)]  # height x width
QWEN_VISION = dict(depth=2, embed_dim=32, hidden_size=48, num_heads=4, mlp_ratio=2, patch_size=14)
QWEN_TEXT = dict(
    hidden_size=48,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=300,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 2]},
)
SIGLIP2_VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=8, num_patches=64
)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Image.Image]:
    """Noise images of SHAPES, written as PNG files and opened as a user's files are."""
    folder = tmp_path_factory.mktemp("images")
    generator = np.random.default_rng(0)
    paths = []
    for k, (height, width) in enumerate(SHAPES):
        pixels = generator.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{k}.png")
        paths.append(folder / f"{k}.png")
    return [Image.open(path) for path in paths]


@pytest.fixture(scope="module")
def qwen2_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2-VL (the whole model) and its image processor (a small pixel budget), saved."""
    folder = tmp_path_factory.mktemp("qwen2_vl")
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(vision_config=QWEN_VISION, text_config=QWEN_TEXT))
    model.save_pretrained(folder)
    Qwen2VLImageProcessor(min_pixels=4 * 28 * 28, max_pixels=40 * 28 * 28).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def siglip2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SigLIP2 (text and vision, as published) and its NaFlex processor, saved."""
    folder = tmp_path_factory.mktemp("siglip2")
    torch.manual_seed(0)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=100)
    Siglip2Model(Siglip2Config(text_config=text, vision_config=SIGLIP2_VISION)).save_pretrained(folder)
    Siglip2ImageProcessor(patch_size=8, max_num_patches=48).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("budget", [(4, 40), (16, 64), (1, 1024)])
def test_qwen2_vl_sizes_and_patches_equal_its_processor(images: list[Image.Image], budget: tuple[int, int]) -> None:
    min_tokens, max_tokens = budget
    recipe = PatchRecipe(  # 28 x 28 px a token
        "qwen2_vl", 14, 2, 2, mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711),
        interpolation="bicubic", min_pixels=min_tokens * 784, max_pixels=max_tokens * 784,
    )  # fmt: skip
    processor = Qwen2VLImageProcessor(min_pixels=recipe.min_pixels, max_pixels=recipe.max_pixels)
    for image in images:
        expected = processor(images=[image], return_tensors="pt")
        got = image_patches(image, recipe)
        assert list(expected["image_grid_thw"][0]) == list(got.grid), (image.size, budget)
        assert got.patches.shape == expected["pixel_values"].shape
        torch.testing.assert_close(got.patches, expected["pixel_values"], atol=1e-5, rtol=0)
        tokens = NativeTokenLayout(4, max_tokens).count(recipe.grid(image.height, image.width))  # merged 2 x 2
        assert tokens == int(expected["image_grid_thw"][0].prod()) // 4
        assert min_tokens <= tokens <= max_tokens


@pytest.mark.parametrize("max_patches", [16, 48, 256])
def test_siglip2_sizes_and_patches_equal_its_processor(images: list[Image.Image], max_patches: int) -> None:
    recipe = PatchRecipe("siglip2", 8, 1, 1, (0.5,) * 3, (0.5,) * 3, "bilinear", max_num_patches=max_patches)
    processor = Siglip2ImageProcessor(patch_size=8, max_num_patches=max_patches)
    for image in images:
        expected = processor(images=[image], return_tensors="pt")
        got = image_patches(image, recipe)
        rows, cols = expected["spatial_shapes"][0].tolist()
        assert got.grid == (1, rows, cols), (image.size, max_patches)
        real = int(expected["pixel_attention_mask"][0].sum())
        assert real == rows * cols <= max_patches and got.patches.shape[0] == real
        torch.testing.assert_close(got.patches, expected["pixel_values"][0, :real], atol=1e-5, rtol=0)


def test_size_rules_hold_their_edges() -> None:
    assert qwen2_vl_size(30, 200, 28, 4 * 784, 40 * 784) == (28, 196)  # each side a multiple of 28
    with pytest.raises(ValueError, match="aspect ratio is over 200"):
        qwen2_vl_size(1, 201, 28, 784, 40 * 784)
    assert siglip2_size(1, 500, 8, 16) == (8, 128)  # at least one patch a side, within the budget
    with pytest.raises(ValueError, match="min_pixels <= max_pixels"):
        PatchRecipe("qwen2_vl", 14, 2, 2, (0.5,) * 3, (0.5,) * 3, "bicubic", min_pixels=10, max_pixels=5)
    # keep_aspect_ratio: false: the largest square of whole tokens within the budget, whatever the shape
    stats = ((0.5,) * 3, (0.5,) * 3, "bicubic")
    square = PatchRecipe("qwen2_vl", 14, 2, 2, *stats, min_pixels=784, max_pixels=40 * 784, square=True)
    assert square.resized(30, 200) == square.resized(200, 30) == (168, 168) and square.grid(5, 5) == (1, 12, 12)
    square = PatchRecipe("siglip2", 8, 1, 1, *stats, max_num_patches=48, square=True)
    assert square.resized(30, 200) == (48, 48) and square.grid(200, 30) == (1, 6, 6)


def test_qwen2_vl_tower_gives_transformers_features(qwen2_vl: Path, images: list[Image.Image]) -> None:
    reference = Qwen2VLForConditionalGeneration.from_pretrained(qwen2_vl).eval()
    processor = Qwen2VLImageProcessor.from_pretrained(qwen2_vl)
    merged = Qwen2VLVisionEncoder(pretrained=str(qwen2_vl)).eval()
    patches = Qwen2VLVisionEncoder(pretrained=str(qwen2_vl), output="patches").eval()
    assert merged.recipe.min_pixels == 4 * 784 and merged.recipe.max_pixels == 40 * 784  # the processor's budget
    inputs = processor(images=images, return_tensors="pt")
    packed, grids = pack_patches([image_patches(image, merged.recipe) for image in images])
    assert torch.equal(grids, inputs["image_grid_thw"])
    with torch.no_grad():
        tower = reference.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
        got_merged, got_patches = merged(packed, grids), patches(packed, grids)
    torch.testing.assert_close(got_merged, tower.pooler_output, atol=1e-4, rtol=0)
    torch.testing.assert_close(got_patches, tower.last_hidden_state, atol=1e-4, rtol=0)
    assert got_merged.shape == (int(merged.token_layout.counts(grids).sum()), 48) and merged.output_dim == 48
    assert got_patches.shape == (int(patches.token_layout.counts(grids).sum()), 32) and patches.output_dim == 32


def test_siglip2_naflex_packed_gives_transformers_padded_features(siglip2: Path, images: list[Image.Image]) -> None:
    processor = Siglip2ImageProcessor.from_pretrained(siglip2)
    inputs = processor(images=images, return_tensors="pt")
    last = Siglip2NaFlexEncoder(pretrained=str(siglip2)).eval()
    middle = Siglip2NaFlexEncoder(pretrained=str(siglip2), feature_layer=-2).eval()
    assert last.recipe.max_num_patches == 48
    reference = last.model  # transformers' own Siglip2VisionModel, run as transformers runs it: padded
    packed, grids = pack_patches([image_patches(image, last.recipe) for image in images])
    assert torch.equal(grids[:, 1:], inputs["spatial_shapes"])
    with torch.no_grad():
        out = reference(**inputs, output_hidden_states=True)
        got_last, got_middle = last(packed, grids), middle(packed, grids)
    mask = inputs["pixel_attention_mask"].bool()
    torch.testing.assert_close(got_last, out.last_hidden_state[mask], atol=1e-4, rtol=0)
    torch.testing.assert_close(got_middle, out.hidden_states[-2][mask], atol=1e-4, rtol=0)
    whole = Siglip2Model.from_pretrained(siglip2).vision_model.state_dict()  # the published layout's vision weights
    assert all(torch.equal(whole[k], v) for k, v in last.model.state_dict().items())


@pytest.mark.parametrize("family", ["qwen2_vl", "siglip2"])
def test_a_packed_batch_gives_each_image_its_features_alone(
    family: str, images: list[Image.Image], qwen2_vl: Path, siglip2: Path
) -> None:
    encoder = Qwen2VLVisionEncoder(str(qwen2_vl)) if family == "qwen2_vl" else Siglip2NaFlexEncoder(str(siglip2))
    encoder.eval()
    each = [image_patches(image, encoder.recipe) for image in images]
    packed, grids = pack_patches(each)
    with torch.no_grad():
        together = encoder(packed, grids).split(encoder.token_layout.counts(grids).tolist())
        for alone, one in zip(together, each):
            torch.testing.assert_close(alone, encoder(*pack_patches([one])), atol=1e-5, rtol=0)


def test_a_checkpoint_of_another_model_or_without_the_towers_weights_is_named(qwen2_vl: Path, siglip2: Path) -> None:
    with pytest.raises(ValueError, match="holds a 'siglip2' model, not Qwen2-VL"):
        Qwen2VLVisionEncoder(pretrained=str(siglip2))
    text_only = qwen2_vl.parent / "text_only"
    text_only.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (text_only / name).write_bytes((qwen2_vl / name).read_bytes())
    weights = load_file(qwen2_vl / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "visual" not in k}, text_only / "model.safetensors")
    with pytest.raises(ValueError, match="no weights under model.visual. or visual."):
        Qwen2VLVisionEncoder(pretrained=str(text_only))


def test_a_shard_index_naming_a_file_outside_its_folder_is_refused(qwen2_vl: Path) -> None:
    """The index of a folder from someone else names its shards; one beside the folder is never opened."""
    folder = qwen2_vl.parent / "outside_index"
    folder.mkdir()
    (folder / "config.json").write_bytes((qwen2_vl / "config.json").read_bytes())
    (qwen2_vl.parent / "beside.safetensors").write_bytes((qwen2_vl / "model.safetensors").read_bytes())
    index = {"metadata": {}, "weight_map": {"model.visual.merger.ln_q.weight": "../beside.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"names '\.\./beside.safetensors', which is not a file of that folder"):
        Qwen2VLVisionEncoder(pretrained=str(folder))
