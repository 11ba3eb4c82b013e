"""Names that tell runs apart: a curriculum's parent run is named by its experiment (or curriculum) and the
command-line overrides that change it, e.g. `demo_quick · connector=linear seed=3`, in MLflow and in
`vlmlab-report` alike."""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

# Overrides that change where a run is written, logged or reads its files from, not what it trains.
NOT_NAMED = (
    "hydra.",
    "paths.",
    "data.root=",
    "resume=",
    "run_name=",
    "experiment_name=",
    "experiment=",
    "logger",
    "callbacks",
)
MAX_NAME_LENGTH = 250  # MLflow's limit for a run name


def short_override(override: str) -> str:
    """`model/connector=linear` -> `connector=linear`, `curriculum.stages.instruct.max_steps=9` ->
    `instruct.max_steps=9`, `~model/text_tower` -> `~text_tower`."""
    removed = override.startswith("~")
    key, _, value = override.lstrip("+~").partition("=")
    key = key.rsplit("/", 1)[-1] if "/" in key else ".".join(key.split(".")[-2:])
    return f"~{key}" if removed else f"{key}={value}"


def derived_run_name(head: str, overrides: Sequence[str]) -> str:
    """`head · override override ...`; past MLflow's limit, overrides in the middle give way to `…` (the last
    ones, a sweep's, stay)."""
    named = [short_override(o) for o in overrides if not o.lstrip("+~").startswith(NOT_NAMED)]
    name = " · ".join([head, " ".join(named)] if named else [head])
    keep = len(named) // 2
    while len(name) > MAX_NAME_LENGTH and keep > 0:  # the first and the last `keep` overrides, `…` between
        name = f"{head} · {' '.join(named[:keep])} … {' '.join(named[-keep:])}"
        keep -= 1
    return name[:MAX_NAME_LENGTH]


def name_run(cfg: DictConfig) -> str:
    """Set `cfg.run_name` when it is null: the experiment chosen (else the curriculum's name) and what the
    command line overrode (nothing outside a Hydra command). Returns the name."""
    if cfg.get("run_name"):
        return cfg.run_name
    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    experiment = hydra.runtime.choices.get("experiment") if hydra is not None else None
    overrides = list(hydra.overrides.task) if hydra is not None else []
    with open_dict(cfg):
        cfg.run_name = derived_run_name(experiment or cfg.curriculum.name, overrides)
    return cfg.run_name
