"""A native-resolution encoder under FSDP2 (2 CPU processes, gloo): the tiny Qwen2-VL tower on images of their own
shapes (tests/test_native_resolution_training.py's data), SIGKILLed in its second epoch and resumed, ends where the
single-process run ends, with the same loss at every step (as tests/test_distributed_training.py holds the other
encoders to)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.cli_in_process import BIN, InProcess
from tests.test_distributed_training import COMMON, KILL_AT, NO_GENERATION, kill_and_resume, loss_histories
from tests.test_native_resolution_training import SHAPES
from vlmlab.cli.train import main as train_main
from vlmlab.testing import reshaped_copy

pytestmark = pytest.mark.slow  # long end-to-end runs: started first (tests/conftest.py)

NATIVE = ["model/encoder=tiny_qwen2_vl", NO_GENERATION]
# killed by kill_and_resume at KILL_AT, 1 step after its checkpoint
FSDP2 = ["trainer.devices=2", "strategy=fsdp2", "data.num_workers=1"]
FSDP2.append(f"callbacks.checkpoint.every_n_train_steps={KILL_AT - 1}")


@pytest.fixture(scope="module")
def shaped_root(tmp_path_factory: pytest.TempPathFactory, synth_root: Path) -> Path:
    return reshaped_copy(synth_root, tmp_path_factory.mktemp("native") / "synthetic", SHAPES)


def test_fsdp2_killed_and_resumed_follows_the_single_process_run(
    tmp_path: Path,
    shaped_root: Path,
    in_process: InProcess,
) -> None:
    single = [str(BIN / "vlmlab-train"), *COMMON, f"data.root={shaped_root}", *NATIVE, "trainer.devices=1"]
    done = in_process(train_main, [*single, "hydra.run.dir=single", "run_name=single"], tmp_path)  # the reference
    assert done.returncode == 0, done.stderr[-3000:]
    kill_and_resume(tmp_path, shaped_root, "fsdp2", "run_name=fsdp2", *NATIVE, *FSDP2)
    sharded, reference = loss_histories(tmp_path, "fsdp2"), loss_histories(tmp_path, "single")
    for stage in ("align", "instruct"):  # each step once, the same losses
        assert [s for s, _ in sharded[stage]] == [s for s, _ in reference[stage]], stage
        torch.testing.assert_close(
            torch.tensor([v for _, v in sharded[stage]]),
            torch.tensor([v for _, v in reference[stage]]),
            atol=1e-5,
            rtol=0,
        )
    expected = load_file(tmp_path / "single" / "stages" / "instruct" / "model.safetensors")
    got = load_file(tmp_path / "fsdp2" / "stages" / "instruct" / "model.safetensors")
    assert got.keys() == expected.keys() and any(k.startswith("encoder.model.blocks.") for k in got)
    assert max((got[k] - expected[k]).abs().max().item() for k in expected) <= 1e-5
