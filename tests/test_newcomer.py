"""What a newcomer meets first: commands printed so that they run as printed."""

from __future__ import annotations

import io
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tests.cli_in_process import BIN, InProcess, one_line, run_main
from vlmlab.cli.chat import main as chat_main
from vlmlab.cli.entry import invocation
from vlmlab.cli.evaluate import main as eval_main
from vlmlab.cli.export import main as export_main
from vlmlab.cli.generate import main as generate_main
from vlmlab.cli.next_steps import HEADER
from vlmlab.cli.train import main as train_main
from vlmlab.errors import USAGE_EXIT_CODE
from vlmlab.eval.scoring import print_results
from vlmlab.models.builder import build_connector
from vlmlab.models.connectors import Connector, MLPConnector
from vlmlab.testing import TINY_DEMO_PRETRAIN, TINY_OVERRIDES, free_port
from vlmlab.training.run_naming import derived_run_name

pytestmark = pytest.mark.slow  # long end-to-end runs: started first (tests/conftest.py)


def test_printed_commands_start_the_script_as_this_one_was_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "project" / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("vlmlab-train", "vlmlab-eval"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(bin_dir / "vlmlab-train")])
    monkeypatch.setenv("PATH", "/usr/bin")
    monkeypatch.chdir(tmp_path / "project")
    assert invocation("vlmlab-eval") == ".venv/bin/vlmlab-eval"  # below the working directory: relative
    monkeypatch.chdir(tmp_path)
    assert invocation("vlmlab-eval") == "project/.venv/bin/vlmlab-eval"
    monkeypatch.chdir("/")
    assert invocation("vlmlab-eval") == str(bin_dir / "vlmlab-eval")  # elsewhere: the whole path
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin")
    assert invocation("vlmlab-eval") == "vlmlab-eval"  # what the shell finds by that name
    monkeypatch.setattr(sys, "argv", ["/somewhere/vlmlab/cli/train.py"])  # python -m (torchrun)
    assert invocation("vlmlab-eval") == "vlmlab-eval"


@pytest.mark.parametrize(
    ("command", "main", "override", "expected"),
    [
        ("vlmlab-train", train_main, "curriculum.stages.instruct.max_step=100", "curriculum.stages.instruct.max_steps"),
        ("vlmlab-generate", generate_main, "max_new_token=8", "max_new_tokens"),
    ],
)
def test_a_mistyped_field_is_answered_with_the_closest_one_at_once(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    command: str,
    main: Callable[[], object],
    override: str,
    expected: str,
) -> None:
    code, stderr = run_main(main, command, [override], tmp_path, monkeypatch, capsys)
    assert code == USAGE_EXIT_CODE
    line = one_line(stderr, command)
    key = override.partition("=")[0]
    parent = key.rpartition(".")[0] or "the config"
    assert f"{key} is not a field of {parent}: did you mean {expected}?" in line, line
    assert f"+{key}=" in line  # how a new field is added, after the suggestion
    assert not list(tmp_path.iterdir())  # nothing composed further, nothing written


# demo_quick's model and stages at the tests' size, with its own loader workers (the demo's default, not the tests' 0)
TINY_DEMO = [o for o in [*TINY_OVERRIDES, *TINY_DEMO_PRETRAIN] if not o.startswith("data.num_workers=")]


@pytest.fixture(scope="module")
def demo_quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A fresh folder where `vlmlab-train experiment=demo_quick` ran (at the tests' size), and its stdout lines."""
    workdir = tmp_path_factory.mktemp("newcomer")
    command = [str(BIN / "vlmlab-train"), "experiment=demo_quick", *TINY_DEMO]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result.stdout.splitlines()


def printed_next_steps(stdout: list[str]) -> dict[str, list[str]]:
    """The commands of the block that ends a run, by the script they start."""
    lines = stdout[stdout.index(HEADER) + 1 :]
    commands = [shlex.split(line) for line in lines if line.startswith("  ") and not line.startswith("  #")]
    return {Path(command[0]).name: command for command in commands}


def test_a_run_prints_its_folder_and_the_next_commands_which_run_as_printed(
    demo_quick: tuple[Path, list[str]], in_process: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The printed commands in this process (their own processes are started in tests/test_cli.py,
    tests/test_generate.py and tests/test_export.py), but `mlflow ui`, MLflow's."""
    workdir, stdout = demo_quick
    (started,) = [line for line in stdout if line.startswith("vlmlab-train: run folder ")]
    run_dir = workdir / started.removeprefix("vlmlab-train: run folder ")
    assert run_dir.parent.parent == workdir / "outputs" and (run_dir / "test_metrics.json").is_file()
    steps = printed_next_steps(stdout)
    assert set(steps) == {"vlmlab-eval", "vlmlab-generate", "vlmlab-chat", "vlmlab-export", "mlflow"}
    stage = f"checkpoint={run_dir.relative_to(workdir)}/stages/instruct"  # as copied from the same folder
    assert all(stage in command for name, command in steps.items() if name != "mlflow")
    assert steps["vlmlab-eval"][0] == str(BIN / "vlmlab-eval")  # the scripts as this one was started

    # vlmlab-eval with no other argument scores what the run scored, from the files the run used
    data_before = sorted(p.relative_to(workdir) for p in (workdir / "data").rglob("*"))
    evaluated = in_process(eval_main, steps["vlmlab-eval"], workdir)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert sorted(p.relative_to(workdir) for p in (workdir / "data").rglob("*")) == data_before  # nothing new
    out = Path(evaluated.stdout.strip().splitlines()[-1].removeprefix("metrics and predictions in "))
    run_scores, scores = (
        json.loads((d / name).read_text()) for d, name in ((run_dir, "test_metrics.json"), (out, "metrics.json"))
    )
    assert scores.keys() == run_scores.keys() and len(scores) > 10
    assert all(abs(scores[k] - run_scores[k]) <= 1e-6 for k in scores), (scores, run_scores)
    for predictions in (run_dir / "predictions").glob("*_scores.jsonl"):  # the same answers, as many tokens
        assert (out / "predictions" / predictions.name).read_text() == predictions.read_text()

    generated = in_process(generate_main, steps["vlmlab-generate"], workdir)
    assert generated.returncode == 0 and generated.stdout.strip(), generated.stderr[-3000:]
    image = next(a for a in steps["vlmlab-generate"] if a.startswith("image=")).removeprefix("image=")
    assert image.startswith("data/synthetic_quick/") and "/test/" in image  # one of the run's own test images
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))  # a pipe: answers only
    chat = in_process(chat_main, steps["vlmlab-chat"], workdir)
    assert chat.returncode == 0 and chat.stdout.strip(), chat.stderr[-3000:]
    assert steps["vlmlab-export"][-1] == "format=vlmlab"  # the demo's timm encoder has no Hugging Face counterpart
    exported = in_process(export_main, steps["vlmlab-export"], workdir)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (
        workdir
        / next(a for a in steps["vlmlab-export"] if a.startswith("output=")).removeprefix("output=")
        / "model.yaml"
    ).is_file()

    # `mlflow ui` as printed (on a free port instead of 5000: tests run side by side) serves the run it names
    link = next(line for line in stdout if "start its UI, then open " in line).split("then open ")[1]
    run_id = link.split("/runs/")[1].split("?")[0]
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    ui = subprocess.Popen(
        [*steps["mlflow"], "--port", str(port), "--workers", "1"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    try:
        answer = wait_for_json(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/get?run_id={run_id}", ui)
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=60)
    assert answer["run"]["info"]["run_name"].startswith("demo_quick · ")  # named by what the command changed


def wait_for_json(url: str, server: subprocess.Popen, timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            assert server.poll() is None, "the MLflow UI stopped"
            assert time.monotonic() < deadline, f"the MLflow UI did not answer {url}"
            time.sleep(1)


def test_runs_are_named_by_what_their_command_line_changed() -> None:
    overrides = [
        "model/connector=linear",
        "curriculum.stages.instruct.max_steps=9",
        "~model/text_tower",
        "data.root=/datasets",
        "hydra.run.dir=x",
        "logger.flush_timeout=3",
        "+callbacks.kill._target_=x",
        "resume=true",
    ]
    name = derived_run_name("demo_quick", overrides)
    assert name == "demo_quick · connector=linear instruct.max_steps=9 ~text_tower"  # not where things are
    many = [f"model.llm.config.option_{i}=123456" for i in range(30)]
    long = derived_run_name("demo_quick", [*many, "model/connector=linear"])
    assert len(long) <= 250 and " … " in long and long.endswith("connector=linear")  # a sweep's own, last, kept
    assert derived_run_name("demo_quick", ["seed=1"]) != derived_run_name("demo_quick", ["seed=2"])
    assert derived_run_name("llava", []) == "llava"


def test_tables_keep_their_width_when_the_output_is_not_a_terminal(capsys: pytest.CaptureFixture) -> None:
    sources = {"a_source_named_at_length": ["vqa_accuracy", "exact_match"], "another_source_of_tasks": ["anls"]}
    metrics = {f"test/{s}/{m}": 0.5 for s, names in sources.items() for m in names}
    metrics |= {f"test/{s}/blind_{m}": 0.25 for s, names in sources.items() for m in names}
    print_results(metrics, sources)  # stdout is captured here: a pipe, as `vlmlab-eval ... > file`
    table = capsys.readouterr().out
    assert "…" not in table and "a_source_named_at_length" in table and "blind baseline" in table, table


def test_a_connector_that_leaves_patches_out_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    class StridedPool(Connector):  # the README's plug-in example: every `stride` patches averaged
        def __init__(self, in_dim: int, out_dim: int, num_in_tokens: int, stride: int = 4) -> None:
            super().__init__(in_dim, out_dim, num_in_tokens)
            self.stride, self.proj = stride, nn.Linear(in_dim, out_dim)

        @property
        def num_out_tokens(self) -> int:
            return self.num_in_tokens // self.stride

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            b, _, d = features.shape
            return self.proj(features[:, : self.num_out_tokens * self.stride].reshape(b, -1, self.stride, d).mean(2))

    encoder = SimpleNamespace(output_dim=8, num_patches=9)
    llm = SimpleNamespace(hidden_size=16)
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="vlmlab.models.builder"):
        build_connector(StridedPool, encoder, llm)  # 9 patches, stride 4: patch 8 is left out
    assert "uses 8 of the encoder's 9 patches: patch(es) 8 never reach its output" in caplog.text
    after_check = torch.rand(4)
    torch.manual_seed(0)
    StridedPool(8, 16, 9)
    assert torch.equal(torch.rand(4), after_check)  # the check leaves the random stream as building left it
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vlmlab.models.builder"):
        build_connector(StridedPool, SimpleNamespace(output_dim=8, num_patches=8), llm)
        build_connector(partial(MLPConnector, depth=2), encoder, llm)
    assert "patches" not in caplog.text
