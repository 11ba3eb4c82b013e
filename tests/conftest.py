"""Shared fixtures: a tiny synthetic dataset, a locally trained tokenizer, tiny models, composed configs."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig
from transformers import PreTrainedTokenizerFast

from tests.cli_in_process import InProcess, run_in_process
from vlmlab.data.synthetic import tokenizer_corpus, write_synthetic_dataset
from vlmlab.models.llms.tiny_tokenizer import train_tiny_tokenizer
from vlmlab.testing import TINY_OVERRIDES, TINY_SYNTH, compose_train

MODEL_OVERRIDES = [o for o in TINY_OVERRIDES if o.startswith("model.")]


def share_the_cores_among_the_workers() -> None:
    """Under pytest-xdist, each worker (and every command it starts) gets its share of the CPUs for torch's
    threads, not all of them: two workers each running two spinning OpenMP threads on two cores slow each other."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # for the commands it starts
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


share_the_cores_among_the_workers()


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, TINY_SYNTH)
    return root


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return train_tiny_tokenizer(tokenizer_corpus(num_samples=200), vocab_size=300)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory, synth_root: Path) -> Path:
    """A tiny demo curriculum trained once through `vlmlab-train` (see tests/demo_run.py); read-only for tests."""
    from tests.demo_run import train_demo_run

    return train_demo_run(tmp_path_factory.mktemp("demo"), synth_root)


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite store for the session (creating one takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def compose_config(tmp_path: Path, synth_root: Path, mlflow_uri: str) -> Callable[..., DictConfig]:
    """Compose conf/train.yaml as `vlmlab-train` would, with paths in temp folders."""

    def _compose(overrides: list[str] = (), fast: bool = True) -> DictConfig:
        return compose_train(
            [
                *(TINY_OVERRIDES if fast else []),
                f"paths.root_dir={tmp_path}",
                f"paths.output_dir={tmp_path / 'run'}",
                f"paths.mlflow_uri={mlflow_uri}",
                f"paths.mlflow_artifacts={tmp_path / 'artifacts'}",
                f"data.root={synth_root}",
                *overrides,
            ]
        )

    return _compose


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> InProcess:
    """`in_process(main, [script, *args], cwd)`: the command run in this process (`run_in_process`)."""
    return partial(run_in_process, monkeypatch=monkeypatch, capsys=capsys)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The `slow` tests first. `make test` hands whole files to its workers (pytest-xdist's loadfile), in this order:
    started first, the long end-to-end files run beside each other and the short ones fill in at the end, instead of
    one long file running alone after the others are done. The order within a file is kept."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
