"""Two runs in one folder: while a run trains, a second `vlmlab-train` into its folder, and a resume of it, each
stop in one line naming the run that holds it and change nothing there; the first run finishes as if alone. A new
run into a finished run's folder is refused too. Runs creating one new MLflow store together do not collide."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli_in_process import BIN, one_line, run_main, with_tests_importable
from vlmlab.cli.train import main as train_main
from vlmlab.testing import TINY_OVERRIDES


def run_args(synth_root: Path, *extra: str) -> list[str]:
    common = ["~callbacks.generation_validation", "eval.enabled=false", "~logger", f"data.root={synth_root}"]
    return [*TINY_OVERRIDES, *common, *extra]


def test_a_busy_run_folder_refuses_a_second_run_and_a_resume(
    tmp_path: Path, synth_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    slow = ["+callbacks.slow._target_=tests.scripts.slow_steps.SleepAfterEachBatch", "+callbacks.slow.seconds=0.5"]
    env = with_tests_importable()
    first = subprocess.Popen(
        [str(BIN / "vlmlab-train"), *run_args(synth_root, *slow, "hydra.run.dir=shared")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        state = tmp_path / "shared" / "curriculum_state.json"
        deadline = time.monotonic() + 240
        while not state.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)  # the first run holds the folder and has started training
        assert state.exists(), first.communicate()[1][-3000:]
        config = (tmp_path / "shared" / ".hydra" / "config.yaml").read_text()

        code, stderr = run_main(
            train_main, "vlmlab-train", run_args(synth_root, "seed=7", "hydra.run.dir=shared"), tmp_path, monkeypatch,
            capsys,
        )  # fmt: skip
        assert code == 2
        line = one_line(stderr, "vlmlab-train")
        assert f"vlmlab-train: {tmp_path / 'shared'} is in use by another run (pid {first.pid} on " in line
        assert "wait for it to end, or give this one another folder (hydra.run.dir=...)" in line
        code, stderr = run_main(
            train_main, "vlmlab-train", run_args(synth_root, "resume=shared"), tmp_path, monkeypatch, capsys
        )
        assert code == 2 and f"pid {first.pid}" in one_line(stderr, "vlmlab-train")
        assert (tmp_path / "shared" / ".hydra" / "config.yaml").read_text() == config  # untouched
    finally:
        _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-3000:]
    assert "seed: 7" not in (tmp_path / "shared" / ".hydra" / "config.yaml").read_text()

    code, stderr = run_main(
        train_main, "vlmlab-train", run_args(synth_root, "hydra.run.dir=shared"), tmp_path, monkeypatch, capsys
    )
    assert code == 2
    assert one_line(stderr, "vlmlab-train") == (
        f"vlmlab-train: {tmp_path / 'shared'} already holds a run (its curriculum_state.json): resume it with "
        f"resume={tmp_path / 'shared'}, or give this run another folder (hydra.run.dir=...)"
    )


STORE = """
import sys
from vlmlab.tracking.store import tracking_client
tracking_client(sys.argv[1]).create_experiment(sys.argv[2])
"""


def test_runs_creating_one_new_tracking_store_together_do_not_collide(tmp_path: Path) -> None:
    """Four processes opening one new sqlite store at once (MLflow's migrations failed for all four unguarded)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    starts = [
        subprocess.Popen([sys.executable, "-c", STORE, uri, f"e{k}"], stderr=subprocess.PIPE, text=True)
        for k in range(4)
    ]
    for process in starts:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
    from mlflow.tracking import MlflowClient

    names = {e.name for e in MlflowClient(uri).search_experiments()}
    assert {"e0", "e1", "e2", "e3"} <= names
