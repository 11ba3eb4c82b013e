"""The contrastive stage through `vlmlab-train` (subprocesses, a real sqlite MLflow store): the encoder-only
curriculum raises retrieval recall above chance; one process, DDP and FSDP2 (2 CPU processes, gloo) follow the
same trajectory; a SIGKILL in the stage resumes to the uninterrupted run's weights."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from tests.cli_in_process import BIN, run_alone
from vlmlab.cli.train import main as train_main
from vlmlab.data.synthetic import SynthConfig, write_synthetic_dataset
from vlmlab.testing import TINY_DEMO_PRETRAIN, TINY_OVERRIDES

pytestmark = pytest.mark.slow  # long end-to-end runs: started first (tests/conftest.py)

REPO = Path(__file__).resolve().parents[1]
STEPS = 40
DATA = SynthConfig.demo(seed=0, image_size=48, num_train=128, num_val=32, num_test=8, train_turns=1)
CONTRASTIVE = [
    "curriculum=contrastive",
    "model/text_tower=tiny_text",
    *[o for o in TINY_DEMO_PRETRAIN if o.startswith("model.text_tower.")],  # the demo's tiny text tower
    *[o for o in TINY_OVERRIDES if not o.startswith(("curriculum.", "data.synthetic"))],
    *[f"data.synthetic.{k}={v}" for k, v in vars(DATA).items() if k != "tasks"],  # tasks: the preset's
    f"curriculum.stages.pretrain.max_steps={STEPS}",
    "curriculum.stages.pretrain.batch_size=16",
    "curriculum.stages.pretrain.micro_batch_size=16",
    f"curriculum.stages.pretrain.val_check_interval={STEPS // 2}",
    "curriculum.stages.pretrain.contrastive_dim=32",
    "trainer.accelerator=cpu",
    "experiment_name=contrastive",
]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
CHECKPOINTED = ["callbacks.checkpoint.every_n_train_steps=10", "data.num_workers=1"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data, and the single-process run "single" (checkpoints and a loader worker change none of its numbers:
    the uninterrupted run a SIGKILLed one is compared with)."""
    path = tmp_path_factory.mktemp("contrastive")
    write_synthetic_dataset(path / "data", DATA)
    train(path, "single", *CHECKPOINTED)
    return path


def train(workdir: Path, name: str, *extra: str, expect: int = 0) -> subprocess.CompletedProcess:
    command = [str(BIN / "vlmlab-train"), *CONTRASTIVE, f"data.root={workdir / 'data'}", f"hydra.run.dir={name}"]
    command += [f"run_name={name}", *extra]
    result = subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, timeout=600, env=ONE_THREAD, start_new_session=True
    )
    assert result.returncode == expect, result.stderr[-3000:]
    return result


def history(workdir: Path, run_name: str, key: str, stage: str = "pretrain") -> list[tuple[int, float]]:
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("contrastive").experiment_id])
    parent = next(r for r in runs if r.info.run_name == run_name and "stage" not in r.data.tags)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    (child,) = [r for r in children if r.data.tags["stage"] == stage]
    return sorted((m.step, m.value) for m in client.get_metric_history(child.info.run_id, key))


def weights(workdir: Path, name: str, stage: str = "pretrain") -> dict[str, torch.Tensor]:
    return load_file(workdir / name / "stages" / stage / "model.safetensors")


def test_encoder_pretraining_alone_raises_retrieval_recall_above_chance(workdir: Path) -> None:
    for direction in ("i2t", "t2i"):  # chance: 1/32 at rank 1, 5/32 in the top 5
        (first, _), (last, top1) = history(workdir, "single", f"val/caption/{direction}_r1")
        assert (first, last) == (STEPS // 2 - 1, STEPS - 1)
        top5 = history(workdir, "single", f"val/caption/{direction}_r5")[-1][1]
        assert top1 > 2 / DATA.num_val and top5 > 2 * 5 / DATA.num_val, (direction, top1, top5)
    (_, early), (_, late) = history(workdir, "single", "val/loss")
    assert late < early
    assert (workdir / "single" / "stages" / "pretrain" / "objective.safetensors").is_file()  # text tower + heads
    assert not (workdir / "single" / "test_metrics.json").exists()  # no LLM answers to score
    # the next curriculum starts from the pretrained encoder (its connector and LLM untouched)
    encoder = {k: v for k, v in weights(workdir, "single").items() if k.startswith("encoder.")}
    assert encoder and all(k.startswith(("encoder.", "connector.", "llm.")) for k in weights(workdir, "single"))


def test_two_processes_follow_one_process(workdir: Path) -> None:
    """The global batch of 16 as one process's batch, or as 8 on each of 2 processes (the negatives are the
    global batch either way): the same losses and weights, under DDP and FSDP2, for each loss: a curriculum of
    two contrastive stages, SigLIP's loss then CLIP's (one run per strategy for both losses)."""
    stages = {"pretrain": "siglip", "pretrain_clip": "clip"}
    steps = ["+stage@curriculum.stages.pretrain_clip=contrastive"]
    for stage, loss in stages.items():
        steps += [f"curriculum.stages.{stage}.{key}" for key in ("batch_size=16", "micro_batch_size=16")]
        steps += [f"curriculum.stages.{stage}.contrastive_dim=32", f"curriculum.stages.{stage}.contrastive_loss={loss}"]
        steps += [
            f"curriculum.stages.{stage}.max_steps={STEPS // 4}",
            f"curriculum.stages.{stage}.val_check_interval={STEPS // 2}",
        ]
    one = [str(BIN / "vlmlab-train"), *CONTRASTIVE, f"data.root={workdir / 'data'}", "hydra.run.dir=one"]
    assert run_alone(train_main, [*one, "run_name=one", *steps], workdir) == 0  # the reference, in this process
    two = [*steps, "trainer.devices=2", *(f"curriculum.stages.{stage}.micro_batch_size=8" for stage in stages)]
    for strategy in ("ddp", "fsdp2"):
        train(workdir, strategy, *two, f"strategy={strategy}")
        for stage, loss in stages.items():
            reference = torch.tensor([v for _, v in history(workdir, "one", "train/loss", stage)])
            losses = torch.tensor([v for _, v in history(workdir, strategy, "train/loss", stage)])
            assert len(losses) == STEPS // 4, (strategy, loss)
            torch.testing.assert_close(losses, reference, atol=1e-5, rtol=0, msg=f"{strategy} {loss}")
            got, expected = weights(workdir, strategy, stage), weights(workdir, "one", stage)
            # the CLIP stage starts from the SigLIP stage's weights, whose rounding differs already: 10 more steps
            tolerance = 1e-5 if stage == "pretrain" else 5e-5
            assert max((got[k] - expected[k]).abs().max().item() for k in expected) <= tolerance, (strategy, loss)


def test_sigkill_in_the_contrastive_stage_then_resume_gives_the_uninterrupted_weights(workdir: Path) -> None:
    kill = ["+callbacks.kill._target_=vlmlab.testing.KillAtStep", "+callbacks.kill.stage=pretrain"]
    train(workdir, "killed", *CHECKPOINTED, *kill, "+callbacks.kill.step=14", expect=-signal.SIGKILL)
    train(workdir, "resumed", *CHECKPOINTED, "run_name=killed", "resume=killed")
    expected, got = weights(workdir, "single"), weights(workdir, "killed")
    assert max((got[k] - expected[k]).abs().max().item() for k in expected) <= 1e-6
    resumed, straight = history(workdir, "killed", "train/loss"), history(workdir, "single", "train/loss")
    assert [step for step, _ in resumed] == [step for step, _ in straight] == list(range(STEPS))  # each step once
    torch.testing.assert_close(torch.tensor([v for _, v in resumed]), torch.tensor([v for _, v in straight]))
