"""`vlmlab-train`: compose the config, check it, run the curriculum, return the optimised metric."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from vlmlab.config import config_dir, validate_config
from vlmlab.training.curriculum import run_curriculum
from vlmlab.training.stage import stage_specs

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> float | None:
    """Everything `vlmlab-train` does after Hydra composed `cfg`; returns `cfg.optimized_metric`'s value."""
    validate_config(cfg)
    stage_specs(cfg)  # every stage is checked before any weight loads
    metrics = run_curriculum(cfg)
    if cfg.get("optimized_metric"):
        if cfg.optimized_metric not in metrics:
            raise KeyError(f"optimized_metric '{cfg.optimized_metric}' was not produced; available: {sorted(metrics)}")
        return metrics[cfg.optimized_metric]
    return None


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    main()
