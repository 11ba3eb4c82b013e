"""The private corners of the dependencies that vlmlab uses (`vlmlab.dependency_corners`), each held to the
behaviour vlmlab relies on: an upgrade that moves or changes one fails here, by name."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import mlflow
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

from vlmlab.dependency_corners import (
    dcp_load_in_one_process,
    dcp_planner_that_builds_the_state_dict,
    hf_table_fingerprint,
    mlflow_tracking_uri,
    read_whole_chunks,
    storage_provider,
)

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vlmlab"


def test_nothing_else_imports_a_private_name_of_another_package() -> None:
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "dependency_corners.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.module.startswith(("vlmlab", "__")):
                private = [a.name for a in node.names if a.name.startswith("_")]
                parts = [p for p in node.module.split(".") if p.startswith("_")]
                if private or parts:
                    found.append(f"{path.relative_to(PACKAGE)}: from {node.module} import {private or '...'}")
    assert not found, found


def test_litdata_storage_provider_has_what_the_shard_files_use() -> None:
    provider = storage_provider("s3://bucket/shards")  # made without a connection
    for method in ("download_file", "upload_file", "exists", "delete_file_or_directory"):
        assert callable(getattr(provider, method)), method


def test_a_streaming_dataset_reads_whole_chunks_once_told(tmp_path: Path) -> None:
    from litdata import StreamingDataset, optimize

    optimize(
        fn=lambda i: {"i": i},
        inputs=list(range(8)),
        output_dir=str(tmp_path / "out"),
        chunk_size=4,
        num_workers=1,
        verbose=False,
        start_method="fork",
    )
    dataset = StreamingDataset(str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    assert dataset.on_demand_bytes  # litdata's default: a ranged read per item
    read_whole_chunks(dataset)
    assert dataset[5] == {"i": 5}
    assert dataset.on_demand_bytes is False  # what the cache was made with (the public getter)


def test_hf_fingerprint_follows_the_content(tmp_path: Path) -> None:
    from datasets import Dataset, load_from_disk

    table = Dataset.from_dict({"question": ["a", "b"], "answer": ["1", "2"]})
    table.save_to_disk(tmp_path / "one")
    table.map(lambda row: {"answer": row["answer"] + "!"}).save_to_disk(tmp_path / "other")
    one, again, other = (load_from_disk(tmp_path / name) for name in ("one", "one", "other"))
    assert isinstance(hf_table_fingerprint(one), str) and hf_table_fingerprint(one)
    assert hf_table_fingerprint(one) == hf_table_fingerprint(again)  # the same folder: the same input
    assert hf_table_fingerprint(one) != hf_table_fingerprint(other)  # other content


def test_mlflow_tracking_uri_applies_for_a_while_and_is_restored(tmp_path: Path) -> None:
    before, environment = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with mlflow_tracking_uri(store):
        assert mlflow.get_tracking_uri() == store
    assert mlflow.get_tracking_uri() == before and os.environ.get("MLFLOW_TRACKING_URI") == environment


def test_a_sharded_checkpoint_is_read_into_one_process_with_its_own_keys(tmp_path: Path) -> None:
    saved = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "step": torch.tensor(7)}
    dcp.save(saved, checkpoint_id=str(tmp_path), no_dist=True)
    planner_class = dcp_planner_that_builds_the_state_dict()
    assert issubclass(planner_class, DefaultLoadPlanner)
    state: dict = {}
    dcp_load_in_one_process(state, FileSystemReader(str(tmp_path)), planner_class())
    assert torch.equal(state["model"]["w"], saved["model"]["w"]) and int(state["step"]) == 7
