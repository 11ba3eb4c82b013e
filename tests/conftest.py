"""Shared fixtures: a tiny synthetic dataset, a locally trained tokenizer, tiny models, composed configs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from transformers import PreTrainedTokenizerFast

from vlmlab.data.synthetic import SynthConfig, tokenizer_corpus, write_synthetic_dataset
from vlmlab.models.llms.tiny_tokenizer import train_tiny_tokenizer
from vlmlab.presets import config_dir

TINY_SYNTH = SynthConfig.demo(seed=0, image_size=48, num_train=48, num_val=8, num_test=8, train_turns=2)

# Shrinks the default (demo-sized) run to seconds: a narrow one-layer LLM, 48px data, a few steps per stage.
FAST_OVERRIDES = [
    "model.llm.config.hidden_size=32",
    "model.llm.config.intermediate_size=64",
    "model.llm.config.num_hidden_layers=1",
    "model.llm.tokenizer.vocab_size=300",
    "model.llm.tokenizer.corpus.num_samples=200",
    "data.num_workers=0",
    "data.eval_batch_size=8",
    f"data.synthetic.image_size={TINY_SYNTH.image_size}",
    f"data.synthetic.num_train={TINY_SYNTH.num_train}",
    f"data.synthetic.num_val={TINY_SYNTH.num_val}",
    f"data.synthetic.num_test={TINY_SYNTH.num_test}",
    f"data.synthetic.train_turns={TINY_SYNTH.train_turns}",
    "curriculum.stages.align.max_steps=3",
    "curriculum.stages.align.batch_size=8",
    "curriculum.stages.align.micro_batch_size=8",
    "curriculum.stages.align.val_check_interval=3",
    "curriculum.stages.instruct.max_steps=3",
    "curriculum.stages.instruct.batch_size=8",
    "curriculum.stages.instruct.micro_batch_size=4",
    "curriculum.stages.instruct.val_check_interval=3",
    "eval.max_new_tokens=4",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
    "~callbacks.progress_bar",
]
MODEL_OVERRIDES = [o for o in FAST_OVERRIDES if o.startswith("model.")]
# With experiment=demo (FAST_OVERRIDES too): its encoder-pretraining stage and text tower, shrunk likewise.
DEMO_PRETRAIN_OVERRIDES = [
    "curriculum.stages.pretrain.max_steps=3",
    "curriculum.stages.pretrain.batch_size=8",
    "curriculum.stages.pretrain.micro_batch_size=8",
    "curriculum.stages.pretrain.val_check_interval=3",
    "model.text_tower.config.hidden_size=32",
    "model.text_tower.config.intermediate_size=64",
    "model.text_tower.config.num_hidden_layers=1",
]


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
    from tests.demo_run import train_demo_run  # it imports FAST_OVERRIDES from here

    return train_demo_run(tmp_path_factory.mktemp("demo"), synth_root)


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite store for the session (creating one takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def compose_config(tmp_path: Path, synth_root: Path, mlflow_uri: str) -> Callable[..., DictConfig]:
    """Compose conf/train.yaml as `vlmlab-train` would, with paths in temp folders."""

    def _compose(overrides: list[str] = (), fast: bool = True) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(
                "train",
                overrides=[
                    *(FAST_OVERRIDES if fast else []),
                    f"paths.root_dir={tmp_path}",
                    f"paths.output_dir={tmp_path / 'run'}",
                    f"paths.mlflow_uri={mlflow_uri}",
                    f"paths.mlflow_artifacts={tmp_path / 'artifacts'}",
                    f"data.root={synth_root}",
                    *overrides,
                ],
            )
        return cfg

    return _compose
