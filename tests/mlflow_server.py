"""`mlflow server` on a store, started by a test in the background (and stopped, and started again on the same
port, as a server that goes away and comes back)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.cli_in_process import BIN
from vlmlab.testing import free_port


class Server:
    """`mlflow server` on the store, started in the background; `url` waits until it answers."""

    def __init__(self, store: str, log: Path) -> None:
        self.port = free_port()
        self.store, self.log = store, log
        self.start()

    def start(self) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner process: starts faster
        command = [str(BIN / "mlflow"), "server", "--backend-store-uri", self.store, "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--workers", "1"],
            stdout=self.log.open("a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped with its workers
            env=env,
        )

    @property
    def url(self) -> str:
        base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    return base
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"mlflow server did not answer in 120 s: {self.log.read_text()[-3000:]}")

    def get(self, path: str, **query: str) -> dict[str, Any]:
        request = f"{self.url}{path}?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
