"""What a stage hands MLflow besides Lightning's metrics: the data it trains on (a dataset input per source and
split of its mixture)."""

from __future__ import annotations

from vlmlab.data.datamodule import VLMDataModule
from vlmlab.data.formats import split_origin
from vlmlab.tracking.datasets import DataSplit, data_split


def stage_data_splits(datamodule: VLMDataModule) -> list[DataSplit]:
    """The train split of each source the stage's mixture samples from, and the val split of each that has one
    (what its validation reads)."""
    datamodule.prepare_data()  # synthetic data is written on first use
    splits = []
    for name, weight in datamodule.mixture.items():
        source = datamodule.sources[name]
        for split in ("train", "val"):
            if (split == "train" and weight > 0) or (split == "val" and source.get("val")):
                origin = split_origin(name, source, split)
                splits.append(data_split(name, split, origin, datamodule.records(name, split)))
    return splits
