"""A checkpoint write that runs out of space, and a process killed in the middle of one, lose no work: the
earlier checkpoints stay intact, the failed write leaves nothing behind (or a partial file that resume removes),
and `vlmlab-train resume=` continues from the newest intact checkpoint to the uninterrupted run's weights.

The fault is real and at a known point: a test callback (tests/scripts/limit_file_size.py) lowers the process's
file-size limit (RLIMIT_FSIZE) below a checkpoint's size at step 3 of the instruct stage, so the checkpoint due
at step 4 cannot be written: the write fails with EFBIG (as ENOSPC on a full disk), or with SIGXFSZ left at its
default the kernel ends the process in the middle of it. The run folder is not under $TMPDIR."""

from __future__ import annotations

import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.cli_in_process import BIN, run_main, with_tests_importable
from vlmlab.cli.train import main as train_main
from vlmlab.testing import TINY_OVERRIDES

pytestmark = pytest.mark.slow  # long end-to-end runs: started first (tests/conftest.py)

STEPS = 6


def overrides(run: str) -> list[str]:
    return [
        *TINY_OVERRIDES,
        f"curriculum.stages.instruct.max_steps={STEPS}",
        f"curriculum.stages.instruct.val_check_interval={STEPS}",
        "callbacks.checkpoint.every_n_train_steps=2",
        "~callbacks.generation_validation",
        "eval.enabled=false",
        "~logger",
        f"hydra.run.dir=outputs/{run}",
    ]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("checkpoint-faults")
    (path / "tmp").mkdir()  # $TMPDIR of the faulted runs: not the run folder
    return path


@pytest.fixture(scope="module")
def straight(workdir: Path, synth_root: Path) -> dict[str, torch.Tensor]:
    """The uninterrupted run's final weights."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        code, _ = run_main(
            train_main, "vlmlab-train", [*overrides("straight"), f"data.root={synth_root}"], workdir, monkeypatch
        )
    assert code == 0
    return load_file(workdir / "outputs" / "straight" / "stages" / "instruct" / "model.safetensors")


def faulted(workdir: Path, synth_root: Path, run: str, kill: bool) -> subprocess.CompletedProcess:
    fault = ["+callbacks.fault._target_=tests.scripts.limit_file_size.LimitFileSize", "+callbacks.fault.stage=instruct"]
    fault += ["+callbacks.fault.step=3", f"+callbacks.fault.kill={str(kill).lower()}"]
    env = with_tests_importable()
    env["TMPDIR"] = str(workdir / "tmp")
    command = [str(BIN / "vlmlab-train"), *overrides(run), f"data.root={synth_root}", *fault]
    return subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=600, env=env)


def resume_to_the_straight_run(
    run: str,
    workdir: Path,
    synth_root: Path,
    straight: dict[str, torch.Tensor],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """`vlmlab-train resume=outputs/<run>` ends with the uninterrupted run's weights."""
    args = [*overrides(f"{run}-resumed"), f"data.root={synth_root}", f"resume=outputs/{run}"]
    code, stderr = run_main(train_main, "vlmlab-train", args, workdir, monkeypatch, capsys)
    assert code == 0, stderr[-3000:]
    resumed = load_file(workdir / "outputs" / run / "stages" / "instruct" / "model.safetensors")
    assert max((resumed[k] - straight[k]).abs().max().item() for k in straight) <= 1e-6


def step_of(path: Path) -> int:
    return int(torch.load(path, weights_only=True, mmap=True)["global_step"])


@pytest.mark.parametrize("kill", [False, True], ids=["out-of-space", "killed-mid-write"])
def test_a_checkpoint_write_that_fails_loses_no_work(
    kill: bool,
    workdir: Path,
    synth_root: Path,
    straight: dict[str, torch.Tensor],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    run = "killed" if kill else "full"
    result = faulted(workdir, synth_root, run, kill)
    checkpoints = workdir / "outputs" / run / "stages" / "instruct" / "checkpoints"
    partials = list(checkpoints.glob(".*.partial"))
    if kill:
        assert result.returncode == -signal.SIGXFSZ, result.stderr[-3000:]
        assert [p.name for p in partials] == [".epoch=0-step=4.ckpt.partial"]  # cut off mid-write
    else:
        assert result.returncode == 2, result.stderr[-3000:]
        line = result.stderr.strip().splitlines()[-1]
        assert line.startswith(f"vlmlab-train: the checkpoint epoch=0-step=4.ckpt did not fit in {checkpoints} (")
        assert "MB are free): make room there and resume the run; its earlier checkpoints are intact" in line
        assert "Traceback" not in result.stderr and not partials
    assert step_of(checkpoints / "last.ckpt") == 2  # the previous checkpoint, whole
    assert not list((workdir / "tmp").iterdir())  # nothing went through $TMPDIR

    resume_to_the_straight_run(run, workdir, synth_root, straight, monkeypatch, capsys)
    assert not list(checkpoints.glob(".*.partial"))


def test_sigterm_checkpoints_at_the_next_step_and_exits_with_the_preemption_code(
    workdir: Path,
    synth_root: Path,
    straight: dict[str, torch.Tensor],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """A scheduler's SIGTERM mid-stage: a checkpoint at the next optimizer step (not inside a gradient
    accumulation), the resume command, exit code 143; the resumed run ends with the uninterrupted run's weights."""
    slow = ["+callbacks.slow._target_=tests.scripts.slow_steps.SleepAfterEachBatch", "+callbacks.slow.seconds=0.5"]
    env = with_tests_importable()
    command = [str(BIN / "vlmlab-train"), *overrides("term"), f"data.root={synth_root}", *slow]
    process = subprocess.Popen(command, cwd=workdir, env=env, stderr=subprocess.PIPE, text=True)
    checkpoints = workdir / "outputs" / "term" / "stages" / "instruct" / "checkpoints"
    while not (checkpoints / "last.ckpt").exists() and process.poll() is None:
        time.sleep(0.2)  # the instruct stage's first checkpoint (step 2) is written: the stage is under way
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 143, stderr[-3000:]
    step = step_of(checkpoints / "last.ckpt")
    assert 2 < step < STEPS
    assert f"vlmlab-train: stopped by SIGTERM at step {step}; checkpoint {checkpoints / 'last.ckpt'}; resume" in stderr
    printed = shlex.split(stderr.strip().splitlines()[-1])  # runnable as printed: the script as it was started
    assert printed[0] == str(BIN / "vlmlab-train") and printed[-1] == "resume=outputs/term"
    assert "Traceback" not in stderr

    resume_to_the_straight_run("term", workdir, synth_root, straight, monkeypatch, capsys)
