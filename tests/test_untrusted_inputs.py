"""Folders someone else wrote run no code when vlmlab loads them: crafted sharded checkpoints, model folders and
run folders, each through the real CLI. Every crafted file would write a marker file if anything unpickled or
instantiated it (checked first: each exploit works on the unguarded library call); the marker stays absent and
the command fails in one line with exit code 2."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from omegaconf import OmegaConf
from torch.distributed.checkpoint import FileSystemReader

from tests.cli_in_process import one_line, run_main
from vlmlab.cli.evaluate import main as eval_main
from vlmlab.cli.evaluate import run_data_under_this_policy
from vlmlab.cli.generate import main as generate_main
from vlmlab.cli.train import main as train_main
from vlmlab.errors import UsageError
from vlmlab.eval.run_scoring import write_run_scoring
from vlmlab.inference.loading import load_model
from vlmlab.models.sharded_checkpoint import check_sharded_checkpoint
from vlmlab.models.trust import check_targets, is_trusted, searchpath_targets
from vlmlab.testing import TINY_OVERRIDES

USAGE_ERROR = 2


class WritesMarker:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "code-ran"


def crafted_metadata(folder: Path, marker: Path) -> Path:
    """A sharded checkpoint folder whose `.metadata` is a pickle that runs a command."""
    folder.mkdir(parents=True)
    (folder / ".metadata").write_bytes(pickle.dumps(WritesMarker(marker)))
    (folder / "__0_0.distcp").write_bytes(b"")
    return folder


def crafted_item(folder: Path, marker: Path) -> Path:
    """A real torch.distributed.checkpoint folder (weights and all) with one non-tensor item that runs a command."""
    state = {"state_dict": {"model.w": torch.ones(2), "model.extra": WritesMarker(marker)}}
    dcp.save(state, checkpoint_id=folder, no_dist=True)
    return folder


def model_config(encoder: dict) -> dict:
    """The tiny demo model's parts with `encoder` in place of its tower."""
    llm = {
        "_target_": "vlmlab.models.llms.LanguageModel.from_config",
        "config": {"model_type": "llama", "hidden_size": 32},
        "tokenizer": "unused",
    }
    return {"encoder": encoder, "connector": {"_target_": "vlmlab.models.connectors.MLPConnector"}, "llm": llm}


def pickle_file(path: Path, marker: Path) -> Path:
    np.save(path, np.array([WritesMarker(marker)], dtype=object), allow_pickle=True)
    return path


def test_each_crafted_file_would_run_code_where_nothing_guards_it(tmp_path: Path, marker: Path) -> None:
    """The exploits are real: torch's own reader, DCP's loader and Hydra's instantiate run them."""
    with pytest.raises(Exception):  # noqa: B017 - what matters is the marker, written before whatever fails
        FileSystemReader(crafted_metadata(tmp_path / "meta", marker)).read_metadata()
    assert marker.exists()
    marker.unlink()
    folder = crafted_item(tmp_path / "item", marker)
    dcp.load({"state_dict": {"model.w": torch.zeros(2), "model.extra": ""}}, checkpoint_id=folder, no_dist=True)
    assert marker.exists()
    marker.unlink()
    from hydra.utils import instantiate

    instantiate({"_target_": "numpy.load", "file": str(pickle_file(tmp_path / "x.npy", marker)), "allow_pickle": True})
    assert marker.exists()


def test_crafted_checkpoints_and_configs_run_no_code_through_the_cli(
    tmp_path: Path, marker: Path, synth_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def refused(main, command: str, *args: str) -> str:
        code, stderr = run_main(main, command, list(args), tmp_path, monkeypatch, capsys)
        assert code == USAGE_ERROR, stderr[-3000:]
        assert not marker.exists(), f"{command} {args} ran the crafted code"
        return one_line(stderr, command)

    data = ["data=synthetic", f"data.root={synth_root}"]
    metadata = crafted_metadata(tmp_path / "sharded-metadata", marker)
    line = refused(eval_main, "vlmlab-eval", f"checkpoint={metadata}", *data)
    assert "refers to posix.system, which is not part of a checkpoint's metadata" in line
    item = crafted_item(tmp_path / "sharded-item", marker)
    line = refused(generate_main, "vlmlab-generate", f"checkpoint={item}", "prompt=hi")
    assert "the checkpoint's item state_dict.model.extra is not plain data" in line

    # A vlmlab model folder whose model.yaml builds numpy.load on a pickle
    folder = tmp_path / "model-folder"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    npy = str(pickle_file(tmp_path / "weights.npy", marker))
    encoder = {"_target_": "numpy.load", "file": npy, "allow_pickle": True}
    OmegaConf.save({"model": model_config(encoder), "image_resize": "resize"}, folder / "model.yaml")
    line = refused(generate_main, "vlmlab-generate", f"checkpoint={folder}", "prompt=hi")
    assert f"{folder / 'model.yaml'}: encoder._target_=numpy.load is not a vlmlab model component" in line

    # A run folder whose .hydra/config.yaml builds pandas.read_pickle, its connector nested in a list
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "stages" / "instruct").mkdir(parents=True)
    (run / "stages" / "instruct" / "model.safetensors").write_bytes(b"")
    connector = {"_target_": "vlmlab.models.connectors.MLPConnector", "extra": [{"_target_": "pandas.read_pickle"}]}
    saved = {"model": {**model_config({"_target_": "vlmlab.models.encoders.HFVisionEncoder"}), "connector": connector}}
    OmegaConf.save(saved, run / ".hydra" / "config.yaml")
    line = refused(eval_main, "vlmlab-eval", f"checkpoint={run / 'stages' / 'instruct'}", *data)
    assert "connector.extra[0]._target_=pandas.read_pickle is not a vlmlab model component" in line
    assert "trusted_targets=[pandas]" in line

    # vlmlab-train starting from a crafted sharded checkpoint
    line = refused(train_main, "vlmlab-train", *TINY_OVERRIDES, *data, f"init_from={metadata}", "~logger")
    assert "refers to posix.system" in line


def test_a_resume_from_a_crafted_sharded_checkpoint_runs_no_code(
    tmp_path: Path, marker: Path, synth_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A run folder whose interrupted stage left a `last.ckpt` folder: checked before Lightning's reader opens it."""
    args = [*TINY_OVERRIDES, "data=synthetic", f"data.root={synth_root}", "~logger", "eval.enabled=false"]
    args += ["~callbacks.generation_validation", "curriculum.stages.instruct.max_steps=1", "hydra.run.dir=run"]
    code, stderr = run_main(train_main, "vlmlab-train", args, tmp_path, monkeypatch, capsys)
    assert code == 0, stderr[-3000:]
    state_file = tmp_path / "run" / "curriculum_state.json"
    state = json.loads(state_file.read_text())
    state["stages"]["instruct"]["status"] = "running"
    state["finished"] = False
    state_file.write_text(json.dumps(state))
    last = tmp_path / "run" / "stages" / "instruct" / "checkpoints" / "last.ckpt"
    last.unlink()
    crafted_metadata(last, marker)
    code, stderr = run_main(train_main, "vlmlab-train", [*args, "resume=run"], tmp_path, monkeypatch, capsys)
    assert code == USAGE_ERROR, stderr[-3000:]
    assert not marker.exists()
    assert "refers to posix.system" in one_line(stderr, "vlmlab-train")


def test_a_real_sharded_checkpoint_passes_the_checks(tmp_path: Path) -> None:
    """What Lightning writes (weights, optimizer state as plain items) is read as before, item for item."""
    weights = {"model.w": torch.arange(6.0).reshape(2, 3)}
    state = {"state_dict": weights, "optimizer_0": {"param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "name": "x"}]}}
    dcp.save(state, checkpoint_id=tmp_path / "ckpt", no_dist=True)
    check_sharded_checkpoint(tmp_path / "ckpt")
    from vlmlab.models.weights import lightning_state_dict

    assert torch.equal(lightning_state_dict(tmp_path / "ckpt")["w"], weights["model.w"])


def test_trusted_targets_are_vlmlabs_components_and_what_the_user_names(tmp_path: Path) -> None:
    assert is_trusted("vlmlab.models.connectors.MLPConnector", [])
    assert is_trusted("vlmlab.data.synthetic.tokenizer_corpus", [])
    assert not is_trusted("vlmlab.data.synthetic.write_synthetic_dataset", [])  # vlmlab, but writes files
    assert not is_trusted("my_pkgx.Thing", ["my_pkg"]) and is_trusted("my_pkg.projector.Strided", ["my_pkg"])
    assert is_trusted("anything.at.all", ["*"])
    conf = tmp_path / "my_conf" / "model" / "connector"
    conf.mkdir(parents=True)
    (conf / "strided.yaml").write_text("_target_: my_pkg.projector.StridedPoolConnector\nstride: 3\n")
    (conf / "broken.yaml").write_text("{not: yaml: at all")
    assert searchpath_targets([f"file://{tmp_path / 'my_conf'}", "pkg://vlmlab.conf"]) == [
        "my_pkg.projector.StridedPoolConnector"
    ]
    config = model_config({"_target_": "vlmlab.models.encoders.TimmVisionEncoder"})
    config["connector"] = {"_target_": "my_pkg.projector.StridedPoolConnector"}
    with pytest.raises(UsageError, match="or add trusted_targets=\\[my_pkg.projector\\]"):
        check_targets(config, "run/.hydra/config.yaml")
    check_targets(config, "run/.hydra/config.yaml", searchpath_targets([f"file://{tmp_path / 'my_conf'}"]))


def test_a_plug_in_run_loads_when_its_config_folder_is_named(tmp_path: Path) -> None:
    """load_model refuses a folder naming a target nobody vouched for, before importing it."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    config = model_config({"_target_": "my_missing_pkg.Encoder"})
    OmegaConf.save({"model": config, "image_resize": "resize"}, folder / "model.yaml")
    with pytest.raises(UsageError, match="encoder._target_=my_missing_pkg.Encoder is not a vlmlab model component"):
        load_model(folder)
    with pytest.raises(UsageError, match="no module named 'my_missing_pkg'"):  # trusted: now it is looked up
        load_model(folder, trusted_targets=["my_missing_pkg"])


def test_a_foreign_runs_scoring_record_generates_nothing_and_reads_under_this_policy(
    tmp_path: Path,
    compose_config,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """vlmlab-eval without data= takes the data a run scored from its folder: a folder from someone else whose
    record points the synthetic generator elsewhere and lifts the image limits gets neither."""
    elsewhere = tmp_path / "elsewhere"
    lifted = [f"data.root={elsewhere}", "data.allow_outside_images=true", "data.max_image_pixels=999999999999"]
    run = tmp_path / "foreign-run"
    (run / "stages" / "instruct").mkdir(parents=True)
    (run / "stages" / "instruct" / "model.safetensors").write_bytes(b"")
    record = write_run_scoring(run, compose_config(lifted))
    checkpoint = [f"checkpoint={run}/stages/instruct"]
    code, stderr = run_main(eval_main, "vlmlab-eval", checkpoint, tmp_path, monkeypatch, capsys)
    assert code == USAGE_ERROR
    line = one_line(stderr, "vlmlab-eval")
    assert "data files not found" in line and str(elsewhere) in line  # named, not generated
    assert not elsewhere.exists()
    policy = run_data_under_this_policy(OmegaConf.load(record).data)
    assert policy.synthetic is None and policy.allow_outside_images is False and policy.max_image_pixels == 64_000_000
