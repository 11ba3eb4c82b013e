"""Where vlmlab's config folder is, and the values of one preset file in it: the YAML files under conf/
are the only place a default is written (the dataclasses that check configs hold types, not values)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def config_dir() -> Path:
    """`conf/` of a source checkout (editable install), or the copy packaged inside the wheel."""
    packaged = Path(__file__).parent / "conf"
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "conf"
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"vlmlab's config folder was found neither at {packaged} nor at {checkout}")


def preset_values(path: str, node: str | None = None) -> DictConfig:
    """The values written in `conf/<path>.yaml` (its `defaults` list not applied), or those under its key `node`:
    the defaults that a config composed by Hydra would hold, for code that builds an object without Hydra."""
    values = OmegaConf.load(config_dir() / f"{path}.yaml")
    values.pop("defaults", None)
    return values if node is None else values[node]
