"""`RecordStore`: records round-trip, LLaVA's JSON is read one record at a time with the same errors, length
estimates match, and forked loader workers reading every record keep sharing its memory (a list of dicts
is copied into each worker that reads it)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import psutil
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from vlmlab.data.formats import read_split
from vlmlab.data.lengths import SampleLengths, estimate_length
from vlmlab.data.record_store import RecordStore, iter_json_list
from vlmlab.errors import UsageError


def make_records(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for i in range(count):
        turns = [{"from": "human", "value": "<image>\nWhat is written? " * rng.randint(1, 3)}]
        turns.append(
            {"from": "gpt", "value": "Grüße — “quoted” 漢字 " + " ".join(str(rng.random()) for _ in range(20))}
        )
        record = {"id": i, "conversations": turns, "answers": ["a", "b"]}
        if i % 7:
            record["image"] = [f"/data/images/{i:06d}.jpg"] * (1 + i % 2)
        records.append(record)
    records.append("not a record")  # a reader passes malformed entries on; the dataset reports them
    return records


def test_records_round_trip_and_their_length_estimates() -> None:
    records = make_records(300)
    store = RecordStore.from_records(records)
    assert len(store) == len(records) and list(store) == records
    assert store[-1] == "not a record" and store[5] == records[5]
    with pytest.raises(IndexError):
        store[len(records)]
    store[3]["id"] = "changed"  # a read is a new dict: the store does not change
    assert store[3] == records[3]
    expected = SampleLengths.of(estimate_length(r, 576) for r in records[:-1])
    assert store.estimated_lengths(576).select(range(len(records) - 1)) == expected


def test_llava_json_is_read_one_record_at_a_time(tmp_path: Path) -> None:
    records = make_records(50)[:-1]
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(records, indent=1))
    assert list(iter_json_list(path, "LLaVA-format")) == records
    (tmp_path / "empty.json").write_text(" [ ] ")
    assert list(iter_json_list(tmp_path / "empty.json", "LLaVA-format")) == []
    store = read_split("s", {"task": "t", "train": str(path)}, "train")
    assert isinstance(store, RecordStore) and store[2]["image"] == ["/data/images/000002.jpg"]
    (tmp_path / "object.json").write_text('{"id": 1}')
    with pytest.raises(ValueError, match="must hold a JSON list"):
        list(iter_json_list(tmp_path / "object.json", "LLaVA-format"))
    (tmp_path / "gap.json").write_text('[{"id": 1} {"id": 2}]')
    with pytest.raises(UsageError, match="gap.json is not valid JSON .expected ',' or ']'"):
        list(iter_json_list(tmp_path / "gap.json", "LLaVA-format"))


class Reader(Dataset):
    """Each worker reads every record once, then reports how much private memory it gained meanwhile."""

    def __init__(self, records: list | RecordStore) -> None:
        self.records = records

    def __len__(self) -> int:
        return 2  # one item per worker

    def __getitem__(self, index: int) -> int:
        process = psutil.Process()
        before = process.memory_full_info().uss
        total = 0
        for i in range(len(self.records)):
            total += sum(len(turn["value"]) for turn in self.records[i]["conversations"])
        return process.memory_full_info().uss - before + 0 * total


def private_growth(records: list | RecordStore) -> int:
    """The larger gain in private memory (USS) of two forked workers that each read every record."""
    loader = DataLoader(Reader(records), batch_size=1, num_workers=2, multiprocessing_context="fork")
    return max(int(gain) for gain in torch.cat(list(loader)))


def test_forked_workers_share_the_store_but_copy_a_list_of_dicts() -> None:
    records = make_records(30_000)[:-1]
    store = RecordStore.from_records(records)
    assert store.nbytes > 10 * 2**20
    copied, shared = private_growth(records), private_growth(store)
    assert copied > 0.5 * store.nbytes, copied  # each worker ends up with its own copy of the dicts' pages
    assert shared < 0.1 * store.nbytes, shared
