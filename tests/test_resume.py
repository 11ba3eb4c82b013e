"""Exact resume: a curriculum SIGKILLed in stage 2 and resumed through `vlmlab-train resume=<run>` ends with the
uninterrupted run's weights and MLflow history, after a mid-epoch and after an end-of-epoch checkpoint of a later
epoch, with loader workers (two processes: tests/test_distributed_training.py, whose DDP run is killed and resumed).

The instruct stage trains 110 samples a epoch (vqa 48 + doc 48 + 30 % of 48 captions) in global batches of 8:
13 optimizer steps, the remainder of 6 left out; epoch 0 is steps 1-13, epoch 1 steps 14-26, epoch 2 steps 27-30.
"""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from tests.cli_in_process import BIN, InProcess, run_alone, with_tests_importable
from vlmlab.cli.train import main as train_main
from vlmlab.testing import TINY_OVERRIDES, run_command

pytestmark = pytest.mark.slow  # long end-to-end runs: started first (tests/conftest.py)

STEPS = 30  # instruct stage: optimizer steps of a global batch of 8 (2 accumulated micro-batches of 4)
DETERMINISTIC_METRICS = ("train/loss", "val/loss", "epoch", "lr-AdamW/encoder", "lr-AdamW/connector", "lr-AdamW/llm")
# (checkpoint every N optimizer steps, kill at step): a checkpoint at 17 in the middle of epoch 1, killed 3 steps
# later; checkpoints at the ends of epochs 0 and 1 (13, 26), killed 2 steps into epoch 2.
SCENARIOS = {"mid-epoch": (17, 20), "end-of-epoch": (13, 28)}


def train_command(synth_root: Path, run_dir: str, *extra: str) -> list[str]:
    return [
        str(BIN / "vlmlab-train"),
        *TINY_OVERRIDES,
        f"data.root={synth_root}",
        f"curriculum.stages.instruct.max_steps={STEPS}",
        f"curriculum.stages.instruct.val_check_interval={STEPS}",
        "~callbacks.generation_validation",
        "eval.enabled=false",
        "experiment_name=resume",
        f"hydra.run.dir=outputs/{run_dir}",
        *extra,
    ]


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """In a new session: the kill callback kills the run's process group, not pytest."""
    return run_command(command, cwd, env=with_tests_importable(), new_session=True)


def stage_runs(client: MlflowClient, run_name: str) -> dict[str, object]:
    runs = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    parent = next(r for r in runs if r.info.run_name == run_name and "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return {"parent": parent, **{r.data.tags["stage"]: r for r in children}, "count": len(children)}


def histories(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    keys = client.get_run(run_id).data.metrics
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in keys}


def assert_same_training(workdir: Path, name: str, reference: str, weights_atol: float = 1e-6) -> None:
    """The killed-and-resumed run `name` ended where `reference` did, and its MLflow history is reference's."""
    expected = load_file(workdir / "outputs" / reference / "stages" / "instruct" / "model.safetensors")
    got = load_file(workdir / "outputs" / name / "stages" / "instruct" / "model.safetensors")
    assert expected.keys() == got.keys()
    worst = max((expected[k] - got[k]).abs().max().item() for k in expected)
    assert worst <= weights_atol, worst
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs, straight = stage_runs(client, name), stage_runs(client, reference)
    assert runs["count"] == straight["count"] == 2  # one run per stage, no orphan
    assert all(runs[k].info.status == "FINISHED" for k in ("parent", "align", "instruct"))
    for stage in ("align", "instruct"):
        history, reference_history = (
            histories(client, runs[stage].info.run_id),
            histories(client, straight[stage].info.run_id),
        )
        assert history.keys() == reference_history.keys()
        for key, points in history.items():  # every step once, the same steps as the uninterrupted run
            steps = [step for step, _ in points]
            assert len(steps) == len(set(steps)) and steps == [s for s, _ in reference_history[key]], (stage, key)
        for key in DETERMINISTIC_METRICS:  # and the same values (timings aside)
            if key in history:
                values = torch.tensor([v for _, v in history[key]])
                expected_values = torch.tensor([v for _, v in reference_history[key]])
                torch.testing.assert_close(values, expected_values, atol=1e-6, rtol=0, msg=f"{stage} {key}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, synth_root: Path) -> Path:
    """The uninterrupted run every resumed one is compared with (loader workers do not change the samples), in this
    process: the runs compared with it are processes of their own."""
    path = tmp_path_factory.mktemp("resume")
    assert run_alone(train_main, train_command(synth_root, "straight", "run_name=straight"), path) == 0
    return path


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_in_a_later_epoch_then_resume_gives_the_uninterrupted_run(
    workdir: Path, synth_root: Path, workers: int
) -> None:
    """Killed mid-epoch (resumed from a checkpoint 3 steps back), the resumed run killed again 2 steps into the
    next epoch (resumed from the checkpoint at the epoch's end), then resumed to its end: each scenario of
    SCENARIOS in turn, in one run (and a resume of a resumed run)."""
    name, loader = f"kill-w{workers}", f"data.num_workers={workers}"
    kill = ["+callbacks.kill._target_=vlmlab.testing.KillAtStep", "+callbacks.kill.stage=instruct"]
    folder = workdir / "outputs" / name
    for number, (checkpoint_every, kill_at) in enumerate(SCENARIOS.values()):
        every = f"callbacks.checkpoint.every_n_train_steps={checkpoint_every}"
        resume = [f"resume=outputs/{name}"] if number else []
        launch = f"{name}-{number}" if number else name
        killed = run(train_command(synth_root, launch, f"run_name={name}", loader, every, *resume, *kill,
                                   f"+callbacks.kill.step={kill_at}"), workdir)  # fmt: skip
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        state = json.loads((folder / "curriculum_state.json").read_text())
        assert state["stages"]["align"]["status"] == "done" and state["stages"]["instruct"]["status"] == "running"
        saved = sorted(p.name for p in (folder / "stages" / "instruct" / "checkpoints").glob("*.ckpt"))
        assert f"step={kill_at - kill_at % checkpoint_every}" in " ".join(saved), saved  # where it resumes from
    resumed = run(train_command(synth_root, f"{name}-resumed", f"run_name={name}", loader, f"resume=outputs/{name}"),
                  workdir)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    output = resumed.stdout + resumed.stderr
    assert "stage 'align' is done" in output and "resuming " in output, output[-3000:]
    assert_same_training(workdir, name, "straight")
    assert json.loads((folder / "curriculum_state.json").read_text())["finished"]


def test_resuming_a_finished_curriculum_changes_nothing(workdir: Path, synth_root: Path, in_process: InProcess) -> None:
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    before = stage_runs(client, "straight")["parent"]
    again = in_process(train_main, train_command(synth_root, "again", "run_name=straight", "resume=outputs/straight"),
                       workdir)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "is finished: nothing to resume" in again.stdout
    after = stage_runs(client, "straight")["parent"]
    assert after.info.end_time == before.info.end_time and after.info.status == "FINISHED"
    assert histories(client, after.info.run_id) == histories(client, before.info.run_id)
    assert not (workdir / "outputs" / "again").exists() or not any((workdir / "outputs" / "again").glob("stages"))


def test_ctrl_c_prints_the_command_that_resumes_a_moved_run_folder(workdir: Path, synth_root: Path) -> None:
    """Ctrl-C in stage 2 stops the run with the command that resumes it; the run folder, moved elsewhere (as
    to another file system), resumes from its record's relative paths to the uninterrupted run's weights."""
    checkpoint_every, interrupt_at = SCENARIOS["mid-epoch"]
    common = ["run_name=ctrl-c", f"callbacks.checkpoint.every_n_train_steps={checkpoint_every}"]
    press = ["+callbacks.kill._target_=vlmlab.testing.KillAtStep", "+callbacks.kill.stage=instruct"]
    press += [f"+callbacks.kill.step={interrupt_at}", "+callbacks.kill.interrupt=true"]
    stopped = run(train_command(synth_root, "ctrl-c", *common, *press), workdir)
    assert stopped.returncode == 1, stopped.stderr[-3000:]
    lines = stopped.stderr.splitlines()
    assert "vlmlab-train: interrupted; resume where it stopped:" in lines, stopped.stderr[-3000:]
    said = lines.index("vlmlab-train: interrupted; resume where it stopped:")
    command = shlex.split(lines[said + 1])
    assert command[0] == str(BIN / "vlmlab-train") and command[-1] == "resume=outputs/ctrl-c"  # as it was started
    assert not any(arg.startswith("hydra.run.dir=") for arg in command)

    moved = workdir / "elsewhere" / "ctrl-c"
    moved.parent.mkdir()
    shutil.move(workdir / "outputs" / "ctrl-c", moved)
    resume = [a for a in command[:-1] if not a.startswith("+callbacks.kill")]  # as printed, less the test's kill
    resumed = run([*resume, f"resume={moved}", "hydra.run.dir=outputs/ctrl-c-resumed"], workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = load_file(workdir / "outputs" / "straight" / "stages" / "instruct" / "model.safetensors")
    got = load_file(moved / "stages" / "instruct" / "model.safetensors")
    assert max((expected[k] - got[k]).abs().max().item() for k in expected) <= 1e-6
    state = json.loads((moved / "curriculum_state.json").read_text())
    assert state["finished"] and state["stages"]["instruct"]["weights"] == "stages/instruct/model.safetensors"
    log = (moved / "train.log").read_text()  # the whole run: the first part, then the resumed one
    assert "stage 'instruct': train" in log and "resuming the curriculum in" in log
    assert "Detected KeyboardInterrupt" in log  # Lightning's messages reach the run log too
