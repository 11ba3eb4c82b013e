"""A tiny demo run trained through `vlmlab-train` (two stages of a few steps), for the tests that use a
trained model. Its stage folders are what a user hands to vlmlab-generate, vlmlab-chat and vlmlab-export."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.cli_in_process import BIN
from tests.conftest import DEMO_PRETRAIN_OVERRIDES, FAST_OVERRIDES


def run_cli(args: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run(args, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=300, env=env)


def train_demo_run(folder: Path, synth_root: Path) -> Path:
    """The run folder (with `.hydra/config.yaml` and `stages/{pretrain,align,instruct}`) of the demo with LLaVA's
    parts: the tiny transformers CLIP tower, the MLP projector and the tiny Llama."""
    result = run_cli(
        [
            str(BIN / "vlmlab-train"),
            "experiment=demo",
            *FAST_OVERRIDES,
            *DEMO_PRETRAIN_OVERRIDES,
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
