"""The stage runs in MLflow (a real sqlite store): a kill between creating a stage's run and recording its id
leaves no second run; a continued run does not log a step twice."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from tests.tiny_models import tiny_vlm
from vlmlab.errors import UsageError
from vlmlab.tracking.metric_sender import MetricSender
from vlmlab.tracking.mlflow_runs import CurriculumTracker
from vlmlab.tracking.tracker import RunTracker
from vlmlab.training.curriculum import start_tracking


def test_a_stage_run_created_before_a_kill_is_continued_not_duplicated(tmp_path: Path, mlflow_uri: str) -> None:
    tracker = CurriculumTracker(mlflow_uri, "orphans", "run", str(tmp_path / "artifacts"))
    stage_dir = tmp_path / "stages" / "instruct"
    first = tracker.stage_logger("instruct", init_from=None, stage_dir=stage_dir)
    first.log_metrics({"train/loss": 2.0}, step=0)
    first.log_metrics({"train/loss": 1.5, "epoch": 0.0}, step=1)
    first.log_metrics({"epoch": 0.0, "val/loss": 1.4}, step=1)  # Lightning sends `epoch` again when validating
    first.sender.finish(None, timeout=60)  # what it sent before it was killed
    # killed here: the run record never named first.run_id; the resumed curriculum asks again
    resumed = CurriculumTracker(mlflow_uri, "orphans", "run", None, parent_run_id=tracker.parent_run_id)
    again = resumed.stage_logger("instruct", init_from=None, stage_dir=stage_dir)
    assert again.run_id == first.run_id
    again.log_metrics({"train/loss": 1.5}, step=1)  # recomputed after the resume: already in the history
    again.log_metrics({"train/loss": 1.2}, step=2)
    again.finalize("success")  # delivers, then ends the run
    client = MlflowClient(mlflow_uri)
    history = [(m.step, m.value) for m in client.get_metric_history(first.run_id, "train/loss")]
    assert sorted(history) == [(0, 2.0), (1, 1.5), (2, 1.2)]
    assert [m.step for m in client.get_metric_history(first.run_id, "epoch")] == [1]
    children = client.search_runs(
        [tracker.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{tracker.parent_run_id}'"
    )
    assert [r.info.run_id for r in children] == [first.run_id]
    align = resumed.stage_logger("align", init_from=None, stage_dir=tmp_path / "stages" / "align")
    assert align.run_id != first.run_id  # another stage: its own run


def test_a_metrics_file_left_by_a_killed_process_is_sent_whole(tmp_path: Path, mlflow_uri: str) -> None:
    """A kill mid-append leaves a half-written last line, one mid-save an offset file being replaced: the next
    sender drops the half line and sends the rest once, from the last offset saved."""
    client = MlflowClient(mlflow_uri)
    run_id = client.create_run(client.create_experiment("killed-sender")).info.run_id
    spool = tmp_path / "metrics.jsonl"
    first = MetricSender(client, run_id, spool)
    first.put([Metric("train/loss", 2.0, 0, 0)])
    assert first.finish(None, timeout=60)  # delivered, the run left running
    spool.open("a").write('[["train/loss", 1.5, 0, 1]]\n[["train/loss", 1.')  # step 1 logged, step 2 cut off
    spool.with_suffix(".sent.partial").write_text("")  # an offset save that never finished
    again = MetricSender(client, run_id, spool)
    assert again.logged_steps() == {"train/loss": 1}
    again.put([Metric("train/loss", 1.2, 0, 2)])
    assert again.finish("FINISHED", timeout=60)
    assert sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")) == [
        (0, 2.0),
        (1, 1.5),
        (2, 1.2),
    ]
    assert client.get_run(run_id).info.status == "FINISHED"


def test_the_tracker_is_a_run_tracker_and_a_class_that_is_not_is_named(
    tmp_path: Path, mlflow_uri: str, tokenizer
) -> None:
    """`logger._target_` may name another tracker class: one lacking what the curriculum calls is refused at the
    run's start, with the members it lacks."""
    cfg = OmegaConf.create(
        {"run_name": "r", "logger": {"_target_": "vlmlab.tracking.mlflow_runs.CurriculumTracker",
         "tracking_uri": mlflow_uri, "experiment_name": "e", "run_name": "r", "artifact_location": str(tmp_path / "a")}}
    )  # fmt: skip
    tracker = start_tracking(cfg, tiny_vlm(tokenizer), {"stages": {}}, tmp_path)
    assert isinstance(tracker, RunTracker) and isinstance(tracker, CurriculumTracker)
    tracker.finish()
    cfg.logger = {"_target_": "types.SimpleNamespace", "experiment_name": "e", "parent_run_id": None}
    with pytest.raises(UsageError, match="types.SimpleNamespace is not a tracker: it lacks run_link, log_config, "):
        start_tracking(cfg, tiny_vlm(tokenizer), {"stages": {}}, tmp_path)
