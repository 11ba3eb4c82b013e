"""AnyRes through `vlmlab-train`: the synthetic data with its images at several aspect ratios (so that one
batch holds images of different tile grids), trained on one process and on two (DDP, gloo); then answered by
`vlmlab-generate` from the stage folder. (The feature cache with tiles and `vlmlab-data check`'s image tokens
per image: tests/test_anyres.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.cli_in_process import InProcess
from tests.test_distributed_training import BIN, loss_histories, train
from vlmlab.cli.generate import main as generate_main
from vlmlab.data.tiling import Tiling
from vlmlab.testing import reshaped_copy

pytestmark = pytest.mark.slow  # long end-to-end runs: started first (tests/conftest.py)

ANYRES = [
    "data.image_resize=anyres",
    "model.image_newline=true",
    "~callbacks.generation_validation",
    # LLaVA's 2e-5 and the distributed tests' clipping at 0.01 hold the loss still in 16 steps
    "curriculum.stages.instruct.gradient_clip_val=1.0",
    "curriculum.stages.instruct.lr.connector=3e-3",
    "curriculum.stages.instruct.lr.llm=3e-3",
    "curriculum.stages.instruct.max_steps=10",
]
SHAPES = ((60, 280), (280, 60), (200, 200), (80, 170), (170, 80))  # (height, width): grids 1x3, 3x1, 2x2, 1x2, 2x1
GRIDS = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))  # data.anyres.grid_pinpoints' default


@pytest.fixture(scope="module")
def shaped_root(tmp_path_factory: pytest.TempPathFactory, synth_root: Path) -> Path:
    """The tiny synthetic dataset with every image resized to one of SHAPES in turn."""
    return reshaped_copy(synth_root, tmp_path_factory.mktemp("shaped") / "synthetic", SHAPES)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, shaped_root: Path) -> Path:
    workdir = tmp_path_factory.mktemp("anyres")
    train(workdir, shaped_root, "single", "run_name=single", "trainer.devices=1", *ANYRES)
    # two loader workers per process here (none in the single run): the grids travel through worker collation
    train(
        workdir, shaped_root, "ddp", "run_name=ddp", "trainer.devices=2", "strategy=ddp", *ANYRES, "data.num_workers=2"
    )
    return workdir


def test_the_images_have_different_grids() -> None:
    tiling = Tiling(GRIDS, 96)  # the tiny ViT's 96 px
    assert len({tiling.grid(shape) for shape in SHAPES}) == 5


def test_anyres_trains_and_two_processes_follow_one(runs: Path) -> None:
    single, ddp = loss_histories(runs, "single"), loss_histories(runs, "ddp")
    for stage in ("align", "instruct"):
        torch.testing.assert_close(
            torch.tensor([v for _, v in ddp[stage]]), torch.tensor([v for _, v in single[stage]]), atol=1e-6, rtol=0
        )
    losses = [v for _, v in single["instruct"]]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.1, losses  # the loss falls
    expected = load_file(runs / "single" / "stages" / "instruct" / "model.safetensors")
    got = load_file(runs / "ddp" / "stages" / "instruct" / "model.safetensors")
    assert "connector.image_newline" in expected
    assert max((got[k] - expected[k]).abs().max().item() for k in expected) <= 1e-6


def test_generate_answers_with_the_runs_tiling(runs: Path, shaped_root: Path, in_process: InProcess) -> None:
    image = next(shaped_root.glob("images/doc/test/*.png"))
    result = in_process(  # in this process (vlmlab-generate's own process: tests/test_generate.py)
        generate_main,
        [str(BIN / "vlmlab-generate"), f"checkpoint={runs / 'single' / 'stages' / 'instruct'}", f"image={image}",
         "prompt=What is the total?", "max_new_tokens=3"],
        runs,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
