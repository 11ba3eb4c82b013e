"""What can be checked of docker/ without a Docker engine: the MLflow server's flags (run for real, answering
the Host header the trainer sends), the build context, and the commit recorded without git in the image."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import requests
import yaml

from tests.cli_in_process import BIN
from vlmlab.testing import free_port
from vlmlab.tracking.mlflow_runs import COMMIT_ENV, git_commit

REPO = Path(__file__).resolve().parents[1]


def compose_file() -> dict:
    return yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())


def test_the_compose_mlflow_server_answers_the_trainer(tmp_path: Path) -> None:
    services = compose_file()["services"]
    trainer_uri = next(a for a in services["trainer"]["entrypoint"] if a.startswith("paths.mlflow_uri="))
    trainer_host = urlparse(trainer_uri.split("=", 1)[1]).netloc  # mlflow:5000, the Host header it sends
    port = free_port()
    flags = []
    for arg in services["mlflow"]["entrypoint"][2:]:  # after `mlflow server`: the compose file's own flags
        if arg.startswith("--backend-store-uri="):
            arg = f"--backend-store-uri=sqlite:///{tmp_path / 'mlflow.db'}"  # PostgreSQL stands in the compose file
        elif arg.startswith("--artifacts-destination="):
            arg = f"--artifacts-destination={tmp_path / 'artifacts'}"
        elif arg.startswith("--host="):
            arg = "--host=127.0.0.1"
        elif arg.startswith("--port="):
            arg = f"--port={port}"
        flags.append(arg)
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", *flags, "--workers=1"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the server and the workers it starts form one process group, stopped together
    )
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"
        deadline = time.monotonic() + 180
        while True:
            try:
                answer = requests.get(url, headers={"Host": trainer_host}, timeout=30)
                break
            except (requests.ConnectionError, requests.Timeout):  # still starting (its database is created first)
                assert server.poll() is None and time.monotonic() < deadline, "the MLflow server did not start"
                time.sleep(1)
        assert answer.status_code == 200, answer.text  # the trainer's Host header is allowed
        for host in (f"localhost:{5000}", f"127.0.0.1:{5000}"):  # a browser on the host, through the port mapping
            assert requests.get(url, headers={"Host": host}, timeout=30).status_code == 200
        assert requests.get(url, headers={"Host": "attacker.example:5000"}, timeout=30).status_code == 403
        # The service's healthcheck, as Docker runs it in the container (there the server listens on 5000)
        kind, *check = services["mlflow"]["healthcheck"]["test"]
        assert kind == "CMD" and check[0] == "python"  # the image has Python, no curl or wget
        check = [sys.executable, *(a.replace("localhost:5000", f"localhost:{port}") for a in check[1:])]
        assert subprocess.run(check, timeout=60).returncode == 0
    finally:
        stop(server)
    assert subprocess.run(check, capture_output=True, timeout=60).returncode != 0  # unhealthy once it is gone


def test_the_trainer_waits_for_a_healthy_tracking_server() -> None:
    services = compose_file()["services"]
    assert services["trainer"]["depends_on"] == {"mlflow": {"condition": "service_healthy"}}
    assert services["mlflow"]["depends_on"] == {"db": {"condition": "service_healthy"}}
    for name in ("db", "mlflow"):
        assert services[name]["healthcheck"]["test"], name


def test_the_trainers_run_folder_is_git_ignored() -> None:
    """`../runs:/runs` (the trainer's working directory) is the repository's runs/, which git leaves alone."""
    mounts = [v.split(":") for v in compose_file()["services"]["trainer"]["volumes"]]
    (host,) = [h for h, container, *_ in mounts if container == "/runs"]
    folder = ((REPO / "docker" / host).resolve().relative_to(REPO)).as_posix()
    rules = {line.strip() for line in (REPO / ".gitignore").read_text().splitlines()}
    assert rules & {f"/{folder}/", f"{folder}/", f"/{folder}"}, f"{folder}/ is not in .gitignore"


def stop(server: subprocess.Popen) -> None:
    """Stop the server and the workers it started (its process group)."""
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(server.pid, signal.SIGKILL)  # workers that outlived it
    except ProcessLookupError:
        pass
    server.wait()


def test_the_build_context_holds_only_what_the_image_copies() -> None:
    rules = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    rules = [r for r in rules if r and not r.startswith("#")]
    assert rules[0] == "*"  # everything is left out ...
    included = {r.removeprefix("!").rstrip("/") for r in rules if r.startswith("!")}
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    copied = {part for line in dockerfile.splitlines() if line.startswith("COPY ") for part in line.split()[1:-1]}
    assert copied == included  # ... but what the Dockerfile copies (so not the .venv, data, outputs)
    assert "apt-get" not in dockerfile  # no git (nor anything else) installed besides the Python packages
    assert f"ENV {COMMIT_ENV}=" in dockerfile


def test_the_commit_comes_from_the_environment_in_the_image(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # not a checkout, like the image's /runs
    assert git_commit() is None
    monkeypatch.setenv(COMMIT_ENV, "0123abc")
    assert git_commit() == "0123abc"
