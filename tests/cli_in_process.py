"""Running vlmlab's commands (and the servers they talk to) from tests. `run_main`: in this process, through a
command's console-script entry point (`main()`, what the installed `vlmlab-*` script calls): the real CLI (Hydra's
composition, the checks, the one-line errors and exit codes) without a new interpreter importing torch, Lightning,
transformers and MLflow again (~8 s a command). `with_tests_importable`: the environment of a command started as a
process."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

BIN = Path(sys.executable).parent  # the installed vlmlab-* commands
REPO = Path(__file__).resolve().parents[1]


def with_tests_importable() -> dict[str, str]:
    """This process's environment with the repository on PYTHONPATH: a command started with it can load the
    test-only callbacks of tests/scripts (`+callbacks.x._target_=tests.scripts....`)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def run_main(
    main: Callable[[], object],
    command: str,
    args: list[str],
    cwd: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture | None = None,
) -> tuple[int, str]:
    """(exit code, stderr) of `command args...` run from `cwd` (stderr only with `capsys`). The logging handlers
    Hydra installs for the command (writing to this test's captured streams) and its HydraConfig (which would
    name a later test's runs) are removed afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [command, *args])
    GlobalHydra.instance().clear()
    if capsys is not None:
        capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None  # a later test composing outside a command must not see this one's
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)
    return code, capsys.readouterr().err if capsys is not None else ""


def run_in_process(
    main: Callable[[], object],
    command: list[str],
    cwd: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> subprocess.CompletedProcess:
    """`command` (`[<vlmlab-* script>, args...]`) as `run_main` runs it, its exit code and both output streams as a
    CompletedProcess (a run of the script's process would give the same), tables at full width."""
    monkeypatch.setenv("COLUMNS", "250")
    capsys.readouterr()
    code, _ = run_main(main, Path(command[0]).name, command[1:], cwd, monkeypatch)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(command, code, out.out, out.err)


def run_alone(main: Callable[[], object], command: list[str], cwd: Path) -> int:
    """`command` (`[<vlmlab-* script>, args...]`) run in this process as `run_main` runs it, outside a test (in a
    module-scoped fixture: its own monkeypatch, the output left to pytest's capture) and with one torch thread, as
    a process started with OMP_NUM_THREADS=1 computes; its exit code. For the single-process reference of runs that
    are compared with it in processes of their own."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            code, _ = run_main(main, Path(command[0]).name, command[1:], cwd, monkeypatch)
    finally:
        torch.set_num_threads(threads)
    return code


InProcess = Callable[[Callable[[], object], list[str], Path], subprocess.CompletedProcess]
# the `in_process` fixture


def one_line(stderr: str, command: str) -> str:
    """The command's own error line (exactly one, no traceback)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith(f"{command}: ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]
