"""A stage's metrics delivered to MLflow from a background thread, through a file in the stage's folder, so that
a training step never waits on the tracking server and no value is lost while the server is away.

Each step's metrics are appended to `metrics.jsonl` (a local write) and a sender thread posts what it has not
sent yet (`log_batch`, up to MLflow's 1,000 values a call), recording in `metrics.sent` how far it got. When the
server cannot be reached, MLflow's client retries for its own budget (`MLFLOW_HTTP_REQUEST_MAX_RETRIES`), then
the sender waits and tries again, for as long as the outage lasts: the file holds everything meanwhile, on disk,
not in memory. When its stage ends (`finish`), the sender delivers the rest and then marks the run ended; the
stage waits for that at most `timeout` seconds, and the thread goes on in the background while the process
lives. What a process could not deliver before it ended stays in the file and is sent by the next
`vlmlab-train resume=` of the run (`backfill`). A resumed stage reads the file to know which steps it has logged,
delivered or not.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric

log = logging.getLogger(__name__)

BATCH = 1000  # MLflow's limit of values in one log_batch call
MAX_WAIT = 30.0  # seconds between tries while the server is away, at most


class MetricSender:
    """Sends the metrics `put` into `spool` (a JSON line per step) to run `run_id` of `client` in the background."""

    def __init__(self, client: Any, run_id: str, spool: Path) -> None:
        self.client, self.run_id, self.spool = client, run_id, spool
        self.offset_file = spool.with_suffix(".sent")
        spool.parent.mkdir(parents=True, exist_ok=True)
        spool.touch()
        drop_cut_line(spool)
        self.sent = delivered_bytes(spool)
        self.wake = threading.Event()
        self.end_status: str | None = None  # the run's status once everything is delivered
        self.finishing = False  # `finish` was called: stop once everything is delivered
        self.done = threading.Event()  # delivered and, if asked, the run ended
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

    def finish(self, status: str | None, timeout: float) -> bool:
        """Deliver the rest, then mark the run `status` (None: leave it); wait for that at most `timeout` seconds.
        Whether it is done; if not, the thread goes on in the background."""
        self.end_status, self.finishing = status, True
        self.wake.set()
        done = self.done.wait(timeout)
        if not done:
            log.warning(
                "the tracking server has not taken the last metrics of run %s yet: they are kept in %s and sent as "
                "soon as it is back (by this process while it runs, then by vlmlab-train resume=<run>)",
                self.run_id,
                self.spool,
            )
        return done

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
            partial = self.offset_file.with_suffix(".sent.partial")  # a kill mid-write keeps the previous offset
            partial.write_text(str(end))
            os.replace(partial, self.offset_file)

    def _run(self) -> None:
        wait = 1.0
        while True:
            self.wake.wait(timeout=1.0)
            self.wake.clear()
            try:
                if self.pending() > 0:
                    self._send()
                if self.finishing and self.end_status is not None and self.pending() == 0:
                    self.client.set_terminated(self.run_id, status=self.end_status)
            except Exception as err:  # unreachable, timed out, failing: keep the values, try again later
                if self.unreachable_since is None:
                    self.unreachable_since = time.monotonic()
                    log.warning("tracking server unreachable (%s); metrics kept in %s till it is back", err, self.spool)
                time.sleep(wait)
                wait = min(wait * 2, MAX_WAIT)
                continue
            if self.unreachable_since is not None:
                away = time.monotonic() - self.unreachable_since
                log.warning("tracking server back after %.0f s: the kept metrics are sent", away)
                self.unreachable_since = None
            wait = 1.0
            if self.finishing and self.pending() == 0:
                self.done.set()
                return


def drop_cut_line(spool: Path) -> None:
    """Remove a last line that a killed process left half written (the lines after it would join it)."""
    with open(spool, "rb+") as file:
        data = file.read()
        if data and not data.endswith(b"\n"):
            file.truncate(data.rfind(b"\n") + 1)


def delivered_bytes(spool: Path) -> int:
    """How much of a metrics file its senders have delivered (`metrics.sent`; 0 when none yet)."""
    sent = spool.with_suffix(".sent")
    return int(sent.read_text()) if sent.is_file() else 0


def backfill(client: Any, run_id: str, spool: Path) -> MetricSender:
    """A sender for what an ended process left undelivered in a finished stage's `spool`; it then marks the run
    finished."""
    sender = MetricSender(client, run_id, spool)
    sender.end_status, sender.finishing = "FINISHED", True
    sender.wake.set()
    return sender
