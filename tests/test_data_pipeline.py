"""Records on disk -> batches: images in order, clear errors for bad records."""

from __future__ import annotations

import copy
import gc
import json
from functools import partial
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlmlab.data.chat_format import ChatFormatter, SampleError
from vlmlab.data.conversation_dataset import ConversationDataset, collate
from vlmlab.data.datamodule import VLMDataModule, loading_options
from vlmlab.data.formats import read_llava
from vlmlab.data.image_processing import ImageProcessor
from vlmlab.models.encoders.base import ImagePreprocessing
from vlmlab.models.llms.chat_templates import CHAT_TEMPLATES

PREP = ImagePreprocessing(height=16, width=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@pytest.fixture
def formatter(tokenizer) -> ChatFormatter:
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.chat_template = CHAT_TEMPLATES["simple"]
    return ChatFormatter(tokenizer, "<image>", num_image_tokens=3, max_length=256)


def write_records(tmp_path: Path, records: list[dict]) -> list[dict]:
    """The records as a LLaVA JSON file beside two images (and a corrupt one), read back by the reader."""
    for name, colour in [("a.png", "red"), ("b.png", "blue")]:
        Image.new("RGB", (20, 10), colour).save(tmp_path / name)
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    path = tmp_path / "records.json"
    path.write_text(json.dumps(records))
    return read_llava({"file": str(path), "images": str(tmp_path)}, "train", None)


RECORDS = [
    {
        "id": "two",
        "image": ["a.png", "b.png"],
        "conversations": [{"from": "human", "value": "<image> and <image>: same?"}, {"from": "gpt", "value": "no"}],
    },
    {"id": "text", "conversations": [{"from": "human", "value": "Say hi"}, {"from": "gpt", "value": "hi"}]},
    {
        "id": "one",
        "image": "b.png",
        "conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "blue"}],
    },
]


def test_batch_holds_images_in_placeholder_order(tmp_path: Path, formatter: ChatFormatter) -> None:
    dataset = ConversationDataset(write_records(tmp_path, RECORDS), formatter, ImageProcessor(PREP), task="t")
    batch = collate([dataset[i] for i in range(3)], pad_token_id=formatter.tokenizer.pad_token_id)
    assert batch["pixel_values"].shape == (3, 3, 16, 16)
    red, blue = batch["pixel_values"][0, :, 8, 8], batch["pixel_values"][1, :, 8, 8]
    assert red[0] > red[2] and blue[2] > blue[0]  # a.png (red) first, then b.png (blue)
    image_tokens = (batch["input_ids"] == formatter.image_token_id).sum(dim=1)
    assert image_tokens.tolist() == [6, 0, 3]
    assert batch["attention_mask"].sum(dim=1).tolist() == [len(dataset[i]["input_ids"]) for i in range(3)]


def test_letterbox_pads_with_the_mean_colour() -> None:
    image = Image.new("RGB", (20, 10), "red")
    processed = ImageProcessor(PREP, mode="letterbox")(image)
    assert processed.pixels.shape == (1, 3, 16, 16) and processed.grid == (0, 0, 10, 20)
    pixels = processed.pixels[0]
    assert torch.allclose(pixels[:, 0, 8], torch.zeros(3), atol=0.02)  # top padding = mean = 0 after normalising
    assert pixels[0, 8, 8] > 0.9  # red inside
    assert ImageProcessor(PREP, mode="resize_crop")(image).pixels.shape == (1, 3, 16, 16)


@pytest.mark.parametrize(
    ("record", "reason", "message"),
    [
        (
            {
                "id": "x",
                "image": "a.png",
                "conversations": [{"from": "human", "value": "no placeholder"}, {"from": "gpt", "value": "y"}],
            },
            "image_count",
            "hold 0 <image> placeholders but the record has 1 images",
        ),
        (
            {
                "id": "x",
                "image": "missing.png",
                "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "y"}],
            },
            "missing_image",
            "missing.png does not exist; check the split's image folder",
        ),
        (
            {
                "id": "x",
                "image": "corrupt.png",
                "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "y"}],
            },
            "bad_image",
            "corrupt.png cannot be read",
        ),
        ({"id": "x", "conversations": "oops"}, "malformed", "no 'conversations' list"),
        ({"id": "x", "conversations": ["hi", "there"]}, "malformed", "turn 0 must be an object"),
    ],
)
def test_bad_records_name_source_and_record(
    tmp_path: Path, formatter: ChatFormatter, record: dict, reason: str, message: str
) -> None:
    dataset = ConversationDataset(
        write_records(tmp_path, [record]), formatter, ImageProcessor(PREP), task="t", source="mine"
    )
    with pytest.raises(SampleError, match=message) as err:
        dataset[0]
    assert err.value.reason == reason
    assert "source 'mine', record 'x'" in str(err.value)


def test_missing_file_and_wrong_json_shape(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_llava({"file": str(tmp_path / "nope.json")}, "train", None)
    (tmp_path / "dict.json").write_text("{}")
    with pytest.raises(ValueError, match="must hold a JSON list"):
        read_llava({"file": str(tmp_path / "dict.json")}, "train", None)
    (tmp_path / "cut.json").write_text('[{"id": 1,')
    with pytest.raises(ValueError, match="cut.json is not valid JSON"):
        read_llava({"file": str(tmp_path / "cut.json")}, "train", None)


def test_prompts_keep_references_or_fall_back_to_the_last_answer(tmp_path: Path, formatter: ChatFormatter) -> None:
    records = [dict(RECORDS[2], answers=["blue", "navy"]), RECORDS[2]]
    dataset = ConversationDataset(
        write_records(tmp_path, records), formatter, ImageProcessor(PREP), task="t", prompt_only=True
    )
    assert dataset[0]["answers"] == ["blue", "navy"]
    assert dataset[1]["answers"] == ["blue"]
    assert "labels" not in dataset[1]


def test_skip_policy_drops_counts_and_keeps_the_rest(tmp_path: Path, formatter: ChatFormatter) -> None:
    bad = {"id": "bad", "image": "corrupt.png", "conversations": RECORDS[2]["conversations"]}
    dataset = ConversationDataset(
        write_records(tmp_path, [RECORDS[2], bad, RECORDS[1]]),
        formatter,
        ImageProcessor(PREP),
        task="t",
        on_bad_record="skip",
    )
    assert dataset[1]["skipped"] == "bad_image" and dataset[1]["id"] == "bad"
    assert "corrupt.png cannot be read" in dataset[1]["message"]
    batch = collate([dataset[i] for i in range(3)], pad_token_id=formatter.tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 2 and batch["ids"] == ["one", "text"]
    assert batch["skipped"] == {"bad_image": 1}
    assert collate([dataset[1], dataset[1]], pad_token_id=0) == {"skipped": {"bad_image": 2}}


def collate_and_look(samples: list[dict], pad_token_id: int) -> dict:
    """`collate`, with what the loader worker running it sees: whether the images were stacked in shared memory,
    and how many of the garbage collector's objects are frozen."""
    batch = collate(samples, pad_token_id=pad_token_id)
    return {**batch, "in_shared_memory": batch["pixel_values"].is_shared(), "frozen": gc.get_freeze_count()}


def test_loader_workers_share_the_parents_memory(tmp_path: Path, formatter: ChatFormatter) -> None:
    """Issue 30, item 5: a worker of the data module's loaders stacks a batch's images straight into shared memory
    (no batch-sized block of its own, no copy on the way to the training process) and holds the parent's objects
    frozen for its garbage collector; the images are those `collate` stacks in-process, and in the parent the
    objects go back to the collector."""
    write_records(tmp_path, RECORDS)
    train = {"file": str(tmp_path / "records.json"), "images": str(tmp_path)}
    datamodule = VLMDataModule(
        sources={"s": {"task": "t", "format": "llava", "train": train}},
        mixture={"s": 1.0},
        formatter=formatter,
        image_processor=ImageProcessor(PREP),
        micro_batch_size=3,
        seed=0,
        **loading_options(num_workers=1, group_by_length=False),
    )
    pad = formatter.tokenizer.pad_token_id
    loader = datamodule.train_dataloader()
    loader.collate_fn = partial(collate_and_look, pad_token_id=pad)
    batches = iter(loader)
    assert gc.get_freeze_count() == 0
    batch = next(batches)
    del batches
    assert batch["in_shared_memory"] and batch["frozen"] > 0
    in_process = collate([loader.dataset[i] for i in batch["indices"]], pad_token_id=pad)
    assert not in_process["pixel_values"].is_shared()
    assert in_process["pixel_values"].shape == (3, 3, 16, 16)
    assert torch.equal(batch["pixel_values"], in_process["pixel_values"])
