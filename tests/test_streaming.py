"""Optimised shards (`vlmlab-data optimize`, `format: streaming`, `data.shards`) and their sampler.

Every published format is written to LitData chunks with its bad records left out and reported, and read
back into the very samples the files give; the chunk-by-chunk sampler gives each process its own chunks,
equal step counts and an exact resume; a mixture of shards and files trains."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch

from tests.published_formats import bad_llava_dataset, write_coco_captions, write_docvqa, write_json, write_vqav2
from tests.test_formats import data_config, hf_table
from vlmlab.data.datamodule import VLMDataModule
from vlmlab.data.lengths import SampleLengths
from vlmlab.data.optimize import optimize_split
from vlmlab.data.sampler import GroupedMixtureSampler, StreamingMixtureSampler, padding_waste
from vlmlab.data.shards import ShardRecords, read_meta
from vlmlab.models.builder import build_vlm
from vlmlab.models.vlm import VisionLanguageModel
from vlmlab.tracking.datasets import records_digest


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> VisionLanguageModel:
    return build_vlm(data_config(tmp_path_factory.mktemp("model"), "synthetic").model)


def write_published(root: Path, fmt: str) -> tuple[str, list[str]]:
    """Files of one format with bad records in them; the data preset's overrides, the expected problems."""
    if fmt == "llava":
        return "llava", ["data.max_length=96"], sorted(bad_llava_dataset(root))
    if fmt == "coco_captions":
        write_coco_captions(root, "train2017", num_images=3)
        (root / "coco" / "train2017" / f"{101:012d}.jpg").unlink()  # its 5 captions: missing_image
        return "coco_captions", [], ["missing_image"]
    if fmt == "vqav2":
        write_vqav2(root, "train2014", num_questions=5)
        questions_file = root / "vqav2" / "v2_OpenEnded_mscoco_train2014_questions.json"
        questions = json.loads(questions_file.read_text())
        del questions["questions"][1]["image_id"]
        write_json(questions_file, questions)
        return "vqav2", [], ["malformed"]
    if fmt == "docvqa":
        write_docvqa(root, "train", num_questions=4)
        annotations_file = root / "docvqa" / "train" / "train_v1.0.json"
        annotations = json.loads(annotations_file.read_text())
        del annotations["data"][2]["question"]
        write_json(annotations_file, annotations)
        return "docvqa", [], ["malformed"]
    datasets.DatasetDict({"train": hf_table(5)}).save_to_disk(str(root / "table"))  # row 0: undecodable image
    columns = {"id": "qid", "image": "picture", "question": "query", "answers": "labels"}
    return (
        "hf",
        [f"data.sources.hf.train.path={root / 'table'}"]
        + [f"data.sources.hf.train.columns.{k}={v}" for k, v in columns.items()],
        ["bad_image"],
    )


def source_of(fmt: str) -> str:
    return {"llava": "instruct", "coco_captions": "coco", "vqav2": "vqav2", "docvqa": "docvqa", "hf": "hf"}[fmt]


@pytest.mark.parametrize("fmt", ["llava", "coco_captions", "vqav2", "docvqa", "hf"])
def test_optimize_leaves_bad_records_out_and_shards_give_the_files_samples(
    tmp_path: Path, model: VisionLanguageModel, fmt: str, capfd: pytest.CaptureFixture
) -> None:
    preset, overrides, problems = write_published(tmp_path, fmt)
    source = source_of(fmt)
    cfg = data_config(tmp_path, preset, *overrides)
    files = VLMDataModule.from_config(cfg.data, model, cfg.seed)
    out = tmp_path / "shards"
    workers = 2 if fmt == "vqav2" else 1  # two writers: the items still come back in the split's order
    result = optimize_split(files, source, "train", str(out), {}, num_workers=workers, chunk_bytes="2KB")
    printed = capfd.readouterr()
    assert "lightning.ai" not in printed.out + printed.err  # the storage library's advert, in every worker
    assert sorted(result.report.problems) == problems and result.kept == len(result.report.kept) > 0
    meta = read_meta(str(out / source / "train"))
    assert meta["records"] == len(files.records(source, "train")) and meta["kept"] == result.kept
    assert {reason: len(ids) for reason, ids in meta["problems"].items()} == {
        reason: len(ids) for reason, ids in result.report.problems.items()
    }

    streamed_cfg = data_config(tmp_path, preset, *overrides, f"data.shards={out}")
    assert streamed_cfg.data.sources[source].format == "streaming"
    shards = VLMDataModule.from_config(streamed_cfg.data, model, cfg.seed)
    records = shards.records(source, "train")
    assert isinstance(records, ShardRecords) and len(records) == result.kept
    assert records_digest(records) != records_digest(files.records(source, "train"))
    assert records._dataset is None  # the MLflow dataset digest read no item: it is the fingerprint's
    assert len(records.chunk_sizes) >= workers  # each writer its own chunks
    expected, got = files.dataset(source, "train"), shards.dataset(source, "train")
    for position, index in enumerate(result.report.kept):
        a, b = expected[index], got[position]
        assert a["id"] == b["id"]
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
        assert (a["pixel_values"] is None) == (b["pixel_values"] is None)
        if a["pixel_values"] is not None:
            assert torch.equal(a["pixel_values"], b["pixel_values"])
    kept_lengths = files.lengths(source, "train").select(result.report.kept)
    assert shards.lengths(source, "train") == kept_lengths  # from lengths.npz, no item read


def test_optimize_again_is_a_no_op_until_the_input_changes(tmp_path: Path, model: VisionLanguageModel) -> None:
    write_vqav2(tmp_path, "train2014", num_questions=4)
    cfg = data_config(tmp_path, "vqav2")
    datamodule = VLMDataModule.from_config(cfg.data, model, cfg.seed)
    first = optimize_split(datamodule, "vqav2", "train", str(tmp_path / "out"), {"max_length": 2048})
    written = (tmp_path / "out" / "vqav2" / "train" / "vlmlab.json").stat().st_mtime_ns
    again = optimize_split(datamodule, "vqav2", "train", str(tmp_path / "out"), {"max_length": 2048})
    assert not first.up_to_date and again.up_to_date and again.kept == 4
    assert (tmp_path / "out" / "vqav2" / "train" / "vlmlab.json").stat().st_mtime_ns == written
    other_settings = optimize_split(datamodule, "vqav2", "train", str(tmp_path / "out"), {"max_length": 64})
    assert not other_settings.up_to_date
    image = next((tmp_path / "coco" / "train2014").glob("*.jpg"))
    image.write_bytes(image.read_bytes())  # the same bytes, a new modification time: written again
    assert not optimize_split(datamodule, "vqav2", "train", str(tmp_path / "out"), {"max_length": 64}).up_to_date


def test_a_folder_that_is_not_an_optimize_output_is_named_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"vlmlab.json does not exist: .* run `vlmlab-data optimize"):
        ShardRecords(str(tmp_path))


def plan(sampler: StreamingMixtureSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return [batch.tolist() for batch in sampler.micro_batches()]


def chunk_of(chunk_sizes: list[list[int]]) -> list[tuple[int, int]]:
    """(source, chunk) of every index of the mixture's ConcatDataset."""
    return [(s, c) for s, sizes in enumerate(chunk_sizes) for c, n in enumerate(sizes) for _ in range(n)]


def modality_lengths(signed: torch.Tensor) -> SampleLengths:
    """Lengths in LLaVA's convention (negative: text-only) as the sampler takes them."""
    return SampleLengths(signed.abs().tolist(), (signed > 0).tolist())


def test_streaming_sampler_shards_chunks_across_processes_with_equal_steps() -> None:
    generator = torch.Generator().manual_seed(0)
    chunk_sizes = [[40] * 10 + [17], [25] * 12]  # 417 and 300 records
    lengths = [modality_lengths(torch.randint(-60, 300, (sum(c),), generator=generator)) for c in chunk_sizes]
    where = chunk_of(chunk_sizes)
    samplers = [
        StreamingMixtureSampler(
            lengths,
            [1.0, 1.0],
            chunk_sizes,
            batch_size=24,
            micro_batch_size=4,
            num_replicas=3,
            rank=r,
            seed=5,
            shuffle_buffer=96,
        )
        for r in range(3)
    ]
    plans = [plan(s, epoch=1) for s in samplers]
    assert {len(p) for p in plans} == {samplers[0].micro_batches_per_epoch()} == {2 * (717 // 24)}
    seen = [[i for batch in p for i in batch] for p in plans]
    assert sum(len(s) for s in seen) == len(set().union(*seen)) == 717 // 24 * 24  # disjoint; remainder left out
    chunks = [{where[i] for i in s} for s in seen]
    shared = (chunks[0] & chunks[1]) | (chunks[1] & chunks[2]) | (chunks[0] & chunks[2])
    assert len(shared) <= 4  # each process reads its own chunks (those cut at a part's edge are shared)
    assert plan(samplers[0], epoch=1) == plans[0] and plan(samplers[0], epoch=2) != plans[0]


def test_streaming_sampler_resumes_exactly_and_groups_within_its_buffer() -> None:
    generator = torch.Generator().manual_seed(1)
    chunk_sizes = [[64] * 20]
    lengths = [modality_lengths(torch.randint(-80, 400, (1280,), generator=generator))]
    common = dict(lengths=lengths, weights=[1.5], batch_size=8, micro_batch_size=4, seed=3)
    sampler = StreamingMixtureSampler(**common, chunk_sizes=chunk_sizes, shuffle_buffer=256)
    sampler.set_epoch(1)
    whole = list(sampler)
    sampler.resume_at(1, 37)
    assert list(sampler) == whole[37 * 4 :]  # the same samples after micro-batch 37, none repeated or skipped

    table, has_image = torch.tensor(lengths[0].tokens), torch.tensor(lengths[0].has_image)
    mixed = [b for b in plan(sampler, 0) if not (has_image[b].all() or (~has_image[b]).all())]
    assert len(mixed) <= 1920 // 256 + 1  # one modality per micro-batch, but for one remainder per buffer
    ungrouped = StreamingMixtureSampler(**common, chunk_sizes=chunk_sizes, shuffle_buffer=256, group_by_length=False)
    grouped_globally = GroupedMixtureSampler(**common)
    waste = {
        "buffer": padding_waste([torch.tensor(b) for b in plan(sampler, 0)], table),
        "none": padding_waste([torch.tensor(b) for b in plan(ungrouped, 0)], table),
        "global": padding_waste(grouped_globally.micro_batches(), table),
    }
    assert waste["global"] < waste["buffer"] < waste["none"], waste


def test_a_mixture_of_shards_and_files_trains_chunk_by_chunk(tmp_path: Path, model: VisionLanguageModel) -> None:
    write_vqav2(tmp_path, "train2014", num_questions=6)
    write_docvqa(tmp_path, "train", num_questions=6)
    cfg = data_config(tmp_path, "mixture")
    files = VLMDataModule.from_config(cfg.data, model, cfg.seed)
    optimize_split(files, "vqav2", "train", str(tmp_path / "shards"), {}, chunk_bytes="1KB")
    mixed = data_config(
        tmp_path,
        "mixture",
        "data.sources.vqav2.format=streaming",
        f"data.sources.vqav2.train={tmp_path / 'shards' / 'vqav2' / 'train'}",
        "data.sources.vqav2.val=null",
        "data.sources.vqav2.test=null",
        "data.num_workers=1",
    )
    datamodule = VLMDataModule.from_config(mixed.data, model, cfg.seed, {"vqav2": 1.0, "docvqa": 1.0}, 4)
    sampler = datamodule.train_sampler()
    assert isinstance(sampler, StreamingMixtureSampler)
    assert [len(c) for c in sampler.chunk_sizes] == [
        len(ShardRecords(str(tmp_path / "shards/vqav2/train")).chunk_sizes),
        6,
    ]
    tasks = [task for batch in datamodule.train_dataloader() for task in batch["tasks"]]
    assert sorted(tasks) == ["doc"] * 6 + ["vqa"] * 6
