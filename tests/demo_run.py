"""A tiny demo run trained through `vlmlab-train` (two stages of a few steps), for the tests that use a
trained model. Its stage folders are what a user hands to vlmlab-generate, vlmlab-chat and vlmlab-export."""

from __future__ import annotations

from pathlib import Path

from tests.cli_in_process import BIN
from vlmlab.testing import TINY_DEMO_PRETRAIN, TINY_OVERRIDES, run_command


def train_demo_run(folder: Path, synth_root: Path) -> Path:
    """The run folder (with `.hydra/config.yaml` and `stages/{pretrain,align,instruct}`) of the demo with LLaVA's
    parts: the tiny transformers CLIP tower, the MLP projector and the tiny Llama."""
    result = run_command(
        [
            str(BIN / "vlmlab-train"),
            "experiment=demo",
            *TINY_OVERRIDES,
            *TINY_DEMO_PRETRAIN,
            "model/encoder=tiny_clip",
            "eval.enabled=false",
            "~callbacks.generation_validation",
            "~logger",
            f"data.root={synth_root}",
            "hydra.run.dir=run",
        ],
        cwd=folder,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "run"
