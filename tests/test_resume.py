"""Exact resume: a curriculum killed with SIGKILL mid-stage and resumed ends with the uninterrupted run's weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from tests.conftest import FAST_OVERRIDES

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
STEPS = 24  # instruct stage: optimizer steps, each of 2 accumulated micro-batches
CHECKPOINT_EVERY = 8


def train_command(synth_root: Path, run_dir: str, *extra: str) -> list[str]:
    return [
        str(BIN / "vlmlab-train"),
        *FAST_OVERRIDES,
        f"data.root={synth_root}",
        f"curriculum.stages.instruct.max_steps={STEPS}",
        f"curriculum.stages.instruct.val_check_interval={2 * STEPS}",  # in micro-batches: validate at the end
        f"callbacks.checkpoint.every_n_train_steps={CHECKPOINT_EVERY}",
        "~callbacks.generation_validation",
        "eval.enabled=false",
        "experiment_name=resume",
        f"hydra.run.dir=outputs/{run_dir}",
        *extra,
    ]


def loss_history(client: MlflowClient, run_id: str) -> dict[int, list[float]]:
    steps: dict[int, list[float]] = {}
    for m in client.get_metric_history(run_id, "train/loss"):
        steps.setdefault(m.step, []).append(m.value)
    return steps


def test_sigkill_mid_stage_then_resume_gives_the_uninterrupted_weights(tmp_path: Path, synth_root: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # the slow-down callback lives in tests/scripts
    uninterrupted = subprocess.run(
        train_command(synth_root, "straight", "run_name=straight"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    slow = ["+callbacks.slow._target_=tests.scripts.slow_steps.SleepAfterEachBatch", "+callbacks.slow.seconds=0.2"]
    command = train_command(synth_root, "killed", "run_name=killed", *slow)
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    last = tmp_path / "outputs" / "killed" / "stages" / "instruct" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read().decode()[-3000:]
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    state = json.loads((tmp_path / "outputs" / "killed" / "curriculum_state.json").read_text())
    assert state["stages"]["align"]["status"] == "done" and state["stages"]["instruct"]["status"] == "running"
    assert not (tmp_path / "outputs" / "killed" / "stages" / "instruct" / "model.safetensors").exists()
    # Checkpoints hold the trainable weights: LLaVA's align stage trains the connector only.
    align = torch.load(last.parents[2] / "align" / "checkpoints" / "last.ckpt", weights_only=True)
    assert align["state_dict"] and all(k.startswith("model.connector.") for k in align["state_dict"])
    assert {"optimizer_states", "lr_schedulers", "loops"} <= align.keys()

    resumed = subprocess.run(
        train_command(synth_root, "resumed", "run_name=killed", "resume=true"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    output = resumed.stdout + resumed.stderr
    assert "resuming the curriculum in" in output and "stage 'align' is done" in output, output[-3000:]
    assert f"resuming {tmp_path / 'outputs' / 'killed' / 'stages' / 'instruct' / 'checkpoints' / 'last.ckpt'}" in output

    expected = load_file(tmp_path / "outputs" / "straight" / "stages" / "instruct" / "model.safetensors")
    got = load_file(tmp_path / "outputs" / "killed" / "stages" / "instruct" / "model.safetensors")
    assert expected.keys() == got.keys()
    worst = max((expected[k] - got[k]).abs().max().item() for k in expected)
    assert worst <= 1e-6, worst
    assert json.loads((tmp_path / "outputs" / "killed" / "curriculum_state.json").read_text())["finished"]

    # MLflow: the same parent and stage runs continued; every step logged, none skipped; the steps between
    # the checkpoint and the kill were redone from the checkpoint and logged again with the same loss.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    killed = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == state["parent_run_id"]}
    parent = next(r for r in runs if r.info.run_name == "straight").info.run_id
    straight = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent}
    assert sorted(killed) == sorted(straight) == ["align", "instruct"]
    assert all(r.info.status == "FINISHED" for r in killed.values())
    history = loss_history(client, killed["instruct"].info.run_id)
    reference = loss_history(client, straight["instruct"].info.run_id)
    assert sorted(history) == sorted(reference) == list(range(STEPS))
    for step, values in history.items():
        assert torch.allclose(torch.tensor(values), torch.tensor(reference[step][0]), atol=1e-6), (step, values)
    redone = [step for step, values in history.items() if len(values) > 1]
    # Repeated: the steps after the checkpoint (step 8) that ran before the kill, and the checkpoint's own
    # last step, logged again from the checkpoint (Lightning writes a step's checkpoint before that step's
    # metrics reach MLflow: a kill in between must not leave a gap).
    assert all(CHECKPOINT_EVERY - 1 <= step < 2 * CHECKPOINT_EVERY for step in redone), redone
