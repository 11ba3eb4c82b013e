"""What a stage hands MLflow besides Lightning's metrics: the data it trains on (a dataset input per source and
split of its mixture) and, when `logger.register_model` asks, its model (a vlmlab model folder of its saved
weights, logged and registered by the tracker)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vlmlab.data.datamodule import VLMDataModule
from vlmlab.data.formats import split_origin
from vlmlab.models.weights import WEIGHTS_FILE, describe_model_folder
from vlmlab.tracking.datasets import DataSplit, data_split
from vlmlab.tracking.tracker import RunTracker

log = logging.getLogger(__name__)

MODEL_FOLDER = "vlmlab_model"  # the logged model's data folder (data/vlmlab_model in its artifacts)


def data_splits(datamodule: VLMDataModule, wanted: list[tuple[str, str]]) -> list[DataSplit]:
    """The (source, split) pairs `wanted`, each with its origin, record count and digest."""
    datamodule.prepare_data()  # synthetic data is written on first use
    return [
        data_split(name, split, split_origin(name, datamodule.sources[name], split), datamodule.records(name, split))
        for name, split in wanted
    ]


def stage_data_splits(datamodule: VLMDataModule) -> list[DataSplit]:
    """The train split of each source the stage's mixture samples from, and the val split of each that has one
    (what its validation reads)."""
    wanted = []
    for name, weight in datamodule.mixture.items():
        wanted += [(name, "train")] if weight > 0 else []
        wanted += [(name, "val")] if datamodule.sources[name].get("val") else []
    return data_splits(datamodule, wanted)


def log_stage_model(
    cfg: DictConfig, tracker: RunTracker, stage: str, run_id: str, stage_dir: Path, step: int, last_stage: bool
) -> None:
    """Log the stage's saved weights and tokenizer, with the model description of this run, as its MLflow model.
    The folder handed to MLflow links the stage's files rather than copying them (MLflow copies them once)."""
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary) / MODEL_FOLDER
        folder.mkdir()
        (folder / WEIGHTS_FILE).symlink_to((stage_dir / WEIGHTS_FILE).resolve())
        (folder / "tokenizer").symlink_to((stage_dir / "tokenizer").resolve(), target_is_directory=True)
        anyres = OmegaConf.select(cfg, "data.anyres")
        describe_model_folder(
            folder,
            OmegaConf.to_container(cfg.model, resolve=True),
            cfg.data.image_resize,
            OmegaConf.to_container(anyres, resolve=True) if isinstance(anyres, DictConfig) else anyres,
        )
        logged = tracker.log_model(run_id, folder, stage, step, last_stage)
    where = f"registered as {logged.registered_name} version {logged.version}" if logged.version else logged.uri
    log.info("stage '%s': model logged to MLflow, %s", stage, where)
