"""LLaVA-NeXT interop: a transformers `LlavaNextForConditionalGeneration` imported into vlmlab gives its
logits, and a vlmlab AnyRes model exported with `format=hf_llava_next` gives vlmlab's logits and greedy
generations in transformers, on a batch of a wide image, a tall image (different tile grids) and a
text-only row; the exported processor's prompts, token counts and pixel values are vlmlab's."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import (
    AutoProcessor,
    CLIPVisionConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
)

from tests.cli_in_process import BIN, InProcess
from tests.tiny_models import noise_pictures, tiny_llama_config, tiny_vlm
from vlmlab.cli.export import main as export_main
from vlmlab.data.conversation_dataset import collate
from vlmlab.inference.answer import Assistant
from vlmlab.inference.loading import load_model
from vlmlab.interop.hf_llava import check_fits_llava
from vlmlab.models.image_layout import tile_count
from vlmlab.models.llms.chat_templates import CHAT_TEMPLATES
from vlmlab.testing import run_command

PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]  # LLaVA-NeXT's grids, with 32 px tiles
SIZES = {"wide": (40, 100), "tall": (110, 36)}  # (height, width): grids 1x3 and 3x1


def tiny_llava_next(tokenizer, folder: Path) -> LlavaNextForConditionalGeneration:
    """A random tiny LLaVA-NeXT saved as a Hugging Face checkpoint with its (bicubic, as published) processor."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.chat_template = None
    vision = CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    )
    torch.manual_seed(0)
    model = LlavaNextForConditionalGeneration(
        LlavaNextConfig(
            vision_config=vision,
            text_config=tiny_llama_config(tokenizer),
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            image_grid_pinpoints=PINPOINTS,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )
    ).eval()
    with torch.no_grad():  # random, not LLaVA-NeXT's initial zero-mean small values: the token must matter
        model.model.image_newline.normal_()
    model.save_pretrained(folder)
    images = LlavaNextImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=PINPOINTS
    )
    LlavaNextProcessor(
        images,
        tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATES["vicuna_v1"],
        num_additional_image_tokens=1,
    ).save_pretrained(folder)
    return model


def pictures(folder: Path) -> dict[str, Path]:
    return noise_pictures(folder, SIZES)


def processor_batch(folder: Path, paths: dict[str, Path]) -> dict[str, torch.Tensor]:
    """The processor's batch: a prompt about the wide image, one about the tall one, a text-only one."""
    processor = AutoProcessor.from_pretrained(folder)
    prompts = ["<image>\nRead it.", "<image>\nWhat?", "Say something long enough."]
    texts = [
        processor.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]
    processor.tokenizer.padding_side = "left"
    images = [Image.open(paths["wide"]), Image.open(paths["tall"])]
    return processor(images=images, text=texts, padding=True, return_tensors="pt", add_special_tokens=False)


def vlmlab_logits(model, batch: dict[str, torch.Tensor], tiles: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"], tiles, image_grids=grids).logits


def tiles_and_grids(batch: dict[str, torch.Tensor], loaded) -> tuple[torch.Tensor, torch.Tensor]:
    """The processor's images as vlmlab's tiles (its padding tiles dropped) and grid rows."""
    assistant = Assistant(loaded.model, loaded.image_resize, anyres=loaded.anyres)
    grids = torch.tensor([assistant.images.grid(tuple(size)) for size in batch["image_sizes"].tolist()])
    counts = [tile_count(g) for g in grids.tolist()]
    tiles = torch.cat([pixels[:n] for pixels, n in zip(batch["pixel_values"], counts)])
    return tiles, grids


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("llava_next")
    tiny_llava_next(tokenizer, folder / "hf")
    result = run_command(
        [str(BIN / "vlmlab-import"), f"source={folder / 'hf'}", "output=ours", "name=tiny_next"], cwd=folder
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "model.image_newline=true 'data.anyres.grid_pinpoints=[[1,2],[2,1],[2,2],[3,1],[1,3]]'" in result.stdout
    return folder / "hf", folder / "ours"


def test_imported_llava_next_gives_its_logits(imported: tuple[Path, Path], tmp_path: Path) -> None:
    hf_folder, ours_folder = imported
    theirs = LlavaNextForConditionalGeneration.from_pretrained(hf_folder).eval()
    ours = load_model(ours_folder)
    assert ours.image_resize == "anyres" and ours.anyres["grid_pinpoints"] == [[1, 2], [2, 1], [2, 2], [3, 1], [1, 3]]
    batch = processor_batch(hf_folder, pictures(tmp_path))
    tiles, grids = tiles_and_grids(batch, ours)
    assert grids[:, :2].tolist() == [[1, 3], [3, 1]]
    with torch.no_grad():
        expected = theirs(**batch).logits
    assert (vlmlab_logits(ours.model, batch, tiles, grids) - expected).abs().max() <= 1e-4
    # the newline token is LLaVA-NeXT's: without it the logits differ
    ours.model.connector.image_newline.data.zero_()
    assert (vlmlab_logits(ours.model, batch, tiles, grids) - expected).abs().max() > 1e-3


def test_exported_llava_next_gives_vlmlabs_logits_generations_and_prompts(
    imported: tuple[Path, Path], tmp_path: Path, in_process: InProcess
) -> None:
    _, ours_folder = imported
    export = [str(BIN / "vlmlab-export"), f"checkpoint={ours_folder}", "output=next", "format=hf_llava_next"]
    result = in_process(export_main, export, tmp_path)  # its process: tests/test_export.py
    assert result.returncode == 0, result.stderr[-3000:]
    exported = LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "next").eval()
    ours = load_model(ours_folder)
    paths = pictures(tmp_path)
    batch = processor_batch(tmp_path / "next", paths)

    # vlmlab's own prompts: the same tokens (each image expanded to the same count), the same tiles
    assistant = Assistant(ours.model, ours.image_resize, anyres=ours.anyres)
    questions = {"wide": "Read it.", "tall": "What?"}
    samples = [
        assistant.encode([assistant.user_message(q, 1)], [assistant.load_image(paths[n])]) for n, q in questions.items()
    ]
    samples.append(assistant.encode([assistant.user_message("Say something long enough.", 0)], []))
    ours_batch = collate(samples, ours.model.llm.tokenizer.pad_token_id, padding_side="left")
    assert ours_batch["input_ids"].tolist() == batch["input_ids"].tolist()
    tiles, grids = tiles_and_grids(batch, ours)
    assert ours_batch["image_grids"].tolist() == grids.tolist()
    assert (ours_batch["pixel_values"] - tiles).abs().max() <= 1e-5

    with torch.no_grad():
        expected = exported(**batch).logits
    assert (vlmlab_logits(ours.model, batch, tiles, grids) - expected).abs().max() <= 1e-4
    prompt_length = batch["input_ids"].shape[1]
    greedy = exported.generate(**batch, max_new_tokens=6, do_sample=False)[:, prompt_length:]
    ours_greedy = ours.model.generate(
        batch["input_ids"], batch["attention_mask"], tiles, max_new_tokens=6, image_grids=grids
    )
    assert ours_greedy.tolist() == greedy.tolist()


def test_a_model_without_the_newline_token_does_not_export_as_llava_next(tokenizer) -> None:
    with pytest.raises(ValueError, match="LLaVA-NeXT has a learned image_newline token, this model does not"):
        check_fits_llava(tiny_vlm(tokenizer), next_=True)
