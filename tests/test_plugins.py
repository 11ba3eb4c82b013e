"""A connector kept outside the repository, plugged in by config through the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from tests.conftest import FAST_OVERRIDES

BIN = Path(sys.executable).parent
PROJECTOR = """
import torch
from torch import nn
from vlmlab.models.connectors import Connector


class StridedPoolConnector(Connector):
    def __init__(self, in_dim: int, out_dim: int, num_in_tokens: int, stride: int = 4) -> None:
        super().__init__(in_dim, out_dim, num_in_tokens)
        self.stride = stride
        self.proj = nn.Linear(in_dim, out_dim)

    @property
    def num_out_tokens(self) -> int:
        return self.num_in_tokens // self.stride

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, n, d = features.shape
        pooled = features[:, : self.num_out_tokens * self.stride].reshape(b, -1, self.stride, d).mean(2)
        return self.proj(pooled)


class Unfit(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
"""


def write_plugin(root: Path) -> Path:
    (root / "my_pkg").mkdir(parents=True)
    (root / "my_pkg" / "__init__.py").write_text("")
    (root / "my_pkg" / "projector.py").write_text(PROJECTOR)
    connectors = root / "my_conf" / "model" / "connector"
    connectors.mkdir(parents=True)
    (connectors / "strided.yaml").write_text("_target_: my_pkg.projector.StridedPoolConnector\nstride: 3\n")
    (connectors / "unfit.yaml").write_text("_target_: my_pkg.projector.Unfit\n")
    return root / "my_conf"


def test_a_connector_from_the_users_own_folder_trains_through_the_cli(tmp_path: Path, synth_root: Path) -> None:
    conf = write_plugin(tmp_path / "plugin")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "plugin")}
    command = [
        str(BIN / "vlmlab-train"),
        *FAST_OVERRIDES,
        f"data.root={synth_root}",
        f"hydra.searchpath=[file://{conf}]",
    ]
    command += ["eval.enabled=false", "~callbacks.generation_validation"]
    result = subprocess.run(
        [*command, "model/connector=strided", "hydra.run.dir=run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "9 image tokens" not in result.stdout + result.stderr  # 9 patches, stride 3: 3 image tokens
    assert "-> 3 image tokens" in result.stdout + result.stderr
    weights = load_file(tmp_path / "run" / "stages" / "instruct" / "model.safetensors")
    assert weights["connector.proj.weight"].shape == (32, 128)  # LLM width x encoder width, injected

    unfit = subprocess.run(
        [*command, "model/connector=unfit", "hydra.run.dir=unfit"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert unfit.returncode != 0
    assert "connector my_pkg.projector.Unfit could not be built with in_dim, out_dim and num_in_tokens" in unfit.stderr
    assert "__init__ must accept these three" in unfit.stderr
