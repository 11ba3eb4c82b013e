"""Locating the config folder and checking a composed config before any weight is loaded."""

from __future__ import annotations

from dataclasses import fields
from typing import get_args

from omegaconf import DictConfig, OmegaConf

from vlmlab.data.conversation_dataset import BadRecordPolicy
from vlmlab.data.formats import split_spec
from vlmlab.data.image_processing import ResizeMode
from vlmlab.data.schema import DataSchema, SourceSchema
from vlmlab.data.shards import read_from_shards
from vlmlab.data.tiling import tiling_from_options
from vlmlab.errors import UsageError, check_types
from vlmlab.eval.metrics import METRICS
from vlmlab.presets import config_dir

MODEL_GROUPS = ("encoder", "connector", "llm")


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def validate_model_config(cfg: DictConfig) -> None:
    """Each model part is a component config, not the string a `model.part=NAME` typo leaves."""
    for part in MODEL_GROUPS:
        node = cfg.model.get(part)
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise UsageError(
                f"model.{part} is {node!r}, not a component config. To choose a preset write "
                f"model/{part}=NAME (with a slash); `model.{part}=NAME` replaces the whole node with a string. "
                f"Presets: {', '.join(group_options(f'model/{part}'))}"
            )


def validate_config(cfg: DictConfig) -> None:
    """Catch what Hydra itself accepts but cannot work, with the fix in the message."""
    validate_model_config(cfg)
    missing = sorted(key for group in ("model", "data") for key in OmegaConf.missing_keys(cfg[group]))
    if missing:
        raise UsageError(f"{', '.join(missing)} must be set (??? in the preset), e.g. {missing[0]}=...")
    check_types(cfg.data, DataSchema, "data")
    unset = [f.name for f in fields(DataSchema) if f.name not in cfg.data and f.name not in ("root", "mixtures")]
    if unset:
        raise UsageError(
            f"data does not set {', '.join(unset)}: a data preset starts from the loading options, "
            "`- loading@_here_: default` in its defaults list (conf/data/loading/default.yaml)"
        )
    read_from_shards(cfg)
    sources = cfg.data.get("sources")
    if not sources:
        raise UsageError("data.sources is empty: choose a data preset (data=synthetic) or add sources")
    for name, source in sources.items():
        check_types(source, SourceSchema, f"data.sources.{name}")
        if "task" not in source or "train" not in source:
            raise UsageError(f"data source '{name}' needs at least 'task' and 'train' (see conf/data/source/)")
        for split in ("train", "val", "test"):
            split_spec(name, source, split)
        unknown = [m for m in source.get("metrics") or [] if m not in METRICS]
        if unknown:
            raise UsageError(f"data source '{name}' names unknown metric(s) {unknown}; vlmlab has {', '.join(METRICS)}")
    for mixture, weights in (cfg.data.get("mixtures") or {}).items():
        if not weights:
            raise UsageError(f"data.mixtures.{mixture} is empty; give it at least one source: weight")
        for source, weight in weights.items():
            if source not in sources:
                raise UsageError(
                    f"data.mixtures.{mixture} names source '{source}'; the data config has {', '.join(sources)}"
                )
            if weight <= 0:
                raise UsageError(f"data.mixtures.{mixture}.{source} must be > 0, got {weight}")
    for key, choices in (("on_bad_record", get_args(BadRecordPolicy)), ("image_resize", get_args(ResizeMode))):
        if cfg.data[key] not in choices:
            raise UsageError(f"data.{key}={cfg.data[key]!r} is not one of {', '.join(choices)}")
    if cfg.data.image_resize == "anyres":
        try:
            tiling_from_options(cfg.data.get("anyres"), tile=1)
        except (ValueError, TypeError) as err:
            raise UsageError(str(err)) from err
