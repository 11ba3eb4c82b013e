"""Hydra multirun: a grid sweep gives one tagged MLflow run per point; an Optuna search runs its trials."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.cli_in_process import BIN, InProcess
from vlmlab.cli.evaluate import main as eval_main
from vlmlab.testing import TINY_OVERRIDES
from vlmlab.tracking.report import collect, report_figure

pytestmark = pytest.mark.slow  # long end-to-end runs: started first (tests/conftest.py)

QUICK = [*TINY_OVERRIDES, "eval.enabled=false", "~callbacks.generation_validation", "~callbacks.checkpoint"]


def multirun(workdir: Path, synth_root: Path, *overrides: str) -> None:
    command = [str(BIN / "vlmlab-train"), "-m", *QUICK, f"data.root={synth_root}", "hydra.sweep.dir=sweep", *overrides]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def curriculum_runs(workdir: Path, experiment: str) -> list:
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return [r for r in runs if r.data.tags.get("kind") == "curriculum"]


def test_a_two_point_grid_sweep_gives_two_runs_with_the_sweep_tag_and_a_report(
    tmp_path: Path, synth_root: Path, in_process: InProcess
) -> None:
    scored = ["eval.enabled=true", "eval.limit=4", "data.eval_batch_size=4"]  # test scores for the report
    throughput = [
        "+callbacks.throughput._target_=lightning.pytorch.callbacks.ThroughputMonitor",
        "+callbacks.throughput.window_size=2",
        "+callbacks.throughput.batch_size_fn={_target_: vlmlab.training.throughput.batch_size, _partial_: true}",
        "+callbacks.throughput.length_fn={_target_: vlmlab.training.throughput.tokens, _partial_: true}",
    ]
    multirun(tmp_path, synth_root, "experiment_name=grid", *scored, *throughput, "model/connector=linear,mlp2x_gelu")
    runs = curriculum_runs(tmp_path, "grid")
    assert len(runs) == 2
    assert {r.data.tags["sweep"] for r in runs} == {"sweep"}
    assert sorted(r.data.tags["sweep.overrides"].split()[-1] for r in runs) == [
        "model/connector=linear",
        "model/connector=mlp2x_gelu",
    ]
    assert sorted(r.data.tags["sweep.job"] for r in runs) == ["0", "1"]
    assert {r.data.params["model.connector._target_"] for r in runs} == {
        "vlmlab.models.connectors.LinearConnector",
        "vlmlab.models.connectors.MLPConnector",
    }

    # vlmlab-report: a table row per run, a PNG, both logged to an MLflow report run.
    report = subprocess.run(
        [str(BIN / "vlmlab-report"), "--experiment=grid", "--sweep=sweep", "--out=report"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    table = (tmp_path / "report" / "report.md").read_text().splitlines()
    assert table[0].startswith("| run | caption/bleu_1 |") and "vqa/vqa_accuracy" in table[0]
    assert "model/params/connector | model/image_tokens | tokens_per_sec |" in table[0]
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in table[2:] if line.startswith("|")}
    # named as the runs are in MLflow, less the overrides both share
    assert {r.info.run_name.partition(" · ")[0] for r in runs} == {"llava"}
    assert {r.info.run_name.split()[-1] for r in runs} == {"connector=linear", "connector=mlp2x_gelu"}
    assert set(rows) == {"llava · connector=linear", "llava · connector=mlp2x_gelu"}
    assert " | 9 | " in rows["llava · connector=linear"]  # 9 image tokens
    score = rows["llava · connector=linear"].split(" | ")[1]  # each score beside its blind baseline
    assert re.fullmatch(r"\d\.\d{3} \(\d\.\d{3}\)", score), score
    assert (tmp_path / "report" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows_ = collect(  # the plot: runs told apart, baselines beside scores, loss curves, axes that show the data
        MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), "grid", "sweep"
    )
    figure = report_figure(rows_)
    *score_panels, loss_panel = figure.axes
    steps = [list(line.get_xdata()) for line in loss_panel.get_lines()]  # a curve per run over both stages
    assert steps == [[1, 2, 3, 4, 5, 6]] * 2 or steps == [[0, 1, 2, 2, 3, 4]] * 2, steps
    for panel, key in zip(score_panels, sorted(rows_[0].scores)):
        values = [r.scores[key] for r in rows_] + [r.blind[key] for r in rows_]
        assert len(panel.patches) == 4  # each run's score and, beside it, its blind baseline
        assert panel.get_ylim() == (0.0, 1.0) if max(values) == 0 else panel.get_ylim()[1] > max(values)
    legend = [text.get_text().replace("\n", " ") for text in figure.legends[0].get_texts()]
    assert legend == [*(r.label for r in rows_), "blind baseline (hatched)"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("grid").experiment_id
    (report_run,) = client.search_runs([experiment], "tags.kind = 'report'")
    assert {a.path for a in client.list_artifacts(report_run.info.run_id)} == {"report.md", "report.png"}

    # vlmlab-eval on a sweep point whose connector is not the default: the stage folder says which model it is
    command = [str(BIN / "vlmlab-eval"), "checkpoint=sweep/0/stages/instruct"]  # its data: the run's
    command += ["sources=[vqa]", "limit=2", "max_new_tokens=2", "blind=false", "track=false", "hydra.run.dir=eval"]
    evaluated = in_process(eval_main, command, tmp_path)  # its process: tests/test_cli.py
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "test/vqa/vqa_accuracy" in json.loads((tmp_path / "eval" / "metrics.json").read_text())


def test_an_optuna_search_of_two_trials_optimises_the_configured_metric(tmp_path: Path, synth_root: Path) -> None:
    multirun(tmp_path, synth_root, "experiment_name=search", "hparams_search=optuna_lr", "hydra.sweeper.n_trials=2")
    runs = curriculum_runs(tmp_path, "search")
    assert len(runs) == 2
    lrs = {r.data.params["curriculum.stages.instruct.lr.llm"] for r in runs}
    assert len(lrs) == 2  # two sampled points
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert best["name"] == "optuna" and set(best["best_params"]) == {
        "curriculum.stages.instruct.lr.connector",
        "curriculum.stages.instruct.lr.llm",
    }
    assert 0 < best["best_value"] < 10  # the instruct stage's validation loss
