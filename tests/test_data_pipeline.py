"""Records on disk -> batches: images in order, clear errors for bad records, the mixture sampler."""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlmlab.data.chat_format import ChatFormatter, SampleError
from vlmlab.data.conversation_dataset import ConversationDataset, collate, load_records
from vlmlab.data.image_processing import ImageProcessor
from vlmlab.data.mixture import MixtureSampler
from vlmlab.models.encoders.base import ImagePreprocessing
from vlmlab.models.llms.chat_templates import CHAT_TEMPLATES

PREP = ImagePreprocessing(height=16, width=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@pytest.fixture
def formatter(tokenizer) -> ChatFormatter:
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.chat_template = CHAT_TEMPLATES["simple"]
    return ChatFormatter(tokenizer, "<image>", num_image_tokens=3, max_length=256)


def write_records(tmp_path: Path, records: list[dict]) -> Path:
    for name, colour in [("a.png", "red"), ("b.png", "blue")]:
        Image.new("RGB", (20, 10), colour).save(tmp_path / name)
    path = tmp_path / "records.json"
    path.write_text(json.dumps(records))
    return path


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
    path = write_records(tmp_path, RECORDS)
    dataset = ConversationDataset(load_records(path), tmp_path, formatter, ImageProcessor(PREP), task="t")
    batch = collate([dataset[i] for i in range(3)], pad_token_id=formatter.tokenizer.pad_token_id)
    assert batch["pixel_values"].shape == (3, 3, 16, 16)
    red, blue = batch["pixel_values"][0, :, 8, 8], batch["pixel_values"][1, :, 8, 8]
    assert red[0] > red[2] and blue[2] > blue[0]  # a.png (red) first, then b.png (blue)
    image_tokens = (batch["input_ids"] == formatter.image_token_id).sum(dim=1)
    assert image_tokens.tolist() == [6, 0, 3]
    assert batch["attention_mask"].sum(dim=1).tolist() == [len(dataset[i]["input_ids"]) for i in range(3)]


def test_letterbox_pads_with_the_mean_colour() -> None:
    image = Image.new("RGB", (20, 10), "red")
    pixels = ImageProcessor(PREP, mode="letterbox")(image)
    assert pixels.shape == (3, 16, 16)
    assert torch.allclose(pixels[:, 0, 8], torch.zeros(3), atol=0.02)  # top padding = mean = 0 after normalising
    assert pixels[0, 8, 8] > 0.9  # red inside
    assert ImageProcessor(PREP, mode="resize_crop")(image).shape == (3, 16, 16)


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
            "bad_image",
            "missing.png cannot be read",
        ),
        ({"id": "x", "conversations": "oops"}, "malformed", "no 'conversations' list"),
        ({"id": "x", "conversations": ["hi", "there"]}, "malformed", "turn 0 must be an object"),
    ],
)
def test_bad_records_name_source_and_record(
    tmp_path: Path, formatter: ChatFormatter, record: dict, reason: str, message: str
) -> None:
    path = write_records(tmp_path, [record])
    dataset = ConversationDataset(
        load_records(path), tmp_path, formatter, ImageProcessor(PREP), task="t", source="mine"
    )
    with pytest.raises(SampleError, match=message) as err:
        dataset[0]
    assert err.value.reason == reason
    assert "source 'mine', record 'x'" in str(err.value)


def test_missing_file_and_wrong_json_shape(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_records(tmp_path / "nope.json")
    (tmp_path / "dict.json").write_text("{}")
    with pytest.raises(ValueError, match="must hold a JSON list"):
        load_records(tmp_path / "dict.json")


def test_mixture_sampler_weights_and_determinism() -> None:
    sampler = MixtureSampler([10, 20], [2.5, 0.5], seed=1)
    indices = list(sampler)
    assert len(indices) == len(sampler) == 25 + 10
    per_source = Counter(i < 10 for i in indices)
    assert per_source[True] == 25 and per_source[False] == 10
    assert Counter(i for i in indices if i < 10).most_common()[-1][1] >= 2  # every record at least twice
    assert list(MixtureSampler([10, 20], [2.5, 0.5], seed=1)) == indices
    sampler.set_epoch(1)
    assert list(sampler) != indices


def test_prompts_keep_references_or_fall_back_to_the_last_answer(tmp_path: Path, formatter: ChatFormatter) -> None:
    records = [dict(RECORDS[2], answers=["blue", "navy"]), RECORDS[2]]
    path = write_records(tmp_path, records)
    dataset = ConversationDataset(
        load_records(path), tmp_path, formatter, ImageProcessor(PREP), task="t", prompt_only=True
    )
    assert dataset[0]["answers"] == ["blue", "navy"]
    assert dataset[1]["answers"] == ["blue"]
    assert "labels" not in dataset[1]


def test_skip_policy_drops_counts_and_keeps_the_rest(tmp_path: Path, formatter: ChatFormatter) -> None:
    bad = {"id": "bad", "image": "missing.png", "conversations": RECORDS[2]["conversations"]}
    path = write_records(tmp_path, [RECORDS[2], bad, RECORDS[1]])
    dataset = ConversationDataset(
        load_records(path), tmp_path, formatter, ImageProcessor(PREP), task="t", on_bad_record="skip"
    )
    assert dataset[1] == {"skipped": "bad_image"}
    batch = collate([dataset[i] for i in range(3)], pad_token_id=formatter.tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 2 and batch["ids"] == ["one", "text"]
    assert batch["skipped"] == {"bad_image": 1}
    assert collate([dataset[1], dataset[1]], pad_token_id=0) == {"skipped": {"bad_image": 2}}
