"""Checkpoints that a full disk, a kill or a crash cannot spoil, and the choice of the one to resume from.

Lightning writes a checkpoint through a temporary file in $TMPDIR and moves it into place, which is a copy when
the run folder is on another file system (the usual case on a cluster), so a full disk leaves a truncated
`last.ckpt` behind; its sharded (FSDP2) checkpoints are written into the existing folder. Here:

- a checkpoint file is written beside its destination (`.<name>.partial`), flushed to disk and renamed into
  place (`AtomicCheckpointIO`); a sharded one is written to `.<name>.partial/` and swapped in once every rank
  has written (`save_sharded_atomically`). A write that fails removes its partial file and leaves the previous
  checkpoints as they were; one that fails for space stops with one line naming the folder and the size needed;
- `resume_checkpoint` takes the newest checkpoint of a stage that loads (by its step), says which newer ones it
  skipped and why, and removes what a killed run left behind (partial writes, checkpoints newer than the one
  resumed from).
"""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from vlmlab.errors import UsageError
from vlmlab.models.sharded_checkpoint import LIGHTNING_META, UnsafeCheckpointError, check_sharded_checkpoint
from vlmlab.models.weights import is_sharded_checkpoint

log = logging.getLogger(__name__)

NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
PARTIAL = ".partial"


class CheckpointSpaceError(UsageError):
    """A checkpoint that did not fit where it is written (no space left, a file size or disk quota limit)."""


def partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{PARTIAL}")


def no_space(path: Path, size: int | None, err: OSError) -> CheckpointSpaceError:
    need = f"{size / 2**20:,.1f} MB" if size is not None else "the checkpoint's size"
    free = shutil.disk_usage(path.parent).free / 2**20
    return CheckpointSpaceError(
        f"the checkpoint {path.name} did not fit in {path.parent} ({err.strerror}; it needs {need}, "
        f"{free:,.1f} MB are free): make room there and resume the run; its earlier checkpoints are intact"
    )


def sync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (its directory entry flushed)."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` writing each file beside its destination, flushed and renamed into place."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        partial = partial_path(path)
        try:
            with open(partial, "wb") as file:
                file.write(buffer.getbuffer())
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, path)
            sync_folder(path.parent)
        except OSError as err:
            partial.unlink(missing_ok=True)
            if err.errno in NO_SPACE:
                raise no_space(path, buffer.getbuffer().nbytes, err) from err
            raise


def save_sharded_atomically(
    save: Callable[[Path], None], path: Path, is_main: bool, barrier: Callable[[str], None]
) -> None:
    """`save(folder)` on every rank into `.<name>.partial/`, then (rank 0) swap it in for `path`."""
    partial = partial_path(path)
    if is_main and partial.exists():
        shutil.rmtree(partial)
    barrier("sharded checkpoint: partial folder ready")
    try:
        save(partial)
    except Exception as err:  # torch's writer wraps the OSError of each rank
        cause = next((e for e in _causes(err) if isinstance(e, OSError) and e.errno in NO_SPACE), None)
        if cause is not None:
            if is_main:
                shutil.rmtree(partial, ignore_errors=True)
            raise no_space(path, None, cause) from err
        raise
    barrier("sharded checkpoint: written")
    if is_main:
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            os.replace(path, old)
        os.replace(partial, path)
        sync_folder(path.parent)
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
    barrier("sharded checkpoint: in place")


def _causes(err: BaseException) -> list[BaseException]:
    found, seen = [], set()
    stack: list[Any] = [err]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, BaseException):
            found.append(current)
            stack += [current.__cause__, current.__context__]
            for value in (getattr(current, "failures", None) or {}).values():  # torch's CheckpointException
                stack.append(value[0] if isinstance(value, tuple) else value)
    return found


def checkpoint_meta(path: Path) -> dict[str, Any]:
    """What a checkpoint file or sharded folder holds besides its tensors (step, callbacks' state); an exception
    if it does not load. Tensors are mapped, not read."""
    if is_sharded_checkpoint(path):
        check_sharded_checkpoint(path)  # its data as well: a file cut short fails here
        return torch.load(path / LIGHTNING_META, weights_only=True, map_location="cpu")
    return torch.load(path, weights_only=True, map_location="cpu", mmap=True)


def tracked_names(meta: dict[str, Any]) -> set[str]:
    """The checkpoint files that the ModelCheckpoint callbacks saved in `meta` keep track of (and will remove when
    they are superseded), by name: the run folder may have moved since."""
    names = set()
    for state in (meta.get("callbacks") or {}).values():
        if isinstance(state, dict) and "best_k_models" in state:
            names |= {Path(p).name for p in state["best_k_models"]}
            names |= {Path(state[k]).name for k in ("best_model_path", "last_model_path") if state.get(k)}
    return names


def resume_checkpoint(folder: Path, clean: bool = True) -> Path | None:
    """The newest checkpoint in a stage's `checkpoints/` folder that loads (by step; `last.ckpt` first among
    equals), or None. With `clean` (one process of a run), what a killed run left behind is removed, each with
    a warning: partial writes, checkpoints that do not load, and checkpoints the resumed callbacks do not track
    (which they would never remove); the other processes choose the same checkpoint without touching files."""

    def remove(path: Path, why: str) -> None:
        if clean:
            log.warning("removing %s: %s", path, why)
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    if not folder.is_dir():
        return None
    for leftover in [*folder.glob(f".*{PARTIAL}"), *folder.glob(".*.ckpt.old")]:
        remove(leftover, "a checkpoint write that did not finish")
    metas: dict[Path, dict[str, Any]] = {}
    for candidate in sorted(folder.glob("*.ckpt")):
        try:
            metas[candidate] = checkpoint_meta(candidate)
        except UnsafeCheckpointError:
            raise
        except Exception as err:  # cut short, empty, not a checkpoint
            remove(candidate, f"it does not load ({type(err).__name__}: {str(err).splitlines()[0][:160]})")
    if not metas:
        return None
    chosen = max(metas, key=lambda p: (int(metas[p].get("global_step", -1)), p.name.startswith("last")))
    kept = tracked_names(metas[chosen]) | {chosen.name}
    for path in metas:
        if path.name not in kept:
            remove(path, f"no callback of the checkpoint resumed from ({chosen.name}) tracks it")
    return chosen
