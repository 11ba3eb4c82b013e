"""Two CPU processes (gloo) through `vlmlab-train`: DDP and FSDP2 follow the single-process run with
the same global batch (over more than an epoch whose samples do not fill a last global batch, validating at
the same optimizer steps), DDP's run SIGKILLed in its second epoch and resumed, with a loader worker; FSDP2's sharded
checkpoint resumes and converts to weights `vlmlab-eval` loads."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from tests.cli_in_process import BIN, InProcess, run_alone
from vlmlab.cli.evaluate import main as eval_main
from vlmlab.cli.train import main as train_main
from vlmlab.testing import TINY_DEMO_PRETRAIN, TINY_OVERRIDES, free_port, run_command

pytestmark = pytest.mark.slow  # long end-to-end runs: started first (tests/conftest.py)

# instruct: optimizer steps of a global batch of 8 = 4 per process x 2 processes, or 4 x 2 accumulated. An epoch
# is 110 samples (vqa 48 + doc 48 + 14 captions): 13 steps and a remainder of 6, on 1 process as on 2.
STEPS = 16
VAL_EVERY = 5  # optimizer steps
KILL_AT = 15  # the DDP run's SIGKILL: in epoch 1 (steps 14-26), before its validation at step 15
COMMON = [
    *TINY_OVERRIDES,
    "curriculum.stages.align.micro_batch_size=4",
    f"curriculum.stages.instruct.max_steps={STEPS}",
    f"curriculum.stages.instruct.val_check_interval={VAL_EVERY}",
    "curriculum.stages.instruct.gradient_clip_val=0.01",  # clipping acts: the global norm must be right
    "eval.enabled=false",
    "trainer.accelerator=cpu",
    "experiment_name=distributed",
]
LORA = [  # no adapter dropout: its random masks differ between one process and two
    "curriculum.stages.instruct.train.llm=lora",
    "curriculum.stages.instruct.lora.r=4",
    "curriculum.stages.instruct.lora.dropout=0.0",
]
NO_GENERATION = "~callbacks.generation_validation"
RUNS = {
    "single": ["trainer.devices=1", NO_GENERATION],
    "single-lora": ["trainer.devices=1", *LORA, NO_GENERATION],
    "fsdp2-lora": ["trainer.devices=2", "strategy=fsdp2", *LORA],  # generation validation on: it must step aside
    # killed at step KILL_AT, 1 step after a checkpoint in its second epoch, and resumed (kill_and_resume)
    "ddp": [
        "trainer.devices=2",
        "strategy=ddp",
        NO_GENERATION,
        "data.num_workers=1",
        f"callbacks.checkpoint.every_n_train_steps={KILL_AT - 1}",
    ],
    "fsdp2": [
        "trainer.devices=2",
        NO_GENERATION,
        "strategy=fsdp2",
        "callbacks.checkpoint.every_n_train_steps=2",
        "callbacks.checkpoint.save_top_k=-1",
    ],
}


# One torch thread in every process (Lightning gives each DDP process cores / processes): the same matmul
# blocking, so that DDP can be held to the single process's exact arithmetic.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def train(workdir: Path, synth_root: Path, name: str, *extra: str, expect: int = 0) -> None:
    command = [str(BIN / "vlmlab-train"), *COMMON, f"data.root={synth_root}", f"hydra.run.dir={name}", *extra]
    # in a new session: a kill callback kills the run's process group, not pytest
    result = run_command(command, workdir, env=ONE_THREAD, new_session=True)
    assert result.returncode == expect, result.stderr[-3000:]
    (workdir / f"{name}.log").write_text(result.stdout + result.stderr)


def kill_and_resume(workdir: Path, synth_root: Path, name: str, *extra: str) -> None:
    """The run `name` SIGKILLed at optimizer step KILL_AT of the instruct stage, then resumed to its end."""
    kill = ["+callbacks.kill._target_=vlmlab.testing.KillAtStep", "+callbacks.kill.stage=instruct"]
    train(workdir, synth_root, name, *extra, *kill, f"+callbacks.kill.step={KILL_AT}", expect=-signal.SIGKILL)
    state = json.loads((workdir / name / "curriculum_state.json").read_text())
    assert state["stages"]["instruct"]["status"] == "running"
    train(workdir, synth_root, f"{name}-resumed", *extra, f"resume={name}")


def curriculum_runs(workdir: Path, run_name: str) -> tuple[MlflowClient, list[Run]]:
    """The MLflow runs of the curriculum run named `run_name`: its parent run, then one run per stage."""
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("distributed").experiment_id])
    parent = next(r for r in runs if r.info.run_name == run_name)
    return client, [parent, *(r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id)]


def loss_histories(workdir: Path, run_name: str, key: str = "train/loss") -> dict[str, list[tuple[int, float]]]:
    """Stage -> [(step, value of `key`)] of the curriculum run named `run_name`."""
    client, (_, *stages) = curriculum_runs(workdir, run_name)
    return {
        r.data.tags["stage"]: sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, key))
        for r in stages
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, synth_root: Path) -> Path:
    workdir = tmp_path_factory.mktemp("distributed")
    for name, overrides in RUNS.items():
        if name == "single-lora":  # a reference held to 1e-5 (not to DDP's exact arithmetic): in this process
            command = [str(BIN / "vlmlab-train"), *COMMON, f"data.root={synth_root}", f"hydra.run.dir={name}"]
            assert run_alone(train_main, [*command, f"run_name={name}", *overrides], workdir) == 0
            continue
        (kill_and_resume if name == "ddp" else train)(workdir, synth_root, name, f"run_name={name}", *overrides)
    return workdir


def test_ddp_and_fsdp2_follow_the_single_process_run(runs: Path) -> None:
    single = loss_histories(runs, "single")
    assert [step for step, _ in single["instruct"]] == list(range(STEPS))
    expected = load_file(runs / "single" / "stages" / "instruct" / "model.safetensors")
    # DDP (killed and resumed): the same arithmetic (exact); FSDP2: rounding differs (its flat parameter buffers),
    # within 1e-5 here
    _, ddp_runs = curriculum_runs(runs, "ddp")  # the resumed run went on in the killed one's MLflow runs
    assert len(ddp_runs) == 3 and {r.info.status for r in ddp_runs} == {"FINISHED"}
    for name, tolerance in (("ddp", 0.0), ("fsdp2", 1e-5)):
        history = loss_histories(runs, name)
        for stage in ("align", "instruct"):  # train/loss is the global batch's mean
            steps, losses = zip(*history[stage])
            assert list(steps) == [s for s, _ in single[stage]], (name, stage)
            torch.testing.assert_close(
                torch.tensor(losses), torch.tensor([v for _, v in single[stage]]), atol=tolerance, rtol=0
            )
        got = load_file(runs / name / "stages" / "instruct" / "model.safetensors")
        assert got.keys() == expected.keys()
        assert max((got[k] - expected[k]).abs().max().item() for k in expected) <= tolerance, name
        # validation after the same optimizer steps (Lightning counts micro-batches per process)
        validated = [step for step, _ in loss_histories(runs, name, "val/loss")["instruct"]]
        assert validated == [step for step, _ in loss_histories(runs, "single", "val/loss")["instruct"]], name
    assert [step for step, _ in loss_histories(runs, "single", "val/loss")["instruct"]] == [
        4,
        9,
        14,
    ]  # after steps 5, 10, 15


def test_lora_under_fsdp2_follows_the_single_process_run(runs: Path) -> None:
    single, sharded = loss_histories(runs, "single-lora"), loss_histories(runs, "fsdp2-lora")
    torch.testing.assert_close(
        torch.tensor([v for _, v in sharded["instruct"]]),
        torch.tensor([v for _, v in single["instruct"]]),
        atol=1e-5,
        rtol=0,
    )
    assert "generation_validation is skipped under a sharded strategy" in (runs / "fsdp2-lora.log").read_text()
    stages = {name: runs / name / "stages" / "instruct" for name in ("single-lora", "fsdp2-lora")}
    for stage in stages.values():  # adapters saved from the gathered weights, merged into the stage's file
        assert (stage / "adapters" / "llm" / "adapter_model.safetensors").is_file()
    expected, got = (load_file(stage / "model.safetensors") for stage in stages.values())
    assert got.keys() == expected.keys() and not any("lora_" in k for k in got)
    assert max((got[k] - expected[k]).abs().max().item() for k in expected) <= 1e-5


def test_a_sharded_checkpoint_resumes_and_converts_for_vlmlab_eval(
    runs: Path, synth_root: Path, in_process: InProcess
) -> None:
    run_dir = runs / "fsdp2"
    checkpoints = run_dir / "stages" / "instruct" / "checkpoints"
    assert (checkpoints / "last.ckpt" / ".metadata").is_file()  # a folder of shards, one file per process
    assert {p.name for p in (checkpoints / "last.ckpt").glob("*.distcp")} == {"__0_0.distcp", "__1_0.distcp"}
    final = load_file(run_dir / "stages" / "instruct" / "model.safetensors")

    # Interrupted after step 2: the state says running, last.ckpt is the step-2 checkpoint.
    state_file = run_dir / "curriculum_state.json"
    state = json.loads(state_file.read_text())
    state["finished"] = False
    state["stages"]["instruct"]["status"] = "running"
    state_file.write_text(json.dumps(state))
    (run_dir / "stages" / "instruct" / "model.safetensors").unlink()
    shutil.rmtree(checkpoints / "last.ckpt")
    (checkpoints / f"epoch=0-step={STEPS // 2}.ckpt").rename(checkpoints / "last.ckpt")
    train(runs, synth_root, "fsdp2-resumed", "run_name=fsdp2", *RUNS["fsdp2"], f"resume={run_dir}")
    resumed = load_file(run_dir / "stages" / "instruct" / "model.safetensors")
    assert max((resumed[k] - final[k]).abs().max().item() for k in final) <= 1e-6
    assert [step for step, _ in loss_histories(runs, "fsdp2")["instruct"]][-1] == STEPS - 1

    # vlmlab-eval (in this process) reads the sharded checkpoint folder (last.ckpt) alone: the stage file's scores.
    scores = {}
    for name, checkpoint in (("sharded", checkpoints / "last.ckpt"), ("file", run_dir / "stages" / "instruct")):
        command = [str(BIN / "vlmlab-eval"), f"checkpoint={checkpoint}"]  # the model and data: the run's
        command += [f"hydra.run.dir=eval-{name}", "sources=[vqa]", "max_new_tokens=4"]
        result = in_process(eval_main, command, runs)
        assert result.returncode == 0, result.stderr[-3000:]
        scores[name] = json.loads((runs / f"eval-{name}" / "metrics.json").read_text())
    assert scores["sharded"] == scores["file"] and "test/vqa/vqa_accuracy" in scores["file"]


def test_two_nodes_under_torchrun_train_like_one_process(runs: Path, synth_root: Path) -> None:
    """Two torchrun launches, as on two machines: --nnodes 2, node ranks 0 and 1, rendezvous on 127.0.0.1."""
    port = free_port()
    nodes = [
        subprocess.Popen(
            [str(BIN / "torchrun"), "--nnodes=2", f"--node_rank={rank}", "--nproc_per_node=1"]
            + ["--master_addr=127.0.0.1", f"--master_port={port}", "-m", "vlmlab.cli.train"]
            + [*COMMON, f"data.root={synth_root}", "hydra.run.dir=two-nodes", "run_name=two-nodes", NO_GENERATION]
            + ["trainer.num_nodes=2", "trainer.devices=1", "strategy=ddp"],
            cwd=runs,
            env=ONE_THREAD,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    for node in nodes:
        _, stderr = node.communicate(timeout=600)
        assert node.returncode == 0, stderr[-3000:]
    history, single = loss_histories(runs, "two-nodes"), loss_histories(runs, "single")
    for stage in ("align", "instruct"):
        assert [s for s, _ in history[stage]] == [s for s, _ in single[stage]]
        torch.testing.assert_close(
            torch.tensor([v for _, v in history[stage]]), torch.tensor([v for _, v in single[stage]]), atol=1e-5, rtol=0
        )


def test_the_readme_ddp_example_on_the_demo(tmp_path: Path, synth_root: Path) -> None:
    """`vlmlab-train experiment=demo trainer.devices=2 strategy=ddp`: the demo trains its encoder, whose unused
    final norm must not be left without a gradient (DDP stops on such a parameter), contrastively first."""
    command = [str(BIN / "vlmlab-train"), "experiment=demo", "trainer.devices=2", "strategy=ddp"]
    command += ["trainer.accelerator=cpu", f"data.root={synth_root}", "hydra.run.dir=demo-ddp", "eval.enabled=false"]
    command += [o for o in TINY_OVERRIDES if o.startswith(("data.", "model.llm.tokenizer", "trainer.", "~"))]
    command += [
        f"curriculum.stages.{s}.{k}={v}"
        for s in ("pretrain", "align", "instruct")
        for k, v in (("max_steps", 3), ("batch_size", 8), ("micro_batch_size", 4), ("val_check_interval", 3))
    ]
    command += [o for o in TINY_DEMO_PRETRAIN if o.startswith("model.text_tower")]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((tmp_path / "demo-ddp" / "curriculum_state.json").read_text())
    assert state["finished"] and state["stages"]["instruct"]["global_step"] == 3
