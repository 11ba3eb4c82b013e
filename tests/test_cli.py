"""The console scripts, run as a user runs them: `vlmlab-train` and `vlmlab-data` in subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.conftest import FAST_OVERRIDES

BIN = Path(sys.executable).parent


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_train_cli_runs_the_curriculum(tmp_path: Path, synth_root: Path) -> None:
    result = run(
        [
            str(BIN / "vlmlab-train"),
            *FAST_OVERRIDES,
            f"data.root={synth_root}",
            "experiment_name=cli",
            "hydra.run.dir=run",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test split: exact-match accuracy" in result.stdout
    assert "blind baseline" in result.stdout
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert set(metrics) == {f"test/{s}/{m}" for s in ("caption", "vqa", "doc") for m in ("accuracy", "blind_accuracy")}
    # The default store: mlflow.db in the working directory, as `mlflow ui` expects.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cli").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["align", "instruct", "llava"]
    assert (tmp_path / "run" / "stages" / "instruct" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "stages" / "align" / "checkpoints" / "last.ckpt").is_file()


def test_bad_group_choice_fails_fast_with_the_choices(tmp_path: Path) -> None:
    result = run([str(BIN / "vlmlab-train"), "model/encoder=tiny_vitt"], cwd=tmp_path)
    assert result.returncode != 0
    assert "Could not find 'model/encoder/tiny_vitt'" in result.stderr
    assert "tiny_vit" in result.stderr and "clip_vit_l14_336" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()  # nothing was started


def test_dot_override_fails_before_loading_weights(tmp_path: Path) -> None:
    result = run([str(BIN / "vlmlab-train"), "model.llm=qwen2_5_0_5b_instruct"], cwd=tmp_path)
    assert result.returncode != 0
    assert "write model/llm=NAME (with a slash)" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_data_cli_writes_the_synthetic_dataset(tmp_path: Path) -> None:
    result = run(
        [
            str(BIN / "vlmlab-data"),
            "synth",
            "--out",
            "synth",
            "--image-size",
            "32",
            "--num-train",
            "4",
            "--num-val",
            "2",
            "--num-test",
            "2",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert len(json.loads((tmp_path / "synth" / "doc" / "train.json").read_text())) == 4
