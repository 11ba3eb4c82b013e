"""What a newcomer meets first: commands printed so that they run as printed."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli_in_process import one_line, run_main
from vlmlab.cli.entry import invocation
from vlmlab.cli.generate import main as generate_main
from vlmlab.cli.train import main as train_main
from vlmlab.errors import USAGE_EXIT_CODE


def test_printed_commands_start_the_script_as_this_one_was_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "project" / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("vlmlab-train", "vlmlab-eval"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(bin_dir / "vlmlab-train")])
    monkeypatch.setenv("PATH", "/usr/bin")
    monkeypatch.chdir(tmp_path / "project")
    assert invocation("vlmlab-eval") == ".venv/bin/vlmlab-eval"  # below the working directory: relative
    monkeypatch.chdir(tmp_path)
    assert invocation("vlmlab-eval") == "project/.venv/bin/vlmlab-eval"
    monkeypatch.chdir("/")
    assert invocation("vlmlab-eval") == str(bin_dir / "vlmlab-eval")  # elsewhere: the whole path
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin")
    assert invocation("vlmlab-eval") == "vlmlab-eval"  # what the shell finds by that name
    monkeypatch.setattr(sys, "argv", ["/somewhere/vlmlab/cli/train.py"])  # python -m (torchrun)
    assert invocation("vlmlab-eval") == "vlmlab-eval"


@pytest.mark.parametrize(
    ("command", "main", "override", "expected"),
    [
        ("vlmlab-train", train_main, "curriculum.stages.instruct.max_step=100", "curriculum.stages.instruct.max_steps"),
        ("vlmlab-generate", generate_main, "max_new_token=8", "max_new_tokens"),
    ],
)
def test_a_mistyped_field_is_answered_with_the_closest_one_at_once(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    command: str,
    main: Callable[[], object],
    override: str,
    expected: str,
) -> None:
    code, stderr = run_main(main, command, [override], tmp_path, monkeypatch, capsys)
    assert code == USAGE_EXIT_CODE
    line = one_line(stderr, command)
    key = override.partition("=")[0]
    parent = key.rpartition(".")[0] or "the config"
    assert f"{key} is not a field of {parent}: did you mean {expected}?" in line, line
    assert f"+{key}=" in line  # how a new field is added, after the suggestion
    assert not list(tmp_path.iterdir())  # nothing composed further, nothing written
