"""The command line as a newcomer meets it: each mistake is one line on stderr that names the field or file and
the fix, exit code 2, found before the model is built and before any MLflow run or run folder is created."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from huggingface_hub import constants
from omegaconf import DictConfig

from tests.cli_in_process import BIN, InProcess
from vlmlab.cli.evaluate import main as eval_main
from vlmlab.cli.train import main as train_main
from vlmlab.errors import UsageError
from vlmlab.preflight import check_before_training
from vlmlab.testing import TINY_OVERRIDES, run_command

USAGE_ERROR = 2


def assert_usage_error(result: subprocess.CompletedProcess, command: str, *fragments: str) -> None:
    """One line on stderr from `command` (after library warnings, if any), no traceback, exit code 2."""
    assert result.returncode == USAGE_ERROR, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    ours = [line for line in result.stderr.splitlines() if line.startswith(f"{command}: ")]
    assert len(ours) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in ours[0], ours[0]


def assert_nothing_started(workdir: Path) -> None:
    assert not (workdir / "mlflow.db").exists()  # no MLflow run was created
    assert not (workdir / "outputs").exists() or not any((workdir / "outputs").iterdir())  # no empty run folder


def train(
    workdir: Path, *overrides: str, env: dict[str, str] | None = None, fast: bool = True
) -> subprocess.CompletedProcess:
    """`vlmlab-train` with the overrides (after the tiny-model ones unless `fast=False`: a mistake must be found
    before anything is built, whatever the model and data)."""
    return run_command([str(BIN / "vlmlab-train"), *(TINY_OVERRIDES if fast else []), *overrides], workdir, env)


# Each mistake and what its one line must say. All are checked in-process by `check_before_training`, the
# function `vlmlab-train` runs first; the first two also through the CLI (one line, exit 2, nothing started).
MISTAKES = {
    "stage-type": (
        ["curriculum.stages.instruct.max_steps=abc"],
        ["curriculum.stages.instruct.max_steps", "could not be converted to Integer", "takes int"],
    ),
    "resume": (["resume=outputs/nowhere"], ["resume=outputs/nowhere: no curriculum_state.json there"]),
    "trainer-key": (
        ["+trainer.max_steps=100"],
        ["trainer.max_steps has no effect", "curriculum.stages.<stage>.max_steps"],
    ),
    "data-type": (["data.max_length=long"], ["data.max_length", "takes int"]),
    "source-key": (["+data.sources.vqa.question_file=x"], ["data.sources.vqa has unknown field(s) ['question_file']"]),
    "connector-type": (["model.connector.depth=two"], ["model.connector.depth='two' is not of the type", "int"]),
    "encoder-key": (["+model.encoder.patch=8"], ["model.encoder.patch is not an option of", "model_name"]),
    "dot": (["model.llm=qwen2_5_0_5b_instruct"], ["write model/llm=NAME (with a slash)"]),
    "init": (["init_from=nowhere/stages/align"], ["init_from=nowhere/stages/align: no such file or folder"]),
}


@pytest.mark.parametrize(("mistake", "where"), [("stage-type", "process"), ("resume", "in-process")])
def test_config_mistakes_are_one_line_before_anything_starts(
    tmp_path: Path, synth_root: Path, in_process: InProcess, mistake: str, where: str
) -> None:
    overrides, fragments = MISTAKES[mistake]
    if where == "process":  # the installed script: its exit code and stderr as a shell sees them
        result = train(tmp_path, f"data.root={synth_root}", *overrides)
    else:
        command = [str(BIN / "vlmlab-train"), *TINY_OVERRIDES, f"data.root={synth_root}", *overrides]
        result = in_process(train_main, command, tmp_path)
    assert_usage_error(result, "vlmlab-train", *fragments)
    assert_nothing_started(tmp_path)
    assert "vlmlab.models.builder" not in result.stdout + result.stderr  # the model was not built


@pytest.mark.parametrize("mistake", MISTAKES)
def test_each_config_mistake_is_found_by_the_checks_before_training(
    compose_config: Callable[..., DictConfig], mistake: str
) -> None:
    overrides, fragments = MISTAKES[mistake]
    with pytest.raises(UsageError) as caught:
        check_before_training(compose_config(overrides))
    assert "\n" not in str(caught.value)
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)


def test_hydra_composition_errors_exit_with_the_usage_code(tmp_path: Path) -> None:
    result = run_command([str(BIN / "vlmlab-train"), "model/encoder=tiny_vitt"], tmp_path)
    assert result.returncode == USAGE_ERROR
    assert "Could not find 'model/encoder/tiny_vitt'" in result.stderr and "tiny_vit" in result.stderr
    assert_nothing_started(tmp_path)


def test_missing_data_is_found_before_the_model_is_built(tmp_path: Path, in_process: InProcess) -> None:
    command = [str(BIN / "vlmlab-train"), "data=vqav2", f"data.root={tmp_path / 'datasets'}"]
    result = in_process(train_main, command, tmp_path)  # an error of the class above: in this process
    assert_usage_error(
        result,
        "vlmlab-train",
        f"vqav2.train.questions={tmp_path / 'datasets'}/vqav2/v2_OpenEnded_mscoco_train2014_questions.json",
        f"Check data.root (now {tmp_path / 'datasets'})",
    )
    assert_nothing_started(tmp_path)


def test_models_from_the_hub_fail_within_seconds_offline(
    tmp_path: Path, synth_root: Path, in_process: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed_port = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}  # nothing listens there
    start = time.monotonic()
    mistake = train(tmp_path, f"data.root={synth_root}", "model.llm=qwen2_5_0_5b_instruct", env=closed_port, fast=False)
    start_up = time.monotonic() - start  # a mistake found before any download is tried: the start-up alone
    assert_usage_error(mistake, "vlmlab-train", "write model/llm=NAME (with a slash)")
    start = time.monotonic()
    result = train(tmp_path, f"data.root={synth_root}", "model/llm=qwen2_5_0_5b_instruct", env=closed_port, fast=False)
    # transformers' retries alone take ~45 s: the hub check adds seconds to the start-up, whatever the machine's load
    assert time.monotonic() - start < start_up + 30
    assert_usage_error(
        result,
        "vlmlab-train",
        "model.llm.pretrained=Qwen/Qwen2.5-0.5B-Instruct: this hub model is not in the local cache",
        "127.0.0.1:9 cannot be reached",
        "hf download Qwen/Qwen2.5-0.5B-Instruct --local-dir <folder>",
        "set model.llm.pretrained=<folder>",
    )
    # HF_HUB_OFFLINE=1 (huggingface_hub reads it into its constants when imported), an empty cache: in this process
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    offline = [str(BIN / "vlmlab-train"), f"data.root={synth_root}", "model/encoder=clip_vit_l14_336"]
    result = in_process(train_main, offline, tmp_path)
    assert_usage_error(
        result, "vlmlab-train", "model.encoder.pretrained=openai/clip-vit-large-patch14-336", "HF_HUB_OFFLINE"
    )
    # a local folder that is not there (no hub involved: in this process)
    local = [
        str(BIN / "vlmlab-train"),
        f"data.root={synth_root}",
        "model/llm=local",
        "model.llm.pretrained=/models/my-lm",
    ]
    result = in_process(train_main, local, tmp_path)
    assert_usage_error(result, "vlmlab-train", "model.llm.pretrained=/models/my-lm: no such folder")
    assert_nothing_started(tmp_path)


def test_eval_names_a_missing_checkpoint_and_missing_data(
    tmp_path: Path, synth_root: Path, in_process: InProcess
) -> None:
    """In this process (vlmlab-eval's process runs in tests/test_cli.py)."""
    evaluate = [str(BIN / "vlmlab-eval"), "data=synthetic", f"data.root={synth_root}"]
    result = in_process(eval_main, [*evaluate, "checkpoint=outputs/nowhere/stages/instruct"], tmp_path)
    assert_usage_error(result, "vlmlab-eval", "checkpoint=outputs/nowhere/stages/instruct: no such file or folder")
    missing_data = [*evaluate, "checkpoint=.", "data=docvqa", f"data.root={tmp_path}"]  # in this process
    result = in_process(eval_main, missing_data, tmp_path)
    assert_usage_error(result, "vlmlab-eval", "docvqa.test.annotations=", "Check data.root")
