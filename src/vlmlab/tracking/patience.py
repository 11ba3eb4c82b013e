"""Tracking calls that wait out a tracking server that cannot be reached, instead of ending the run.

A run's per-step metrics never wait (`vlmlab.tracking.metric_sender`); the few calls a run cannot go on without
(creating a stage's run, logging its config, datasets and model, the final scores) go through `PatientClient` or
`patiently`: when the server cannot be reached (a refused or timed-out connection, after MLflow's own retries),
they wait and try again, with a warning every time the wait grows, for as long as the outage lasts. Any other
error (a bad request, a missing run) is raised at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import requests

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_WAIT = 60.0  # seconds between tries, at most

UNREACHABLE = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.RetryError,
    ConnectionError,
    TimeoutError,
)


def is_unreachable(err: BaseException) -> bool:
    """Whether `err` (or what it was raised from or while handling) says the server could not be reached."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, UNREACHABLE):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def patiently(call: Callable[..., T], what: str, *args: Any, **kwargs: Any) -> T:
    """`call(*args, **kwargs)`, tried again while the tracking server cannot be reached."""
    wait = 2.0
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as err:
            if not is_unreachable(err):
                raise
            log.warning("tracking server unreachable while %s; trying again in %.0f s", what, wait)
            time.sleep(wait)
            wait = min(wait * 2, MAX_WAIT)


class PatientClient:
    """An `MlflowClient` whose calls wait out an unreachable server (`patiently`)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.client, name)
        if not callable(attribute):
            return attribute
        return lambda *args, **kwargs: patiently(attribute, f"calling MLflow's {name}", *args, **kwargs)
