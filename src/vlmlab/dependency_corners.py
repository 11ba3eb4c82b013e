"""The private corners of vlmlab's dependencies that it uses, fenced in one module: each has no public
counterpart in the pinned version (constraints.txt) that does the same, and each is held to its behaviour by
tests/test_dependency_corners.py, so that an upgrade that moves or changes one fails there, by name, instead of
somewhere in a run. Nothing else in vlmlab imports a name that starts with `_` from another package.

The dependencies are imported inside the functions: importing this module costs nothing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def storage_provider(url: str) -> Any:
    """LitData's client for the object store a URL names (s3://, gs://, ...), reading the usual AWS_* / GOOGLE_*
    settings, AWS_ENDPOINT_URL included: download_file, upload_file, exists, delete_file_or_directory.
    (litdata 0.2.76: `litdata.streaming.fs_provider._get_fs_provider`; the public API writes and reads whole
    datasets only.)"""
    from litdata.streaming.fs_provider import _get_fs_provider

    return _get_fs_provider(url)


def read_whole_chunks(dataset: Any) -> None:
    """Make a LitData `StreamingDataset` download a remote chunk into its cache when an item of it is first read,
    rather than one ranged read per item. (litdata 0.2.76: the public `on_demand_bytes` setter asserts that the
    cache exists, and the cache is made on the first read, which would already be a ranged one; the attribute it
    sets, `_on_demand_bytes`, is what the cache is made with.)"""
    dataset._on_demand_bytes = False


def hf_table_fingerprint(table: Any) -> str:
    """The content fingerprint that HF `datasets` keeps for a `Dataset` (changed by every transform; read from the
    cache's state for a saved or loaded one). (datasets: `Dataset._fingerprint`, which has no public accessor.)"""
    return str(table._fingerprint)


@contextmanager
def mlflow_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent model logging and registration on the store `uri` for a while, the process's tracking URI
    restored afterwards. (mlflow: `mlflow.tracking._tracking_service.utils._use_tracking_uri`; the public
    `set_tracking_uri` has no way back to "not set".)"""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _use_tracking_uri(uri):
        yield


def dcp_planner_that_builds_the_state_dict() -> type:
    """torch.distributed.checkpoint's load planner that builds the state dict from the checkpoint's metadata
    (optionally only `keys=`) instead of filling one given, as torch's own `dcp_to_torch_save` reads a sharded
    folder into one process. (torch: `default_planner._EmptyStateDictLoadPlanner`.)"""
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner

    return _EmptyStateDictLoadPlanner


def dcp_load_in_one_process(state: dict[str, Any], storage_reader: Any, planner: Any) -> None:
    """Read a sharded checkpoint into `state` in this process alone, with the planner's state dict (the public
    `torch.distributed.checkpoint.load` loads into a copy of the given keys only, none for an empty dict).
    (torch: `state_dict_loader._load_state_dict`, as `dcp_to_torch_save` calls it.)"""
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    _load_state_dict(state, storage_reader=storage_reader, planner=planner, no_dist=True)
