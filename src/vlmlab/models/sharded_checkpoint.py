"""Reading a sharded checkpoint folder (torch.distributed.checkpoint, as Lightning's FSDP and FSDP2 write it)
without running anything it holds.

torch reads such a folder's `.metadata` with `pickle.load` and each non-tensor item with
`torch.load(weights_only=False)` (torch 2.14, `FileSystemReader.read_metadata`, `DefaultLoadPlanner.load_bytes`):
a folder someone else wrote could run code. Here `.metadata` is unpickled admitting only the checkpoint
metadata's own types, its file names must lie inside the folder, and non-tensor items are read with
`weights_only=True` (plain data). `check_sharded_checkpoint` does that for a folder Lightning will then load
(resume); `read_sharded_checkpoint` reads it for vlmlab (evaluation, `init_from=`).
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata

from vlmlab.dependency_corners import dcp_load_in_one_process, dcp_planner_that_builds_the_state_dict
from vlmlab.errors import UsageError

METADATA_FILE = ".metadata"
# What torch's own `.metadata` refers to (found by unpickling the checkpoints Lightning writes), nothing else
METADATA_MODULES = ("torch.distributed.checkpoint.metadata",)
METADATA_NAMES = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("collections", "OrderedDict"),
}


class UnsafeCheckpointError(UsageError):
    """A checkpoint folder whose files hold something other than checkpoint data."""


class MetadataUnpickler(pickle.Unpickler):
    """Unpickles torch's checkpoint metadata and refuses any other class or function before it is used."""

    def __init__(self, file: Any, source: Path) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        is_dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if module in METADATA_MODULES or (module, name) in METADATA_NAMES or is_dtype:
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"{self.source} refers to {module}.{name}, which is not part of a checkpoint's metadata: vlmlab does not "
            "load it (a checkpoint folder from someone else could run code this way)"
        )


class SafeReader(FileSystemReader):
    """`FileSystemReader` whose metadata is unpickled by `MetadataUnpickler` and whose data files must be plain
    file names inside the folder."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = Path(self._get_metadata_path(kwargs.get("rank")))
        with open(path, "rb") as file:
            try:
                metadata = MetadataUnpickler(file, path).load()
            except UnsafeCheckpointError:
                raise
            except Exception as err:  # a truncated or garbled file
                raise UnsafeCheckpointError(f"{path} is not a readable checkpoint metadata file ({err})") from err
        if not isinstance(metadata, Metadata):
            raise UnsafeCheckpointError(f"{path} holds a {type(metadata).__name__}, not a checkpoint's metadata")
        folder = path.parent.resolve()
        for info in (metadata.storage_data or {}).values():
            name = str(getattr(info, "relative_path", ""))
            if Path(name).name != name or not (folder / name).resolve().is_relative_to(folder):
                raise UnsafeCheckpointError(f"{path} points at {name!r}, outside the checkpoint folder {folder}")
        if getattr(metadata, "storage_meta", None) is None:
            from torch.distributed.checkpoint.metadata import StorageMeta

            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class PlainDataPlanner(dcp_planner_that_builds_the_state_dict()):  # type: ignore[misc]
    """Rebuilds the saved state dict (the keys asked for); a non-tensor item is loaded only once it has loaded as
    plain data (`weights_only=True`)."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        try:
            torch.load(value, weights_only=True)
        except Exception as err:
            raise UnsafeCheckpointError(
                f"the checkpoint's item {read_item.dest_index.fqn} is not plain data ({what_it_needs(err)}): "
                "vlmlab does not load it"
            ) from err
        value.seek(0)
        super().load_bytes(read_item, value)


LIGHTNING_META = "meta.pt"  # the rest of a Lightning checkpoint (loops, callbacks, ...), written with torch.save


def what_it_needs(err: Exception) -> str:
    """The class or function a `weights_only` load refused, from torch's message."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
    if found:
        return f"it calls {found.group(1)}"
    found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(err))
    return found.group(1) if found else str(err).splitlines()[0][:200]


def _load(folder: Path, keys: set[str]) -> dict[str, Any]:
    state: dict[str, Any] = {}
    try:
        dcp_load_in_one_process(state, SafeReader(folder), PlainDataPlanner(keys=keys))
    except CheckpointException as err:  # torch wraps what the reader raised, per rank
        for exc, _trace in err.failures.values():
            if isinstance(exc, UnsafeCheckpointError):
                raise exc from None
        raise
    return state


def read_sharded_checkpoint(folder: str | Path, top: str) -> dict[str, Any]:
    """The items under the top-level key `top` of a sharded checkpoint folder (`state_dict`: the model's
    weights, as Lightning saves them), loaded in this one process."""
    folder = Path(folder)
    metadata = SafeReader(folder).read_metadata()
    return _load(folder, {k for k in metadata.state_dict_metadata if k.split(".")[0] == top}).get(top, {})


def check_sharded_checkpoint(folder: str | Path) -> None:
    """Refuse a sharded checkpoint folder that holds anything but checkpoint data (its metadata, its non-tensor
    items and Lightning's `meta.pt` are read as plain data; tensors are data whatever they hold), before
    torch's and Lightning's own readers open it."""
    folder = Path(folder)
    metadata = SafeReader(folder).read_metadata()
    byte_items = {k for k, v in metadata.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata)}
    if byte_items:
        _load(folder, byte_items)
    if (folder / LIGHTNING_META).is_file():
        try:
            torch.load(folder / LIGHTNING_META, weights_only=True, map_location="cpu")
        except Exception as err:
            raise UnsafeCheckpointError(
                f"{folder / LIGHTNING_META} is not plain data ({what_it_needs(err)}): vlmlab does not load it"
            ) from err
