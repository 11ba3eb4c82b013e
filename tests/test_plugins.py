"""A connector kept outside the repository, plugged in by config through the real CLI."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from safetensors.torch import load_file

from tests.cli_in_process import BIN, InProcess
from vlmlab.cli.train import main as train_main
from vlmlab.errors import UsageError
from vlmlab.models.component_check import check_connector_config
from vlmlab.testing import TINY_OVERRIDES

pytestmark = pytest.mark.slow  # long end-to-end runs: started first (tests/conftest.py)

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
    return root / "my_conf"


def test_a_connector_from_the_users_own_folder_trains_through_the_cli(
    tmp_path: Path, synth_root: Path, monkeypatch: pytest.MonkeyPatch, in_process: InProcess
) -> None:
    conf = write_plugin(tmp_path / "plugin")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path / "plugin"), os.environ.get("PYTHONPATH")])),
    }
    command = [
        str(BIN / "vlmlab-train"),
        *TINY_OVERRIDES,
        f"data.root={synth_root}",
        f"hydra.searchpath=[file://{conf}]",
    ]
    command += ["eval.enabled=false", "~callbacks.generation_validation"]

    def train(connector: str, run_dir: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*command, f"model/connector={connector}", f"hydra.run.dir={run_dir}"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=env,
        )

    result = train("strided", "run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "9 image tokens" not in result.stdout + result.stderr  # 9 patches, stride 3: 3 image tokens
    assert "-> 3 image tokens" in result.stdout + result.stderr
    weights = load_file(tmp_path / "run" / "stages" / "instruct" / "model.safetensors")
    assert weights["connector.proj.weight"].shape == (32, 128)  # LLM width x encoder width, injected

    # Mistakes through the command line in this process (one line, exit 2, before the encoder and LLM are built, no
    # run folder): the package not on the path, then a module it lacks
    unplugged = in_process(train_main, [*command, "model/connector=strided", "hydra.run.dir=unplugged"], tmp_path)
    assert unplugged.returncode == 2, unplugged.stderr[-3000:]
    monkeypatch.syspath_prepend(str(tmp_path / "plugin"))
    (conf / "model" / "connector" / "nowhere.yaml").write_text("_target_: my_pkg.projectors.StridedPoolConnector\n")
    result = in_process(train_main, [*command, "model/connector=nowhere", "hydra.run.dir=nowhere"], tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr and "no module named 'my_pkg.projectors'. Is the folder" in last_line
    assert "encoder: vlmlab.models.encoders" not in result.stdout + result.stderr
    assert not (tmp_path / "nowhere").exists()
    # The others: the same check the command line runs first
    for target, extra, message in (
        ("my_pkg.projector.Unfit", {}, "is not a subclass of vlmlab.models.connectors.Connector"),
        ("my_pkg.projector.StridedPool", {}, "my_pkg.projector has no 'StridedPool'; its classes: Connector, "),
        ("my_pkg.projector.StridedPoolConnector", {"strides": 2}, "model.connector.strides is not an option of"),
    ):
        with pytest.raises(UsageError, match=re.escape(message)):
            check_connector_config(OmegaConf.create({"_target_": target, **extra}))

    assert "no module named 'my_pkg'. Is the folder that holds it on PYTHONPATH" in unplugged.stderr
