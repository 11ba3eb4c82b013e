"""A tracking server that goes away mid-run, for longer than its client's retry budget: training goes on at its
own pace (its steps are logged to the stage's metrics file meanwhile), the next stage's start waits for the server
instead of ending the run, and once the server is back the run ends with its full history in MLflow, every step
once."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.cli_in_process import BIN, with_tests_importable
from tests.mlflow_server import Server
from vlmlab.testing import TINY_OVERRIDES
from vlmlab.tracking.store import tracking_client

pytestmark = pytest.mark.slow  # long end-to-end runs: started first (tests/conftest.py)

ALIGN, INSTRUCT = 10, 6  # optimizer steps of each stage
OUTAGE = 6.0  # seconds the server is away: past the client's retry budget set below (about 2 s)


def spooled_steps(spool: Path, key: str) -> list[int]:
    return sorted(step for line in spool.read_text().splitlines() for k, _, _, step in json.loads(line) if k == key)


def test_training_goes_on_through_a_tracking_server_outage(tmp_path: Path, synth_root: Path) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking_client(store)
    server = Server(store, tmp_path / "server.log")
    slow = ["+callbacks.slow._target_=tests.scripts.slow_steps.SleepAfterEachBatch", "+callbacks.slow.seconds=0.3"]
    command = [str(BIN / "vlmlab-train"), *TINY_OVERRIDES, f"data.root={synth_root}", f"paths.mlflow_uri={server.url}"]
    for stage, steps in (("align", ALIGN), ("instruct", INSTRUCT)):
        command += [
            f"curriculum.stages.{stage}.max_steps={steps}",
            f"curriculum.stages.{stage}.val_check_interval={steps}",
        ]
    command += ["logger.flush_timeout=1"]  # the stage's end does not wait long for the server
    command += ["~callbacks.generation_validation", "eval.enabled=false", "experiment_name=outage", "hydra.run.dir=run"]
    env = with_tests_importable()
    env |= {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    env |= {"MLFLOW_HTTP_REQUEST_TIMEOUT": "1"}
    training = subprocess.Popen(
        [*command, *slow], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    spool = tmp_path / "run" / "stages" / "align" / "metrics.jsonl"
    try:
        while (not spool.exists() or len(spool.read_text().splitlines()) < 2) and training.poll() is None:
            time.sleep(0.2)  # the align stage is logging
        server.stop()
        before = len(spool.read_text().splitlines())
        time.sleep(OUTAGE)
        during = len(spool.read_text().splitlines()) - before
        assert training.poll() is None, training.communicate()[0][-3000:]  # the outage did not end the run
        server.start()
        output, _ = training.communicate(timeout=600)
    finally:
        server.stop()
    assert training.returncode == 0, output[-3000:]
    assert during >= 3  # steps went on while the server was away (0.3 s a step here)
    assert "tracking server unreachable" in output and "tracking server back after" in output

    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("outage").experiment_id
    runs = {r.data.tags.get("stage"): r for r in client.search_runs([experiment])}
    for stage, steps in (("align", ALIGN), ("instruct", INSTRUCT)):
        assert runs[stage].info.status == "FINISHED"
        history = sorted(m.step for m in client.get_metric_history(runs[stage].info.run_id, "train/loss"))
        spooled = spooled_steps(tmp_path / "run" / "stages" / stage / "metrics.jsonl", "train/loss")
        assert history == spooled == list(range(steps)), stage  # each step once, none lost
    assert "tracking server unreachable while calling MLflow's" in output  # the instruct stage's start waited
