"""Weights I/O: saving a model's weights, loading saved weights into a model built from config (with an
error that says what does not match), and gathering a sharded model's full weights.

A checkpoint is a stage's `model.safetensors` (or the stage folder holding it), or a Lightning
checkpoint: a `.ckpt` file, or the folder a sharded strategy (FSDP, FSDP2) writes, which is gathered
into one state dict here, in a single process. A vlmlab model folder is `model.safetensors`, `tokenizer/` and
`model.yaml`, the description that builds the model again (`describe_model_folder`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_model, save_model
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from vlmlab.models.sharded_checkpoint import read_sharded_checkpoint

WEIGHTS_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "model.yaml"  # a vlmlab model folder's description: {model: ..., image_resize: ..., anyres: ...}
SHOWN = 5  # mismatching names listed in the error
FIX = "Use the model/* choices and overrides of the run that wrote it (see its .hydra/config.yaml)."


def is_sharded_checkpoint(path: Path) -> bool:
    """A folder written by torch.distributed.checkpoint (Lightning's sharded FSDP / FSDP2 checkpoints)."""
    return (path / ".metadata").is_file()


def weights_path(checkpoint: str | Path) -> Path:
    """`model.safetensors` itself, the stage folder (`<run>/stages/<stage>`) that holds it, or a
    Lightning checkpoint (a `.ckpt` file or a sharded checkpoint folder)."""
    path = Path(checkpoint)
    if is_sharded_checkpoint(path):
        return path
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}: give a {WEIGHTS_FILE} or a stage folder holding one, "
            "e.g. outputs/<date>/<time>/stages/instruct"
        )
    return path


def saved_tokenizer(weights: Path) -> Path | None:
    """The tokenizer a stage trained with (its ids, its `<image>` token, its chat template): the
    `tokenizer/` folder beside the weights, or beside the `checkpoints/` folder holding them."""
    return next((d / "tokenizer" for d in (weights.parent, weights.parent.parent) if (d / "tokenizer").is_dir()), None)


def _listed(names: list[str]) -> str:
    return ", ".join(names[:SHOWN]) + (f" (+{len(names) - SHOWN} more)" if len(names) > SHOWN else "")


def lightning_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The model weights of a Lightning checkpoint (file or sharded folder), named as in the model; neither is
    unpickled beyond plain data (`weights_only`, `vlmlab.models.sharded_checkpoint`)."""
    if is_sharded_checkpoint(path):
        weights = read_sharded_checkpoint(path, "state_dict")
    else:
        weights = torch.load(path, weights_only=True, map_location="cpu")["state_dict"]
    return {k.removeprefix("model."): v for k, v in weights.items()}


def load_weights(model: nn.Module, checkpoint: str | Path) -> Path:
    """Load every tensor of the checkpoint (a file written by `safetensors.torch.save_model`, which
    stores tied weights once, or a Lightning checkpoint) into `model`. A missing, extra or differently
    shaped tensor is an error naming them: it means the model config differs from the training run's."""
    path = weights_path(checkpoint)
    lightning = path.suffix == ".ckpt" or is_sharded_checkpoint(path)
    try:
        if lightning:
            missing, unexpected = model.load_state_dict(lightning_state_dict(path), strict=False)
        else:
            missing, unexpected = load_model(model, str(path), strict=False)
    except RuntimeError as err:  # load_state_dict reports shape mismatches even when not strict
        raise ValueError(f"checkpoint {path} does not fit the model built from this config: {err}\n{FIX}") from err
    if missing or unexpected:
        problems = [
            f"{label}: {_listed(sorted(names))}"
            for label, names in (("missing", missing), ("unexpected", unexpected))
            if names
        ]
        fix = FIX
        if lightning and missing and not unexpected:
            fix = (
                "A single-process Lightning checkpoint holds only the weights its stage trained: evaluate the "
                f"stage's {WEIGHTS_FILE}, or the run's sharded checkpoints, which hold every weight."
            )
        raise ValueError(
            f"checkpoint {path} does not fit the model built from this config ({'; '.join(problems)}). {fix}"
        )
    return path


def save_weights(model: nn.Module, path: str | Path) -> Path:
    """`model`'s weights as one safetensors file (tied weights stored once), readable like any file the user
    writes (safetensors creates it owner-only)."""
    path = Path(path)
    save_model(model, str(path))
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)
    return path


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module`'s complete weights on the CPU, gathered from every process when it is sharded (FSDP,
    FSDP2): a collective, so every rank calls it; rank 0 receives the tensors, the others an empty dict."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(module, options=options)


def describe_model_folder(
    folder: str | Path, model_config: dict, image_resize: str | None, anyres: dict | None
) -> Path:
    """Write `model.yaml` into a folder holding `model.safetensors` and `tokenizer/`, making it a vlmlab model folder:
    the model config (its `llm.tokenizer` the folder's tokenizer, the ids it trained with), how training resized
    images and, for `anyres`, its tile grids."""
    folder = Path(folder)
    config = dict(model_config, llm=dict(model_config["llm"]))
    if "tokenizer" in config["llm"]:
        config["llm"]["tokenizer"] = str((folder / "tokenizer").absolute())
    description = {"model": config, "image_resize": image_resize, "anyres": anyres}
    OmegaConf.save(description, folder / MODEL_CONFIG_FILE)
    return folder / MODEL_CONFIG_FILE
