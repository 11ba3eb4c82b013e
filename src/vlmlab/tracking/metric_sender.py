"""A stage's metrics delivered to MLflow from a background thread, through a file in the stage's folder, so that
a training step never waits on the tracking server and no value is lost while the server is away.

Each step's metrics are appended to `metrics.jsonl` (a local write) and a sender thread posts what it has not
sent yet (`log_batch`, up to MLflow's 1,000 values a call), recording in `metrics.sent` how far it got. When the
server cannot be reached, MLflow's client retries for its own budget (`MLFLOW_HTTP_REQUEST_MAX_RETRIES`), then
the sender waits and tries again, for as long as the outage lasts: the file holds everything meanwhile, on disk,
not in memory. A stage that ends while the server is still away waits `flush_timeout` seconds for it, then goes
on; what is left is sent by the same stage's sender when the run is resumed. A resumed stage reads the file to
know which steps it has logged, delivered or not.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

BATCH = 1000  # MLflow's limit of values in one log_batch call
MAX_WAIT = 30.0  # seconds between tries while the server is away, at most


class MetricSender:
    """Sends the metrics `put` into `spool` (a JSON line per step) to run `run_id` in the background."""

    def __init__(self, client: MlflowClient, run_id: str, spool: Path) -> None:
        self.client, self.run_id, self.spool = client, run_id, spool
        self.offset_file = spool.with_suffix(".sent")
        spool.parent.mkdir(parents=True, exist_ok=True)
        spool.touch()
        self.sent = int(self.offset_file.read_text()) if self.offset_file.is_file() else 0
        self.wake = threading.Event()
        self.stopping = False
        self.unreachable_since: float | None = None
        self.thread = threading.Thread(target=self._run, name=f"mlflow-metrics-{run_id[:8]}", daemon=True)
        self.thread.start()

    def logged_steps(self) -> dict[str, int]:
        """The last step of each metric in the file: what this stage has logged, whether delivered yet or not."""
        last: dict[str, int] = {}
        for metrics, _ in self._lines(0):
            for metric in metrics:
                last[metric.key] = max(last.get(metric.key, -1), metric.step)
        return last

    def put(self, metrics: Iterable[Metric]) -> None:
        line = json.dumps([[m.key, m.value, m.timestamp, m.step] for m in metrics]) + "\n"
        with open(self.spool, "a") as file:
            file.write(line)
        self.wake.set()

    def pending(self) -> int:
        """Bytes of the file not delivered yet."""
        return self.spool.stat().st_size - self.sent

    def close(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for every value to be delivered, then stop sending; whether they were (the
        rest stays in the file, for a resumed stage's sender)."""
        deadline = time.monotonic() + timeout
        while self.pending() > 0 and time.monotonic() < deadline:
            self.wake.set()
            time.sleep(0.05)
        self.stopping = True
        self.wake.set()
        delivered = self.pending() == 0
        if not delivered:
            log.warning(
                "the tracking server did not take the last metrics of run %s in time: they are kept in %s and sent "
                "when this stage is resumed (vlmlab-train resume=<run>)",
                self.run_id,
                self.spool,
            )
        return delivered

    def _lines(self, start: int) -> list[tuple[list[Metric], int]]:
        """The whole lines of the file from byte offset `start`: each line's metrics and the offset after it."""
        with open(self.spool, "rb") as file:
            file.seek(start)
            data = file.read()
        lines, offset = [], start
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):  # a line still being written
                break
            offset += len(line)
            lines.append(([Metric(k, v, t, s) for k, v, t, s in json.loads(line)], offset))
        return lines

    def _send(self) -> None:
        """Post the lines not sent yet, a batch of at most `BATCH` values at a time, recording each batch sent."""
        lines = self._lines(self.sent)
        while lines:
            batch, end = [], self.sent
            while lines and (not batch or len(batch) + len(lines[0][0]) <= BATCH):
                metrics, end = lines.pop(0)
                batch += metrics
            self.client.log_batch(self.run_id, metrics=batch)
            self.sent = end
            self.offset_file.write_text(str(end))

    def _run(self) -> None:
        wait = 1.0
        while not self.stopping:
            self.wake.wait(timeout=1.0)
            self.wake.clear()
            if self.pending() <= 0:
                continue
            try:
                self._send()
            except Exception as err:  # unreachable, timed out, failing: keep the values, try again later
                if self.unreachable_since is None:
                    self.unreachable_since = time.monotonic()
                    log.warning(
                        "tracking server unreachable (%s); metrics kept in %s until it returns", err, self.spool
                    )
                if self.stopping:
                    return
                time.sleep(wait)
                wait = min(wait * 2, MAX_WAIT)
                continue
            if self.unreachable_since is not None:
                away = time.monotonic() - self.unreachable_since
                log.warning("tracking server back after %.0f s: the kept metrics are sent", away)
                self.unreachable_since = None
            wait = 1.0
