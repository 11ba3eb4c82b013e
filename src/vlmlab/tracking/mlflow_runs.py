"""MLflow runs of a curriculum: a parent run, one child run per stage (its Lightning logger, `StageLogger`).

Every run carries the resolved config (as flattened params and as `config.yaml`), the git commit
and, for a stage, its name, the data it trained on (dataset inputs) and, when configured, its model
(logged and registered, `tracking.registry`). The store is whatever `tracking_uri` says (by default the
sqlite file `mlflow.db` in the working directory, which `mlflow ui` opens). The experiment is marked as a
model-training experiment, for the UI.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import Logger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from vlmlab.errors import UsageError
from vlmlab.tracking.datasets import DataSplit, log_datasets
from vlmlab.tracking.metric_sender import MetricSender, backfill, delivered_bytes
from vlmlab.tracking.patience import PatientClient, patiently
from vlmlab.tracking.registry import REGISTER_CHOICES, LoggedVersion, add_model_output, log_model
from vlmlab.tracking.store import tracking_client

MAX_PARAM_LENGTH = 250  # MLflow's limit for a param value
# MLflow's experiment-kind tag and its value for a model-training ("Machine learning") experiment, as the UI's kind
# selector writes them. MLflow 3.17's UI opens experiments in the view of its own GenAI / Model training switch
# (kept by the browser; `?workflowType=machine_learning` in the address sets it), whatever the tag: `run_link`.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store


COMMIT_ENV = "VLMLAB_GIT_COMMIT"  # set in the Docker image at build time (it holds no .git and no git)

log = logging.getLogger(__name__)
METRICS_SPOOL = "metrics.jsonl"  # a stage's metrics, as they are sent to its MLflow run


def git_commit(directory: str | Path = ".") -> str | None:
    """The commit of the code that runs: $VLMLAB_GIT_COMMIT when set, else `git rev-parse HEAD` in
    `directory` (None outside a checkout or without git)."""
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def flatten_config(cfg: DictConfig) -> dict[str, str]:
    """`a.b.c` -> value strings, cut to MLflow's 250 characters (the YAML artifact keeps the full text)."""
    flat: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix.rstrip(".")] = str(node)[:MAX_PARAM_LENGTH]

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def log_config(client: MlflowClient, run_id: str, cfg: DictConfig) -> None:
    """The resolved config as flattened params and as the artifact `config.yaml`."""
    items = list(flatten_config(cfg).items())
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=[Param(k, v) for k, v in items[start : start + 100]])
    client.log_text(run_id, OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")


def sweep_tags() -> dict[str, str]:
    """Tags that group the runs of one Hydra multirun (`vlmlab-train -m ...`): the sweep folder, the
    job's number and its overrides. Empty for a single run."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return {}
    hydra = HydraConfig.get()
    overrides = " ".join(hydra.overrides.task)
    return {"sweep": hydra.sweep.dir, "sweep.job": str(hydra.job.num), "sweep.overrides": overrides}


def experiment_id(client: MlflowClient, tracking_uri: str, name: str, artifact_location: str | None) -> str:
    """The id of experiment `name`, created when missing, and marked as a model-training experiment unless it
    has a kind already (one a user chose in the UI stays). A tracking server (http/https) stores the
    artifacts of the experiments it creates itself: `artifact_location` applies to local stores only."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        remote = tracking_uri.startswith(("http://", "https://"))
        new_id = client.create_experiment(name, artifact_location=None if remote else artifact_location)
        client.set_experiment_tag(new_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
        return new_id
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return experiment.experiment_id


def check_registration(register_model: str | None, registered_model_name: str | None) -> None:
    """`logger.register_model` is null, final or every_stage, and names a registered model when set."""
    if register_model is not None and register_model not in REGISTER_CHOICES:
        raise UsageError(f"logger.register_model={register_model!r} is not one of null, {', '.join(REGISTER_CHOICES)}")
    if register_model is not None and not registered_model_name:
        raise UsageError(
            f"logger.register_model={register_model} needs logger.registered_model_name: the Model Registry name"
        )


def undelivered(stage_dir: Path) -> bool:
    """Whether a stage's metrics file holds values its sender has not delivered (an ended process left them)."""
    spool = stage_dir / METRICS_SPOOL
    return spool.is_file() and spool.stat().st_size > delivered_bytes(spool)


class StageLogger(Logger):
    """A stage's MLflow run as Lightning's logger, logging each step once, never waiting on the server.

    Metrics go through a `MetricSender` (`spool`: a file in the stage's folder, sent in the background), so a
    training step never waits on the tracking server and an outage of any length loses nothing; the run is
    marked ended once they are delivered (or `flush_timeout` seconds have passed: the rest is sent on resume).
    Other calls go through the tracker's `PatientClient` (`experiment`), which waits out an outage.
    A resumed stage recomputes the steps between its last checkpoint and the kill, and MLflow cannot delete
    logged values: the steps the stage has logged already (per metric, in its spool; in the run's history for a
    stage logged before spools) are not logged again. With an exact resume the recomputed values equal the
    logged ones. Steps are logged in increasing order, so a value for a step at or before the last one logged is
    dropped.
    """

    def __init__(
        self, client: PatientClient, run_id: str, experiment_name: str, spool: Path, flush_timeout: float = 120.0
    ) -> None:
        super().__init__()
        self.client, self.run_id, self.experiment_name = client, run_id, experiment_name
        self.spool, self.flush_timeout = spool, flush_timeout
        self.logged_up_to: dict[str, int] = {}  # metric -> last step logged
        self._sender: MetricSender | None = None

    @property
    def name(self) -> str:
        return self.experiment_name

    @property
    def version(self) -> str:
        return self.run_id

    @property
    @rank_zero_experiment
    def experiment(self) -> PatientClient:
        return self.client

    @property
    def sender(self) -> MetricSender:
        if self._sender is None:
            self._sender = MetricSender(self.client.client, self.run_id, self.spool)
        return self._sender

    def skip_logged_steps(self) -> None:
        """Read which steps the (continued) stage has logged already."""
        self.logged_up_to = self.sender.logged_steps()
        if not self.logged_up_to:  # a stage logged before spools existed: its run's history says
            for key in self.client.get_run(self.run_id).data.metrics:
                self.logged_up_to[key] = max(m.step for m in self.client.get_metric_history(self.run_id, key))

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Lightning's hyper-parameters (vlmlab logs its whole config on the run instead, `log_config`)."""
        values = [Param(str(k), str(v)[:6000]) for k, v in dict(params or {}).items()]
        if values:
            self.client.log_batch(self.run_id, params=values)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if step is not None:  # (Lightning also sends `epoch` twice at a step that validates: kept once)
            metrics = {k: v for k, v in metrics.items() if step > self.logged_up_to.get(k, -1)}
            self.logged_up_to.update(dict.fromkeys(metrics, step))
        now = int(time.time() * 1000)
        values = [  # the characters MLflow allows in a metric's name
            Metric(re.sub(r"[^a-zA-Z0-9_/. -]+", "", key), float(value), now, step or 0)
            for key, value in metrics.items()
            if not isinstance(value, str)
        ]
        if values:
            self.sender.put(values)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Deliver the stage's metrics, then mark its run ended; a server still away delays the stage's end by
        `flush_timeout` seconds at most, and never ends the run (the sender goes on in the background)."""
        ended = {"success": "FINISHED", "finished": "FINISHED", "failed": "FAILED"}.get(status, status)
        self.sender.finish(ended, self.flush_timeout)


class CurriculumTracker:
    """Creates the parent run, hands out stage loggers, logs the stages' data and models, and logs final metrics on
    the parent."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str,
        run_name: str,
        artifact_location: str | None,
        parent_run_id: str | None = None,
        register_model: str | None = None,
        registered_model_name: str | None = None,
        flush_timeout: float = 120.0,
    ) -> None:
        """`parent_run_id`: continue that run (a resumed curriculum) instead of creating one. `register_model`:
        log and register the last stage's model (`final`), each stage's (`every_stage`), or none (None), under
        `registered_model_name`. `flush_timeout`: seconds a stage's end waits for its metrics to reach the server."""
        self.flush_timeout = flush_timeout
        self.senders: list[MetricSender] = []  # the stages' metric senders, waited for at the end
        check_registration(register_model, registered_model_name)
        self.register_model = register_model
        self.registered_model_name = registered_model_name
        self.final_model: LoggedVersion | None = None  # the last stage's logged model, once logged
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.client = PatientClient(tracking_client(tracking_uri))
        self.experiment_id = experiment_id(self.client, tracking_uri, experiment_name, artifact_location)
        self.artifact_location = artifact_location
        self.commit = git_commit()
        if parent_run_id is not None:
            self.parent_run_id = parent_run_id
            self.client.update_run(parent_run_id, status="RUNNING")
            return
        tags = {"mlflow.runName": run_name, "kind": "curriculum", **sweep_tags()}
        if self.commit:
            tags["mlflow.source.git.commit"] = self.commit
        self.parent_run_id = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags).info.run_id

    def log_config(self, run_id: str, cfg: DictConfig) -> None:
        log_config(self.client, run_id, cfg)

    def run_link(self) -> str:
        """The parent run's page in the MLflow UI (the server's, or `mlflow ui`'s on a local store), in the UI's
        model training view."""
        run = f"experiments/{self.experiment_id}/runs/{self.parent_run_id}"
        return f"{self.ui_address()}/#/{run}?workflowType=machine_learning"

    def ui_address(self) -> str:
        """The server's address, or the one `mlflow ui` serves a local store at."""
        remote = self.tracking_uri.startswith(("http://", "https://"))
        return self.tracking_uri.rstrip("/") if remote else UI_ADDRESS

    def log_model_facts(self, parts: dict[str, torch.nn.Module], image_tokens: int) -> None:
        """Parameter count per part (`model/params/<part>`) and image tokens per image, for comparisons."""
        for part, module in parts.items():
            self.client.log_metric(
                self.parent_run_id, f"model/params/{part}", sum(p.numel() for p in module.parameters())
            )
        self.client.log_metric(self.parent_run_id, "model/image_tokens", image_tokens)

    def stage_logger(
        self, stage: str, init_from: str | None, stage_dir: Path, run_id: str | None = None
    ) -> StageLogger:
        """The stage's child run, its metrics sent through `<stage_dir>/metrics.jsonl` (`MetricSender`). An existing
        one continues (a resumed stage): the run `run_id`, or the parent's child run of this stage that a run killed
        before recording its id left behind."""
        run_id = run_id or self._existing_stage_run(stage)
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
        else:
            tags = {"mlflow.parentRunId": self.parent_run_id, "stage": stage, "init_from": init_from or "config"}
            tags |= sweep_tags()
            if self.commit:
                tags["mlflow.source.git.commit"] = self.commit
            run_id = self.client.create_run(self.experiment_id, run_name=stage, tags=tags).info.run_id
        logger = StageLogger(self.client, run_id, self.experiment_name, stage_dir / METRICS_SPOOL, self.flush_timeout)
        logger.skip_logged_steps()
        self.senders.append(logger.sender)
        return logger

    def backfill(self, stage_dir: Path, run_id: str) -> None:
        """Send what an ended process left undelivered of a finished stage's metrics, in the background."""
        sender = backfill(self.client.client, run_id, stage_dir / METRICS_SPOOL) if undelivered(stage_dir) else None
        if sender is not None:
            log.info("sending the metrics of stage run %s that an earlier process could not deliver", run_id)
            self.senders.append(sender)

    def _existing_stage_run(self, stage: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' AND tags.stage = '{stage}'",
        )
        return runs[0].info.run_id if runs else None

    def log_datasets(self, run_id: str, splits: list[DataSplit]) -> None:
        """The splits as dataset inputs of a stage's run and of the parent run, whose row in the UI so shows all the
        data of the curriculum (the test splits are logged on it alone)."""
        log_datasets(self.client, run_id, splits)
        if run_id != self.parent_run_id:
            log_datasets(self.client, self.parent_run_id, splits)

    def logs_model(self, last_stage: bool) -> bool:
        """Whether a stage's model is logged: every stage's, or the last one's, as `register_model` says."""
        return self.register_model == "every_stage" or (self.register_model == "final" and last_stage)

    def log_model(self, run_id: str, folder: Path, stage: str, step: int, last_stage: bool) -> LoggedVersion:
        """Log the stage's model folder to its run, registered under `registered_model_name` (a version tagged with
        the stage and the curriculum's run), with the stage run's metrics linked. The last stage's model is also an
        output of the parent run, and the test metrics logged after it are linked to it."""
        tags = {"stage": stage, "curriculum_run_id": self.parent_run_id}
        logged = patiently(
            log_model, f"logging the {stage} stage's model", self.tracking_uri, run_id, folder,
            self.registered_model_name, step, tags,
        )  # fmt: skip
        if last_stage:
            self.final_model = logged
            add_model_output(self.client, self.parent_run_id, logged.model_id, step)
        return logged

    def log_metrics(self, metrics: dict[str, float]) -> None:
        """Metrics of the parent run (test scores), linked to the final model when one was logged."""
        model_id = self.final_model.model_id if self.final_model else None
        for key, value in metrics.items():
            self.client.log_metric(self.parent_run_id, key, value, model_id=model_id)

    def log_artifact(self, path: str | Path) -> None:
        self.client.log_artifact(self.parent_run_id, str(path))

    def finish(self, status: str = "FINISHED") -> None:
        """Wait (`flush_timeout` at most) for the stages' metrics still on their way, then mark the curriculum's run
        ended; a server away at the very end leaves it RUNNING, with a warning."""
        deadline = time.monotonic() + self.flush_timeout
        for sender in self.senders:
            sender.done.wait(max(0.0, deadline - time.monotonic()))
        try:
            self.client.client.set_terminated(self.parent_run_id, status=status)
        except Exception as err:
            log.warning("could not mark MLflow run %s ended (%s)", self.parent_run_id, err)


def log_evaluation_run(cfg: DictConfig, metrics: dict[str, float], artifacts: list[Path], tags: dict[str, str]) -> str:
    """One MLflow run for a `vlmlab-eval` call: config params and `config.yaml`, metrics, the files
    written (metrics and predictions) and the git commit. Returns the run id."""
    client = tracking_client(cfg.paths.mlflow_uri)
    eval_experiment = experiment_id(client, cfg.paths.mlflow_uri, cfg.experiment_name, cfg.paths.mlflow_artifacts)
    all_tags = {"mlflow.runName": cfg.run_name, "kind": "evaluation", **tags}
    commit = git_commit()
    if commit:
        all_tags["mlflow.source.git.commit"] = commit
    run_id = client.create_run(eval_experiment, run_name=cfg.run_name, tags=all_tags).info.run_id
    log_config(client, run_id, cfg)
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    for path in artifacts:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    return run_id
