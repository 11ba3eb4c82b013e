"""Where a model preset's weights come from, checked in seconds before anything loads.

Every preset names its weights in one field, `pretrained`: a local folder or a Hugging Face hub id (timm
encoders: `pretrained: true` with timm's own hub id for `model_name`, or a `checkpoint_path`). Without a
network, transformers would retry for most of a minute and then print a generic message; this check
finds a missing local folder, or a hub id that is neither in the local cache nor reachable, at once and
says how to get the weights onto this machine.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import constants, try_to_load_from_cache
from omegaconf import DictConfig

from vlmlab.errors import UsageError

REACH_TIMEOUT_S = 3.0


def looks_like_path(value: str) -> bool:
    """A hub id is `name` or `owner/name`; anything else (absolute, relative, ~, two slashes) is a folder."""
    return value.startswith(("/", ".", "~")) or value.count("/") > 1 or os.sep != "/" and os.sep in value


def in_local_cache(repo_id: str) -> bool:
    """Whether the hub cache (HF_HOME / HF_HUB_CACHE) holds this repository's config."""
    for filename in ("config.json", "open_clip_config.json", "model.safetensors", "pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(repo_id, filename), str):
            return True
    return False


def hub_reachable() -> str | None:
    """None when the hub endpoint accepts a connection within a few seconds, else why not."""
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=REACH_TIMEOUT_S):
            return None
    except OSError as err:
        return f"{endpoint.hostname}:{port} cannot be reached ({err.strerror or err})"


def check_weights_source(value: str, field: str) -> None:
    """`value` (a preset's `pretrained`) is an existing folder, a cached hub id, or a reachable hub id."""
    if Path(value).expanduser().exists():
        return
    if looks_like_path(value):
        raise UsageError(
            f"{field}={value}: no such folder. Give the folder that holds the model's config.json and weights "
            f"(from save_pretrained or `hf download <id> --local-dir <folder>`)"
        )
    why = unavailable_hub_model(value)
    if why is not None:
        raise UsageError(
            f"{field}={value}: {why}. On a machine with internet run `hf download {value} --local-dir <folder>`, "
            f"copy the folder here and set {field}=<folder> (or copy the hub cache and point HF_HOME at it)"
        )


def unavailable_hub_model(repo_id: str) -> str | None:
    """None when `repo_id` can be loaded (cached, or the hub answers), else why it cannot."""
    if in_local_cache(repo_id):
        return None
    why = hub_reachable()
    if why is None:
        return None
    return f"this hub model is not in the local cache ({constants.HF_HUB_CACHE}) and the hub is out of reach: {why}"


def timm_hub_id(model_name: str) -> str | None:
    """The hub repository timm downloads `model_name`'s pretrained weights from (None: not on the hub)."""
    import timm

    pretrained_cfg = timm.models.get_pretrained_cfg(model_name)
    return getattr(pretrained_cfg, "hf_hub_id", None) if pretrained_cfg is not None else None


def check_component_weights(node: DictConfig, field: str) -> None:
    """Check every place a model component config (and the encoders it fuses) loads weights from."""
    if not isinstance(node, DictConfig):
        return
    pretrained = node.get("pretrained")
    target = str(node.get("_target_", ""))
    if isinstance(pretrained, str):
        check_weights_source(pretrained, f"{field}.pretrained")
    elif pretrained is True and target.endswith("TimmVisionEncoder"):
        checkpoint = node.get("checkpoint_path")
        if checkpoint:
            if not Path(checkpoint).expanduser().is_file():
                raise UsageError(f"{field}.checkpoint_path={checkpoint}: no such file")
        else:
            repo_id = (timm_hub_id(node.model_name) or "").split("@")[0]
            why = unavailable_hub_model(repo_id) if repo_id else None
            if why is not None:
                raise UsageError(
                    f"{field}.model_name={node.model_name}: timm loads its weights from the hub ({repo_id}); {why}. "
                    f"On a machine with internet run `hf download {repo_id} --local-dir <folder>`, copy the "
                    f"weights file here and set {field}.checkpoint_path=<folder>/<weights file>"
                )
    tokenizer = node.get("tokenizer")
    if isinstance(tokenizer, str):
        check_weights_source(tokenizer, f"{field}.tokenizer")
    for name, child in (node.get("encoders") or {}).items():
        check_component_weights(child, f"{field}.encoders.{name}")
