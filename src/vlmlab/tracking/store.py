"""Opening an MLflow tracking store so that processes starting together do not corrupt a new one.

MLflow creates a sqlite store's tables by running its schema migrations on first use; two processes doing that at
once on the same new file fail ("duplicate column name", "Online migration expected to match one row": seen
with MLflow 3.17 for every one of four processes started together). `tracking_client` runs that first use under
an exclusive lock on a file beside the database, so that the first process creates the store and the others
find it made.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

from mlflow.tracking import MlflowClient

SQLITE = "sqlite:///"


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///<path>` tracking URI (relative, or absolute with a fourth slash)."""
    return Path(uri.removeprefix(SQLITE)) if uri.startswith(SQLITE) else None


def tracking_client(uri: str) -> MlflowClient:
    """A client of the store at `uri`, the store created (a sqlite one under a file lock) before it returns."""
    database = sqlite_file(uri)
    if database is None:
        return MlflowClient(uri)
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(f"{database.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)  # creates the tables, or finds them
    return client
