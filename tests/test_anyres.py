"""AnyRes (LLaVA-NeXT tiling): the grid choice, the tiles and the token layout against transformers'
LLaVA-NeXT code (transformers 5.24.0, the release installed from the package registry: its
`select_best_resolution`, `LlavaNextProcessor._get_number_of_features` and
`LlavaNextModel.pack_image_features`), and per-image token counts through the data pipeline."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlavaNextConfig, LlavaNextImageProcessor, LlavaNextModel, LlavaNextProcessor
from transformers.image_processing_utils import select_best_resolution as hf_select_best_resolution

from tests.tiny_models import tiny_vlm
from vlmlab.data.chat_format import IGNORE_INDEX, ChatFormatter, SampleError
from vlmlab.data.check import check_split, report_dict
from vlmlab.data.conversation_dataset import ConversationDataset, collate
from vlmlab.data.datamodule import VLMDataModule, loading_options
from vlmlab.data.feature_cache import feature_store
from vlmlab.data.image_processing import ImageProcessor, image_processor_for
from vlmlab.data.lengths import SampleLengths
from vlmlab.data.packing import collate_packed
from vlmlab.data.tiling import Tiling, select_best_resolution
from vlmlab.models.encoders.base import ImagePreprocessing
from vlmlab.models.image_layout import (
    ImageTokenLayout,
    arrange_image_tokens,
    tile_count,
    tokens_side,
    unpadded_size,
)
from vlmlab.models.vlm import VisionLanguageModel
from vlmlab.training.module import VLMTrainingModule
from vlmlab.training.stage import StageSpec

LLAVA_NEXT_GRIDS = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))  # LLaVA-NeXT's pinpoints at 336 px, in tiles
ONEVISION_GRIDS = tuple((r, c) for r in range(1, 7) for c in range(1, 7))  # anyres_max: every grid up to 6x6
SIDES = (1, 7, 32, 48, 100, 224, 336, 337, 500, 672, 1000, 1344, 2016, 4000)
PREP = ImagePreprocessing(32, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@pytest.mark.parametrize("grids, tile", [(LLAVA_NEXT_GRIDS, 336), (ONEVISION_GRIDS, 384), (LLAVA_NEXT_GRIDS, 32)])
def test_grid_choice_equals_transformers(grids: tuple, tile: int) -> None:
    resolutions = [(r * tile, c * tile) for r, c in grids]
    for size in itertools.product(SIDES, SIDES):
        assert select_best_resolution(size, resolutions) == hf_select_best_resolution(size, resolutions), size


def test_tiles_need_a_square_of_tokens() -> None:
    assert tokens_side(576) == 24
    with pytest.raises(ValueError, match="gives 32 tokens per tile"):
        tokens_side(32)  # e.g. a Q-Former's 32 queries


def test_max_tiles_leaves_out_larger_grids() -> None:
    tiling = Tiling(LLAVA_NEXT_GRIDS, 32, max_tiles=3)
    assert tiling.grid_pinpoints == ((1, 2), (2, 1), (3, 1), (1, 3))
    assert tiling.grid((1000, 1000)) != (2, 2)
    with pytest.raises(ValueError, match="max_tiles=1 leaves none"):
        Tiling(LLAVA_NEXT_GRIDS, 32, max_tiles=1)


def test_tiles_are_the_base_image_then_the_padded_grid_row_by_row() -> None:
    # 40 x 100 (h x w): the best grid of 32 px tiles is 1 x 3 (32 x 96); the image is resized to 39 x 96...
    image = Image.new("RGB", (100, 40), (255, 255, 255))
    image.paste((255, 0, 0), (0, 0, 50, 40))  # left half red, right half white
    processed = image_processor_for(PREP, "anyres", {"grid_pinpoints": [list(g) for g in LLAVA_NEXT_GRIDS]})(image)
    assert processed.grid == (1, 3, 40, 100)
    assert processed.pixels.shape == (4, 3, 32, 32)
    black = -1.0  # (0 - 0.5) / 0.5: the padding
    base, left, middle, right = processed.pixels
    assert base[0, 16, 4] == pytest.approx(1.0) and base[1, 16, 28] == pytest.approx(1.0)  # red, then white
    assert left[1, 16, 16] == pytest.approx(-1.0) and left[0, 16, 16] == pytest.approx(1.0)  # red tile
    assert right[:, 16, 16].tolist() == pytest.approx([1.0] * 3)  # white tile
    # fitted to 32 rows x 80 columns (aspect kept, short side rounded up), padded to 32 x 96: 8 black columns each side
    assert left[:, 16, :8].eq(black).all() and right[:, 16, -8:].eq(black).all()
    assert not left[:, 16, 8].eq(black).all()
    untiled = ImageProcessor(PREP, "resize")(image)
    assert untiled.pixels.shape == (1, 3, 32, 32) and untiled.grid == (0, 0, 40, 100)


@pytest.mark.parametrize("newline", [True, False])
def test_token_counts_equal_llava_next_processor(tokenizer, newline: bool) -> None:
    tile, patch = 336, 14  # 24 x 24 tokens per tile
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(
            image_grid_pinpoints=[[r * tile, c * tile] for r, c in LLAVA_NEXT_GRIDS]
        ),
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=0,
    )
    tiling, layout = Tiling(LLAVA_NEXT_GRIDS, tile), ImageTokenLayout(24 * 24, newline=True)
    for height, width in itertools.product(SIDES, SIDES):
        grid = (*tiling.grid((height, width)), height, width)
        assert layout.count(grid) == processor._get_number_of_features(height, width, tile, tile), (height, width)
    rows, cols = unpadded_size(48, 24, 100, 1000)  # a wide image on a tall grid: few rows kept
    assert ImageTokenLayout(576, newline).count((2, 1, 100, 1000)) == 576 + rows * (cols + newline)


def test_arrangement_equals_llava_next_pack_image_features() -> None:
    """The merge's layout (base tile, unpadded grid, a newline per row) is LLaVA-NeXT's own."""
    config = LlavaNextConfig(
        vision_config=dict(model_type="clip_vision_model", image_size=32, patch_size=8, hidden_size=16,
                           intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
        text_config=dict(model_type="llama", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, vocab_size=64),
        image_grid_pinpoints=[[32 * r, 32 * c] for r, c in LLAVA_NEXT_GRIDS],
    )  # fmt: skip
    hf = LlavaNextModel(config).eval()
    tiling = Tiling(LLAVA_NEXT_GRIDS, 32)
    sizes = [(40, 100), (300, 90), (64, 64), (33, 31)]
    grids = torch.tensor([(*tiling.grid(size), *size) for size in sizes])
    counts = [1 + r * c for r, c, _, _ in grids.tolist()]
    tile_tokens = torch.randn(sum(counts), 16, 16)  # 4 x 4 tokens per tile
    ours = arrange_image_tokens(tile_tokens, grids, hf.image_newline.detach())
    theirs, lengths = hf.pack_image_features(
        list(torch.split(tile_tokens, counts)), torch.tensor(sizes), "full", hf.image_newline.detach()
    )
    torch.testing.assert_close(ours, torch.cat(theirs), rtol=0, atol=0)
    layout = ImageTokenLayout(16, newline=True)
    assert lengths.tolist() == [layout.count(g) for g in grids.tolist()]


def save_image(folder: Path, name: str, size: tuple[int, int]) -> str:
    """A noisy RGB image of `size` (height, width), saved as PNG; its path."""
    pixels = torch.randint(0, 256, (size[0], size[1], 3), generator=torch.Generator().manual_seed(len(name)))
    path = folder / f"{name}.png"
    Image.fromarray(pixels.to(torch.uint8).numpy()).save(path)
    return str(path)


def records(folder: Path) -> list[dict]:
    """A wide image, a tall one, a text-only row and two images in one conversation."""
    wide, tall, square = (
        save_image(folder, n, s) for n, s in (("wide", (40, 100)), ("tall", (90, 30)), ("sq", (64, 64)))
    )
    turn = {"from": "gpt", "value": "a red cat sits"}
    return [
        {"id": "wide", "image": wide, "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, turn]},
        {"id": "tall", "image": tall, "conversations": [{"from": "human", "value": "<image>\nDescribe."}, turn]},
        {"id": "text", "conversations": [{"from": "human", "value": "Say something."}, turn]},
        {
            "id": "two",
            "image": [square, wide],
            "conversations": [{"from": "human", "value": "<image> and <image>: which is wider?"}, turn],
        },
    ]


@pytest.fixture
def anyres_model(tokenizer) -> VisionLanguageModel:
    model = tiny_vlm(tokenizer)  # CLIP 32 px, 8 px patches: 16 tokens per tile
    torch.manual_seed(0)
    model.connector.add_image_newline()
    return model


def anyres_dataset(model: VisionLanguageModel, folder: Path, max_length: int = 512) -> ConversationDataset:
    formatter = ChatFormatter(model.llm.tokenizer, model.llm.image_token, model.num_image_tokens, max_length)
    processor = image_processor_for(
        model.encoder.preprocessing, "anyres", {"grid_pinpoints": [list(g) for g in LLAVA_NEXT_GRIDS]}
    )
    return ConversationDataset(records(folder), formatter, processor, task="t", image_layout=model.image_layout)


def test_each_image_takes_its_own_token_count(anyres_model: VisionLanguageModel, tmp_path: Path) -> None:
    dataset = anyres_dataset(anyres_model, tmp_path)
    layout = anyres_model.image_layout
    expected_grids = {
        "wide": [(1, 3, 40, 100)],
        "tall": [(3, 1, 90, 30)],
        "text": None,
        "two": [(2, 2, 64, 64), (1, 3, 40, 100)],
    }
    for index, record in enumerate(dataset.records):
        sample = dataset[index]
        grids = expected_grids[record["id"]]
        is_image = sample["input_ids"] == anyres_model.image_token_id
        if grids is None:
            assert sample["pixel_values"] is None and sample["image_grids"] is None and not is_image.any()
            continue
        assert sample["image_grids"].tolist() == [list(g) for g in grids]
        assert sample["pixel_values"].shape[0] == sum(tile_count(g) for g in grids)
        assert int(is_image.sum()) == sum(layout.count(g) for g in grids)
        assert (sample["labels"][is_image] == IGNORE_INDEX).all()  # image tokens are never targets
    counts = {g: layout.count(g) for g in ((1, 3, 40, 100), (3, 1, 90, 30), (2, 2, 64, 64))}
    assert len(set(counts.values())) == 3, counts  # the three shapes take different counts
    # an untiled image with the newline token: its tile's 16 tokens and one newline
    assert anyres_model.num_image_tokens == 17


def test_truncation_through_an_images_tokens_is_refused(anyres_model: VisionLanguageModel, tmp_path: Path) -> None:
    dataset = anyres_dataset(anyres_model, tmp_path, max_length=40)
    with pytest.raises(SampleError, match="cuts off") as err:
        dataset[0]
    assert err.value.reason == "image_truncated"


def test_grouping_lengths_count_each_images_tokens(anyres_model: VisionLanguageModel, tmp_path: Path) -> None:
    dataset = anyres_dataset(anyres_model, tmp_path)
    (tmp_path / "train.json").write_text(json.dumps(dataset.records))
    datamodule = VLMDataModule(
        sources={"s": {"task": "t", "train": str(tmp_path / "train.json")}},
        mixture={"s": 1.0},
        formatter=dataset.formatter,
        image_processor=dataset.image_processor,
        micro_batch_size=2,
        image_layout=anyres_model.image_layout,
        seed=0,
        **loading_options(num_workers=0),
    )
    lengths = datamodule.lengths("s", "train")
    words = [sum(len(t["value"].split()) for t in r["conversations"]) for r in dataset.records]
    tokens = [int((dataset[i]["input_ids"] == anyres_model.image_token_id).sum()) for i in range(len(dataset))]
    assert lengths == SampleLengths([w + t if t else w for w, t in zip(words, tokens)], [t > 0 for t in tokens])
    # `vlmlab-data check` reports the tokens of each image (wide, tall, square, wide)
    report = check_split(datamodule, "s", "train")
    wide, tall, square = (anyres_model.image_layout.count(g) for g in ((1, 3, 40, 100), (3, 1, 90, 30), (2, 2, 64, 64)))
    assert sorted(report.image_tokens) == sorted([wide, tall, square, wide])
    assert report_dict([report], 512)["splits"][0]["image_tokens_per_image"]["p100"] == max(wide, tall, square)


def test_a_batch_of_different_grids_trains_and_packing_gives_the_same_loss(
    anyres_model: VisionLanguageModel, tmp_path: Path
) -> None:
    dataset = anyres_dataset(anyres_model, tmp_path)
    samples = [dataset[i] for i in range(len(dataset))]
    pad = anyres_model.llm.tokenizer.pad_token_id
    longest = max(len(s["input_ids"]) for s in samples)
    padded, packed = collate(samples, pad), collate_packed(samples, pad, pack_length=longest + 8)
    assert padded["image_grids"].shape == (4, 4) and padded["pixel_values"].shape[0] == 4 + 4 + 5 + 4
    assert packed["ids"] != padded["ids"]  # packing reorders the samples, the images follow them
    loss = anyres_model.batch_loss(padded)
    torch.testing.assert_close(anyres_model.batch_loss(packed), loss, atol=1e-5, rtol=0)
    loss.backward()
    assert anyres_model.connector.image_newline.grad.abs().sum() > 0  # the newline token learns
    patch_embedding = next(p for n, p in anyres_model.encoder.named_parameters() if "patch_embedding" in n)
    assert patch_embedding.grad.abs().sum() > 0


def test_generation_takes_tiled_images(anyres_model: VisionLanguageModel, tmp_path: Path) -> None:
    dataset = anyres_dataset(anyres_model, tmp_path)
    dataset.prompt_only = True
    batch = collate([dataset[0], dataset[2], dataset[3]], anyres_model.llm.tokenizer.pad_token_id, padding_side="left")
    new_tokens = anyres_model.eval().generate_from_batch(batch, max_new_tokens=3)
    assert new_tokens.shape[0] == 3
    model_copy = copy.deepcopy(anyres_model)
    model_copy.connector.image_newline.data.add_(1.0)  # the newline token is read: other logits
    ids, mask = batch["input_ids"], batch["attention_mask"]
    logits = anyres_model(ids, mask, batch["pixel_values"], image_grids=batch["image_grids"]).logits
    other = model_copy(ids, mask, batch["pixel_values"], image_grids=batch["image_grids"]).logits
    assert not torch.allclose(logits, other)


def test_flops_per_batch_count_every_tile(anyres_model: VisionLanguageModel, tmp_path: Path) -> None:
    """The MFU's FLOPs of a tiled batch: the encoder and connector once per tile, the LLM on every image token."""
    dataset = anyres_dataset(anyres_model, tmp_path)
    batch = collate([dataset[i] for i in range(len(dataset))], anyres_model.llm.tokenizer.pad_token_id)
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])  # padding is not counted by the estimate
    train = dict.fromkeys(("encoder", "connector", "llm"), "full")
    module = VLMTrainingModule(
        anyres_model,
        StageSpec.from_fields(name="s", mixture="m", train=train, lr=dict.fromkeys(train, 1e-3), loss="full"),
    )
    module.train()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        module.batch_loss(batch).backward()
    module.training_step(batch, 0)
    assert abs(module.flops_per_batch / counter.get_total_flops() - 1) < 0.1  # as tests/test_flops.py, untiled


def test_the_feature_cache_stores_tiles_and_grids(anyres_model: VisionLanguageModel, tmp_path: Path) -> None:
    """A frozen encoder's cache holds every tile's features and each image's grid: the same samples and loss."""
    dataset = anyres_dataset(anyres_model, tmp_path)
    anyres_model.eval()
    store = feature_store(
        tmp_path / "cache", "s", "train", anyres_model.encoder, dataset, {"dtype": "float32", "batch_size": 64}
    )
    cached = dataset.with_features(store)
    samples, stored = [dataset[i] for i in range(len(dataset))], [cached[i] for i in range(len(cached))]
    for sample, from_cache in zip(samples, stored):
        assert torch.equal(sample["input_ids"], from_cache["input_ids"]) and from_cache["pixel_values"] is None
        grids = sample["image_grids"]
        assert (from_cache["image_grids"] is None) if grids is None else torch.equal(from_cache["image_grids"], grids)
    pad = anyres_model.llm.tokenizer.pad_token_id
    assert collate(stored, pad)["image_features"].shape[0] == collate(samples, pad)["pixel_values"].shape[0]
    torch.testing.assert_close(
        anyres_model.batch_loss(collate(stored, pad)), anyres_model.batch_loss(collate(samples, pad)), atol=1e-5, rtol=0
    )
