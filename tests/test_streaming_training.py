"""Streamed training through the CLI: `vlmlab-data optimize` writes two sources of the synthetic data as LitData
chunks (running it again writes nothing), `vlmlab-train data.shards=...` trains on their mixture, on one process
and on two (each its own samples, the same number of steps), and a run SIGKILLed in its second epoch resumes to
the uninterrupted run's weights, with loader workers and with two processes.

The instruct stage trains the 96 records of vqa + doc (48 each) in global batches of 8: 12 steps an epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.cli_in_process import InProcess, run_alone
from tests.test_resume import BIN, run
from vlmlab.cli.data import main as data_main
from vlmlab.cli.train import main as train_main
from vlmlab.testing import TINY_OVERRIDES

pytestmark = pytest.mark.slow  # long end-to-end runs: started first (tests/conftest.py)

STEPS = 18
CHECKPOINT_EVERY, KILL_AT = 14, 16  # a checkpoint in the middle of epoch 1 (steps 13-24), killed 2 steps later
TWO_SOURCES = [
    "~data.sources.caption",
    "~data.sources.doc_text",
    "~data.mixtures.pretrain",
    "~data.mixtures.align",
    "~data.mixtures.instruct.caption",  # instruct: vqa 1.0 + doc 1.0
    *(f"data.sources.{s}.{split}=null" for s in ("vqa", "doc") for split in ("val", "test")),
]
DDP = ["trainer.devices=2", "strategy=ddp", "trainer.accelerator=cpu", "curriculum.stages.instruct.micro_batch_size=4"]


def optimize_command(synth_root: Path, out: Path) -> list[str]:
    command = [str(BIN / "vlmlab-data"), "optimize", "--source", "vqa", "--source", "doc", "--split", "train"]
    return [*command, "--workers", "2", f"output={out}", *TINY_OVERRIDES, f"data.root={synth_root}"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, synth_root: Path) -> Path:
    workdir = tmp_path_factory.mktemp("streaming")
    done = run(optimize_command(synth_root, workdir / "shards"), workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stdout
    assert "vqa/train: written, 48 of 48 records" in said and "doc/train: written, 48 of 48 records" in said
    return workdir / "shards"


def train(synth_root: Path, shards: Path, name: str, *extra: str, here: bool = False) -> None:
    """`vlmlab-train` on the shards, as a process (in this process with `here`: a reference run)."""
    command = [
        str(BIN / "vlmlab-train"),
        *TINY_OVERRIDES,
        f"data.root={synth_root}",
        f"data.shards={shards}",
        *TWO_SOURCES,
        "~curriculum.stages.align",
        f"curriculum.stages.instruct.max_steps={STEPS}",
        f"curriculum.stages.instruct.val_check_interval={STEPS}",
        "~callbacks.generation_validation",
        "eval.enabled=false",
        "experiment_name=streaming",
        f"run_name={name}",
        f"hydra.run.dir=outputs/{name}",
        "+callbacks.record_ids._target_=tests.scripts.record_batch_ids.RecordBatchIds",
        f"+callbacks.record_ids.out=outputs/{name}/ids",
        *extra,
    ]
    if here:
        assert run_alone(train_main, command, shards.parent) == 0
        return
    done = run(command, shards.parent)
    assert done.returncode == 0, done.stderr[-3000:]


def kill_and_resume(synth_root: Path, shards: Path, name: str, *extra: str) -> None:
    every = f"callbacks.checkpoint.every_n_train_steps={CHECKPOINT_EVERY}"
    kill = ["+callbacks.kill._target_=vlmlab.testing.KillAtStep", "+callbacks.kill.stage=instruct"]
    with pytest.raises(AssertionError, match="returncode"):  # the SIGKILL ends the run with -9
        train(synth_root, shards, name, every, *kill, f"+callbacks.kill.step={KILL_AT}", *extra)
    train(synth_root, shards, f"{name}-resumed", every, f"resume=outputs/{name}", *extra)


def weights(workdir: Path, name: str) -> dict:
    return load_file(workdir / "outputs" / name / "stages" / "instruct" / "model.safetensors")


def assert_same_weights(workdir: Path, name: str, reference: str) -> None:
    expected, got = weights(workdir, reference), weights(workdir, name)
    assert max((expected[k] - got[k]).abs().max().item() for k in expected) <= 1e-6


def batches(workdir: Path, name: str, rank: int) -> list[dict]:
    return [json.loads(line) for line in (workdir / "outputs" / name / "ids" / f"rank{rank}.jsonl").open()]


def test_optimize_again_writes_nothing(shards: Path, synth_root: Path, in_process: InProcess) -> None:
    done = in_process(data_main, optimize_command(synth_root, shards), shards.parent)  # in this process
    assert done.returncode == 0, done.stderr[-3000:]
    assert "vqa/train: up to date" in done.stdout and "doc/train: up to date" in done.stdout


def test_sigkill_then_resume_from_shards_with_loader_workers(shards: Path, synth_root: Path) -> None:
    train(synth_root, shards, "straight", "data.num_workers=0", here=True)
    kill_and_resume(synth_root, shards, "killed", "data.num_workers=2")
    assert_same_weights(shards.parent, "killed", "straight")
    trained = [b for b in batches(shards.parent, "straight", 0)]
    epoch = [i for b in trained if b["step"] < 12 for i in b["ids"]]
    assert len(epoch) == len(set(epoch)) == 96  # every record of both sources once in an epoch
    before, after = batches(shards.parent, "killed", 0), batches(shards.parent, "killed-resumed", 0)
    resumed = [b for b in before if b["step"] < CHECKPOINT_EVERY] + after
    assert resumed == trained  # the same micro-batches in the same order: none repeated, none skipped


def test_two_processes_read_their_own_samples_and_resume_exactly(shards: Path, synth_root: Path) -> None:
    train(synth_root, shards, "ddp", *DDP, "data.num_workers=1")
    ranks = [batches(shards.parent, "ddp", r) for r in (0, 1)]
    assert [len(r) for r in ranks] == [STEPS, STEPS]  # equal steps
    epoch = [{i for b in r if b["step"] < 12 for i in b["ids"]} for r in ranks]
    assert not epoch[0] & epoch[1] and len(epoch[0] | epoch[1]) == 96  # disjoint, together the whole epoch
    kill_and_resume(synth_root, shards, "ddp-killed", *DDP, "data.num_workers=1")
    assert_same_weights(shards.parent, "ddp-killed", "ddp")
