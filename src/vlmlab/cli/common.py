"""What the commands that use a trained model share: loading it as the command line says, the device."""

from __future__ import annotations

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from vlmlab.config import validate_model_config
from vlmlab.inference.loading import LoadedModel, load_model
from vlmlab.models.trust import searchpath_targets


def model_choices_given() -> bool:
    """Whether the command line chose or changed any model/* group (so that it must not be ignored)."""
    return any(o.lstrip("+~").startswith("model") for o in HydraConfig.get().overrides.task)


def device(name: str) -> str:
    """`auto` is cuda when there is one, else cpu."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def mlflow_uri(cfg: DictConfig) -> str | None:
    """The MLflow store a `checkpoint=models:/...` is looked up in: the command's `mlflow_uri`, else its
    `paths.mlflow_uri`, else None (MLflow's default: $MLFLOW_TRACKING_URI, or sqlite:///mlflow.db here)."""
    return cfg.get("mlflow_uri") or OmegaConf.select(cfg, "paths.mlflow_uri", default=None)


def trusted_targets(cfg: DictConfig) -> list[str]:
    """What the command line vouches for: `trusted_targets` and the `_target_`s of the configs in the folders its
    `hydra.searchpath` names (the user's own plug-ins)."""
    return [*(cfg.get("trusted_targets") or []), *searchpath_targets(HydraConfig.get().searchpath)]


def load_from_command_line(cfg: DictConfig) -> LoadedModel:
    """The model `cfg.checkpoint` names (a folder, a file or a models:/ URI), built from its own saved config or
    the command's model/* groups."""
    if cfg.model_source == "groups":
        validate_model_config(cfg)
    loaded = load_model(
        cfg.checkpoint,
        cfg.model,
        model_source=cfg.model_source,
        image_resize=cfg.image_resize,
        model_choices_given=model_choices_given(),
        chat_template=cfg.get("chat_template"),
        tracking_uri=mlflow_uri(cfg),
        trusted_targets=trusted_targets(cfg),
    )
    loaded.model.to(device(cfg.device))
    return loaded
