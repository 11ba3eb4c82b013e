"""One run per run folder: a run (or a resume) holds an exclusive lock on its folder for as long as it trains.

Two `vlmlab-train` commands given the same `hydra.run.dir` (or two schedulers' jobs started in the same second,
whose default folders coincide), or two resumes of one run, would otherwise both report success while each
overwrites the other's run record, config and checkpoints. The first process of a run takes `fcntl.flock` on
`<run>/.vlmlab.lock` and writes who it is there; the kernel releases the lock when the process ends, however it
ends, so a killed run never leaves its folder locked. The run's `.hydra/` config is written by vlmlab once the
lock is held (Hydra's own `output_subdir` is off for vlmlab-train), so a refused command changes nothing there.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import IO

from vlmlab.errors import UsageError

LOCK_FILE = ".vlmlab.lock"
_held: dict[Path, IO[str]] = {}  # the folders this process holds, their lock files open until it exits


def lock_run_folder(folder: Path) -> None:
    """Hold `folder`'s lock for the rest of this process (again in the same process: a no-op), or raise a
    UsageError naming the process that holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _held:
        return
    handle = open(folder / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "a process that has not said which"
        handle.close()
        raise UsageError(
            f"{folder} is in use by another run ({holder}): wait for it to end, or give this one another folder "
            "(hydra.run.dir=...)"
        ) from None
    handle.seek(0)
    handle.truncate()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {started}: {shlex.join(sys.argv)}\n")
    handle.flush()
    _held[key] = handle
