"""Published dataset formats on disk -> the `data=` presets -> the DataModule: counts, prompts, labels,
kept references, the mixture's ratio, and every kind of bad record (skipped and counted, or raised)."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from tests.cli_in_process import BIN, InProcess
from tests.conftest import MODEL_OVERRIDES
from tests.published_formats import (
    VQA_ANSWERS,
    bad_llava_dataset,
    write_coco_captions,
    write_docvqa,
    write_image,
    write_json,
    write_llava_instruct,
    write_pope,
    write_vqav2,
)
from vlmlab.cli.evaluate import main as evaluate_main
from vlmlab.config import validate_config
from vlmlab.data.chat_format import IGNORE_INDEX, SampleError
from vlmlab.data.datamodule import VLMDataModule
from vlmlab.data.formats import read_split
from vlmlab.inference.loading import LoadedModel, save_model_folder
from vlmlab.models.builder import build_vlm
from vlmlab.models.vlm import VisionLanguageModel
from vlmlab.testing import compose_train

SHORT_VQA = "Answer the question using a single word or phrase."


def data_config(root: Path, data: str, *overrides: str) -> DictConfig:
    cfg = compose_train(
        [
            *MODEL_OVERRIDES,
            f"paths.root_dir={root}",
            f"data={data}",
            f"data.root={root}",
            "data.num_workers=0",
            *overrides,
        ]
    )
    validate_config(cfg)
    return cfg


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> VisionLanguageModel:
    return build_vlm(data_config(tmp_path_factory.mktemp("model"), "synthetic").model)


def datamodule(cfg: DictConfig, model: VisionLanguageModel, mixture: str = "instruct", batch: int = 2) -> VLMDataModule:
    return VLMDataModule.from_config(cfg.data, model, cfg.seed, dict(cfg.data.mixtures[mixture]), batch)


def decode(model: VisionLanguageModel, ids: torch.Tensor) -> str:
    return model.llm.tokenizer.decode(ids, skip_special_tokens=True)


def answer_text(model: VisionLanguageModel, sample: dict[str, Any]) -> str:
    return decode(model, sample["input_ids"][sample["labels"] != IGNORE_INDEX])


def test_coco_captions(tmp_path: Path, model: VisionLanguageModel) -> None:
    train_captions = write_coco_captions(tmp_path, "train2017", num_images=2)
    val_captions = write_coco_captions(tmp_path, "val2017", num_images=3)
    dm = datamodule(data_config(tmp_path, "coco_captions"), model)
    train = dm.dataset("coco", "train")
    assert len(train) == 10  # one sample per caption
    assert [answer_text(model, train[i]).strip() for i in range(5)] == train_captions[0]
    assert "Provide a one-sentence caption for the provided image." in decode(model, train[0]["input_ids"])
    assert train[0]["pixel_values"].shape == (1, 3, 96, 96)
    test = dm.dataset("coco", "test", prompt_only=True)
    assert len(test) == 3  # one sample per image, every reference caption kept
    assert [test[i]["answers"] for i in range(3)] == val_captions


def test_vqav2_keeps_the_ten_answers_and_reads_unannotated_questions_as_test(
    tmp_path: Path, model: VisionLanguageModel
) -> None:
    write_vqav2(tmp_path, "train2014", num_questions=3)
    write_vqav2(tmp_path, "val2014", num_questions=4)
    cfg = data_config(tmp_path, "vqav2")
    dm = datamodule(cfg, model)
    train = dm.dataset("vqav2", "train")
    assert len(train) == 3
    prompt = decode(model, train[1]["input_ids"][train[1]["labels"] == IGNORE_INDEX])
    assert "What colour is shape 1?" in prompt and SHORT_VQA in prompt
    assert answer_text(model, train[1]).strip() == "red"  # multiple_choice_answer
    test = dm.dataset("vqav2", "test", prompt_only=True)
    assert len(test) == 4 and test[0]["answers"] == VQA_ANSWERS
    assert "labels" not in test[0] and decode(model, test[0]["input_ids"]).endswith("ASSISTANT:")

    write_vqav2(tmp_path, "test2015", num_questions=2, annotated=False)
    unannotated = data_config(
        tmp_path,
        "vqav2",
        f"data.sources.vqav2.test.questions={tmp_path}/vqav2/v2_OpenEnded_mscoco_test2015_questions.json",
        "data.sources.vqav2.test.annotations=null",
        f"data.sources.vqav2.test.images={tmp_path}/coco/test2015",
    )
    batch = next(iter(datamodule(unannotated, model).prompt_dataloader("vqav2", "test")))
    assert batch["ids"] == [500, 501] and batch["answers"] == [[], []]


def test_docvqa(tmp_path: Path, model: VisionLanguageModel) -> None:
    write_docvqa(tmp_path, "train", num_questions=3)
    write_docvqa(tmp_path, "val", num_questions=2)
    dm = datamodule(data_config(tmp_path, "docvqa"), model)
    train = dm.dataset("docvqa", "train")
    assert len(train) == 3 and answer_text(model, train[2]).strip() == "$12.50"
    assert "What is the total on line 2?" in decode(model, train[2]["input_ids"])
    val = dm.dataset("docvqa", "val", prompt_only=True)
    assert [val[i]["answers"] for i in range(2)] == [["$12.50", "12.50"]] * 2
    assert [val[i]["id"] for i in range(2)] == [9000, 9001]


def test_llava_instruct_multi_turn_multi_image_and_text_only(tmp_path: Path, model: VisionLanguageModel) -> None:
    write_llava_instruct(tmp_path)
    write_json(tmp_path / "LLaVA-Pretrain" / "blip_laion_cc_sbu_558k.json", [])
    dm = datamodule(data_config(tmp_path, "llava"), model, batch=3)
    dataset = dm.dataset("instruct", "train")
    multi_turn, pair, text_only = (dataset[i] for i in range(3))
    answers = answer_text(model, multi_turn)
    assert "It is red." in answers and "No, it is a square." in answers and "Is it round?" not in answers
    assert pair["pixel_values"].shape[0] == 2 and text_only["pixel_values"] is None
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape[0] == 3 and sorted(batch["ids"]) == sorted(
        ["000000000009", "pair-1", "sharegpt-1"]
    )


def test_llava_pretrain_captions(tmp_path: Path, model: VisionLanguageModel) -> None:
    write_llava_instruct(tmp_path)
    write_image(tmp_path / "LLaVA-Pretrain" / "images" / "00453" / "004539375.jpg", "green")
    record = {
        "id": "004539375",
        "image": "00453/004539375.jpg",
        "conversations": [
            {"from": "human", "value": "Render a clear and concise summary of the photo.\n<image>"},
            {"from": "gpt", "value": "select luxury furniture 3 - inch gel memory foam mattress topper"},
        ],
    }
    write_json(tmp_path / "LLaVA-Pretrain" / "blip_laion_cc_sbu_558k.json", [record])
    cfg = data_config(tmp_path, "llava")
    sample = datamodule(cfg, model, mixture="align").dataset("pretrain", "train")[0]
    assert answer_text(model, sample).strip() == record["conversations"][1]["value"]
    assert sample["pixel_values"][0, 1].mean() > sample["pixel_values"][0, 0].mean()  # the green image


def png_bytes(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 24), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def hf_table(n: int) -> datasets.Dataset:
    features = datasets.Features(
        {
            "qid": datasets.Value("string"),
            "picture": datasets.Image(),
            "query": datasets.Value("string"),
            "labels": datasets.Sequence(datasets.Value("string")),
        }
    )
    rows = {
        "qid": [f"q{i}" for i in range(n)],
        "picture": [{"bytes": png_bytes("red") if i else b"broken", "path": None} for i in range(n)],
        "query": [f"Which colour, {i}?" for i in range(n)],
        "labels": [["red", "scarlet"] for _ in range(n)],
    }
    return datasets.Dataset.from_dict(rows, features=features)


@pytest.mark.parametrize("storage", ["save_to_disk", "parquet"])
def test_hf_datasets_mapped_by_columns(tmp_path: Path, model: VisionLanguageModel, storage: str) -> None:
    if storage == "save_to_disk":
        datasets.DatasetDict({"train": hf_table(4)}).save_to_disk(str(tmp_path / "table"))
        path = tmp_path / "table"
    else:
        path = tmp_path / "table.parquet"
        hf_table(4).to_parquet(str(path))
    cfg = data_config(
        tmp_path,
        "hf",
        f"data.sources.hf.train.path={path}",
        "data.sources.hf.train.columns.id=qid",
        "data.sources.hf.train.columns.image=picture",
        "data.sources.hf.train.columns.question=query",
        "data.sources.hf.train.columns.answers=labels",
    )
    dm = datamodule(cfg, model)
    dataset = dm.dataset("hf", "train")
    assert len(dataset) == 4
    assert (dataset[0]["skipped"], dataset[0]["id"]) == ("bad_image", "q0")  # the undecodable image, per record
    assert answer_text(model, dataset[1]).strip() == "red" and "Which colour, 1?" in decode(
        model, dataset[1]["input_ids"]
    )
    assert dataset[1]["pixel_values"].shape == (1, 3, 96, 96)
    assert dm.lengths("hf", "train").tokens[0] > model.num_image_tokens  # estimated without decoding images


def test_mixture_yields_sources_in_the_configured_ratio(tmp_path: Path, model: VisionLanguageModel) -> None:
    write_coco_captions(tmp_path, "train2017", num_images=8)  # 40 caption samples
    write_vqav2(tmp_path, "train2014", num_questions=40)
    write_docvqa(tmp_path, "train", num_questions=20)
    cfg = data_config(tmp_path, "mixture", "data.mixtures.instruct={vqav2: 1.0, docvqa: 2.0, coco: 0.5}")
    loader = datamodule(cfg, model, batch=4).train_dataloader()
    sources = Counter(task for batch in loader for task in batch["tasks"])
    expected = {"vqa": 40, "doc": 40, "caption": 20}
    assert sum(sources.values()) == 100
    for task, count in expected.items():
        assert abs(sources[task] - count) <= 4, sources  # the weights, up to one dropped batch


def test_bad_records_are_skipped_and_counted_by_reason(tmp_path: Path, model: VisionLanguageModel) -> None:
    expected = bad_llava_dataset(tmp_path)
    cfg = data_config(tmp_path, "llava", "data.max_length=96", "data.group_by_length=false")
    skipped: Counter[str] = Counter()
    ids = []
    for batch in datamodule(cfg, model, batch=1).train_dataloader():
        skipped.update(batch["skipped"])
        ids += batch.get("ids", [])
    assert ids == ["good", "long"]
    assert skipped == Counter(expected)


def test_raise_policy_names_file_record_and_fix(tmp_path: Path, model: VisionLanguageModel) -> None:
    bad_llava_dataset(tmp_path)
    dm = datamodule(data_config(tmp_path, "llava", "data.on_bad_record=raise"), model)
    dataset = dm.dataset("instruct", "train")
    with pytest.raises(SampleError, match=r"record 'gone': image .*images/nowhere.png does not exist; check the split"):
        dataset[1]
    with pytest.raises(SampleError, match=r"record 'two-images': .*1 <image> placeholders but the record has 2"):
        dataset[4]


def test_malformed_entries_of_published_formats(tmp_path: Path, model: VisionLanguageModel) -> None:
    write_vqav2(tmp_path, "train2014", num_questions=2)
    questions_file = tmp_path / "vqav2" / "v2_OpenEnded_mscoco_train2014_questions.json"
    questions = json.loads(questions_file.read_text())
    del questions["questions"][0]["image_id"]
    questions_file.write_text(json.dumps(questions))
    dm = datamodule(data_config(tmp_path, "vqav2"), model)
    skipped = dm.dataset("vqav2", "train")[0]
    assert (skipped["skipped"], skipped["id"]) == ("malformed", 500) and "question has no 'image_id'" in skipped[
        "message"
    ]
    write_json(questions_file, {"annotations": []})
    with pytest.raises(ValueError, match="has no top-level 'questions': it is not a VQAv2 questions file"):
        datamodule(data_config(tmp_path, "vqav2"), model).dataset("vqav2", "train")


def test_split_keys_are_checked_against_the_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"split 'train' has unknown key\(s\) \['question'\]"):
        data_config(tmp_path, "vqav2", "+data.sources.vqav2.train.question=x")
    with pytest.raises(ValueError, match="split 'train' must be a mapping with annotations, images, not a path"):
        data_config(tmp_path, "docvqa", "data.sources.docvqa.train=/x.json")


def test_pope_question_files_read_and_score_per_split(
    tmp_path: Path, model: VisionLanguageModel, in_process: InProcess
) -> None:
    """POPE's three published question files as three sources, answered by a (random tiny) model folder through
    `vlmlab-eval`: each split scored with POPE's five numbers and the blind baseline; a broken line is skipped."""
    model_config = OmegaConf.to_container(data_config(tmp_path, "synthetic").model, resolve=True)
    save_model_folder(LoadedModel(model, model_config, "resize", "test", tmp_path), tmp_path / "model")
    for sampling in ("random", "popular", "adversarial"):
        questions = write_pope(tmp_path, sampling)
    with (tmp_path / "pope" / "coco_pope_adversarial.json").open("a") as handle:
        handle.write('{"question_id": 5, "image": "x.jpg", "text": "Is there a cat?", "label": "maybe"}\n')
    cfg = compose_train([f"paths.root_dir={tmp_path}", "data=pope", f"data.root={tmp_path}"])
    records = read_split("pope_popular", OmegaConf.to_container(cfg.data.sources.pope_popular, resolve=True), "test")
    assert [r["answers"] for r in records] == [[q["label"]] for q in questions]
    assert records[0]["image"] == [str(tmp_path / "coco" / "val2014" / questions[0]["image"])]
    assert records[0]["conversations"][0]["value"].startswith("<image>\nIs there a snowboard in the image?")
    command = [str(BIN / "vlmlab-eval"), f"checkpoint={tmp_path / 'model'}", "data=pope"]
    command += [f"data.root={tmp_path}", "track=false", "max_new_tokens=3", "hydra.run.dir=scored"]
    scored = in_process(evaluate_main, command, tmp_path)
    assert scored.returncode == 0, scored.stderr[-3000:]
    metrics = json.loads((tmp_path / "scored" / "metrics.json").read_text())
    for source in ("pope_random", "pope_popular", "pope_adversarial"):
        for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
            assert f"test/{source}/pope_{key}" in metrics and f"test/{source}/blind_pope_{key}" in metrics
        assert metrics[f"test/{source}/pope_accuracy"] in (0.0, 0.25, 0.5, 0.75, 1.0)  # of 4 questions
    scores = (tmp_path / "scored" / "predictions" / "pope_adversarial_test_scores.jsonl").read_text().splitlines()
    assert len(scores) == 4  # the bad line skipped
    source = OmegaConf.to_container(cfg.data.sources.pope_adversarial, resolve=True)
    reason, message = read_split("pope_adversarial", source, "test")[4]["error"]
    assert reason == "malformed" and "line 5 of" in message and "has label 'maybe'" in message  # named
