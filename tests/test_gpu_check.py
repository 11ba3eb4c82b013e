"""experiments/gpu/check.sh, the one-command GPU check: without CUDA it stops at once with its own exit code;
`--dry-run` runs every section on the CPU at the tests' tiny size and writes the report."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow  # long end-to-end runs: started first (tests/conftest.py)

REPO = Path(__file__).resolve().parents[1]
CHECK = REPO / "experiments" / "gpu" / "check.sh"
NO_CUDA_EXIT = 3
CUDA_HERE = shutil.which("nvidia-smi") is not None or Path("/dev/nvidia0").exists()
SECTIONS = {"curriculum", "loss", "resume", "packing", "compile", "installs"}


def numbers(node: Any) -> Iterator[float]:
    if isinstance(node, dict):
        for value in node.values():
            yield from numbers(value)
    elif isinstance(node, list):
        for value in node:
            yield from numbers(value)
    elif isinstance(node, int | float) and not isinstance(node, bool):
        yield node


@pytest.mark.skipif(CUDA_HERE, reason="a CUDA machine: the script would run the real check")
def test_without_cuda_it_stops_before_any_work_with_its_own_exit_code(tmp_path: Path) -> None:
    result = subprocess.run([str(CHECK), str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert result.returncode == NO_CUDA_EXIT, result.stderr
    assert "no CUDA device" in result.stderr and "--dry-run" in result.stderr
    assert not (tmp_path / "out").exists()  # no section started: nothing written (no wall-clock bound: load varies)


def test_dry_run_runs_every_section_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [str(CHECK), "--dry-run", "--work", str(tmp_path / "work"), str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:] + (out / "gpu_check.md").read_text()
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["mode"] == "dry-run" and report["ok"] and report["substitutions"]
    assert set(report["checks"]) == SECTIONS and all(report["checks"].values())
    assert all(math.isfinite(x) for x in numbers(report))  # no NaN or infinity anywhere

    runs = report["runs"]
    assert {r["status"] for r in runs.values()} == {"done"}
    assert runs["fsdp_chunked"]["strategy"] == "ddp"  # the dry run's stand-in for FSDP (v1)
    assert set(runs["fsdp2_chunked"]["stages"]) == {"align", "instruct"}
    for run in runs.values():
        for figures in run["stages"].values():
            assert {"tokens_per_s", "step_s", "mfu", "peak_memory_gib", "loss"} <= set(figures)
    assert runs["fsdp_chunked"]["checkpoint_files"]  # written, listed, then deleted

    resume = report["resume"]
    assert resume["killed_returncode"] == -9 and resume["resumed_returncode"] == 0
    assert resume["weights"]["tensors_trained"] > 0 and resume["weights"]["max_abs_diff"] <= 1e-6
    assert report["packing"]["sdpa_varlen"]["tokens_per_s_packed_over_padded"] > 0
    assert report["packing"]["native_resolution"]["ok"] and runs["native_packed"]["strategy"] == "fsdp2"
    assert "skipped" in report["packing"]["flash_attention_2"]
    assert report["compile"]["speedup"] > 0
    assert (out / "gpu_check.md").read_text().startswith("# vlmlab GPU check: passed")
    assert not list((tmp_path / "work").glob("runs/*/stages/*/model.safetensors"))  # GBs each on a GPU
