"""Loading a model to use it: a stage folder, a vlmlab model folder, a Hugging Face LLaVA or Qwen2-VL folder, or a
model in MLflow (`models:/<name>/<version>`, a vlmlab model folder logged by `vlmlab-train`, see
`vlmlab.tracking.registry`).

A stage folder of a `vlmlab-train` run describes itself: the run's `.hydra/config.yaml` holds the model
config and `tokenizer/` the tokenizer it trained with, so nobody retypes the model/* choices. A vlmlab
model folder (written by `vlmlab-export format=vlmlab` and `vlmlab-import`) carries `model.yaml` instead.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from omegaconf import DictConfig, OmegaConf

from vlmlab.data.image_processing import ResizeMode
from vlmlab.interop.hf_llava import is_hf_llava_folder, vlm_from_hf_llava
from vlmlab.interop.hf_qwen2_vl import is_hf_qwen2_vl_folder, vlm_from_hf_qwen2_vl
from vlmlab.models.builder import build_vlm
from vlmlab.models.trust import check_targets
from vlmlab.models.vlm import VisionLanguageModel
from vlmlab.models.weights import (
    MODEL_CONFIG_FILE,
    WEIGHTS_FILE,
    describe_model_folder,
    load_weights,
    save_weights,
    saved_tokenizer,
    weights_path,
)
from vlmlab.tracking.registry import download_model, is_model_uri

MODEL_SOURCES = ("auto", "groups")  # auto: the config saved with the checkpoint; groups: the command line's


@dataclass
class LoadedModel:
    model: VisionLanguageModel
    model_config: dict[str, Any]  # builds the same architecture (with llm.tokenizer pointing at the saved one)
    image_resize: ResizeMode  # how training resized images
    source: str  # where the model config came from, for messages
    path: Path  # the weights file (or Hugging Face folder) loaded; for a model in MLflow, its models:/ URI
    anyres: dict[str, Any] | None = None  # the tile grids of image_resize=anyres (data.anyres)


def run_config_file(weights: Path) -> Path | None:
    """The `.hydra/config.yaml` of the vlmlab-train run that wrote `weights`
    (`<run>/stages/<stage>/model.safetensors` or `<run>/stages/<stage>/checkpoints/last.ckpt`)."""
    return next(
        (d / ".hydra" / "config.yaml" for d in weights.parents[:4] if (d / ".hydra" / "config.yaml").is_file()), None
    )


def saved_description(weights: Path) -> tuple[DictConfig, str | None, str, dict | None] | None:
    """(model config, image resize mode, file, anyres options) saved beside the weights or with their run;
    None if neither."""
    own = weights.parent / MODEL_CONFIG_FILE
    if own.is_file():
        saved = OmegaConf.load(own)
        return saved.model, saved.get("image_resize"), str(own), _plain(saved.get("anyres"))
    run = run_config_file(weights)
    if run is not None:
        saved = OmegaConf.load(run)
        anyres = _plain(OmegaConf.select(saved, "data.anyres"))
        return saved.model, OmegaConf.select(saved, "data.image_resize"), str(run), anyres
    return None


def _plain(node: Any) -> dict | None:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def load_model(
    checkpoint: str | Path,
    model_cfg: DictConfig | None = None,
    model_source: str = "auto",
    image_resize: ResizeMode | None = None,
    model_choices_given: bool = False,
    chat_template: str | None = None,
    tracking_uri: str | None = None,
    trusted_targets: Sequence[str] = (),
) -> LoadedModel:
    """Build the model `checkpoint` was trained as and load its weights.

    `model_source="auto"` takes the model config from the checkpoint's folder or run when they hold one
    (an error if `model_choices_given`: the command line's model/* choices would silently not apply),
    else `model_cfg`; `"groups"` always builds `model_cfg`. `image_resize` overrides the training run's.
    `chat_template` is for a Hugging Face LLaVA folder whose processor and tokenizer have none (a vlmlab
    checkpoint keeps the template it trained with). A `models:/` URI is looked up in the MLflow store
    `tracking_uri` (None: MLflow's default, $MLFLOW_TRACKING_URI or sqlite:///mlflow.db) and loaded from a
    temporary download. A model config read from the checkpoint builds only vlmlab's components and
    `trusted_targets` (`vlmlab.models.trust`): anything else is refused before it is imported.
    """
    if is_model_uri(checkpoint):
        with tempfile.TemporaryDirectory() as folder:
            local = download_model(str(checkpoint), tracking_uri, Path(folder))
            loaded = load_model(
                local, model_cfg, model_source, image_resize, model_choices_given, chat_template, None, trusted_targets
            )
        loaded.source, loaded.path = f"{checkpoint} ({MODEL_CONFIG_FILE})", Path(str(checkpoint))
        return loaded
    if model_source not in MODEL_SOURCES:
        raise ValueError(f"model_source={model_source!r} is not one of {', '.join(MODEL_SOURCES)}")
    if image_resize is not None and image_resize not in get_args(ResizeMode):
        raise ValueError(f"image_resize={image_resize!r} is not one of {', '.join(get_args(ResizeMode))}")
    path = Path(checkpoint)
    if is_hf_llava_folder(path):
        model, config, mode, anyres = vlm_from_hf_llava(path, chat_template)
        source = f"{path / 'config.json'} (Hugging Face LLaVA)"
        return LoadedModel(model, config, image_resize or mode, source, path, anyres)
    if is_hf_qwen2_vl_folder(path):
        model, config = vlm_from_hf_qwen2_vl(path, chat_template)
        return LoadedModel(model, config, "resize", f"{path / 'config.json'} (Hugging Face Qwen2-VL)", path)
    if chat_template is not None:
        raise ValueError(
            f"chat_template= applies to Hugging Face LLaVA and Qwen2-VL folders; {checkpoint} keeps the template it "
            "trained with"
        )
    weights = weights_path(path)
    described = saved_description(weights) if model_source == "auto" else None
    if described is not None and model_choices_given:
        raise ValueError(
            f"{described[2]} already says which model {checkpoint} is, so the model/* choices on the command line "
            "would not apply: drop them, or add model_source=groups to build the model from them"
        )
    if described is not None:
        check_targets(described[0], described[2], trusted_targets)
    if described is None and model_cfg is None:
        raise ValueError(f"{checkpoint} holds no model config ({MODEL_CONFIG_FILE} or a run's .hydra/config.yaml)")
    cfg = OmegaConf.create(OmegaConf.to_container(described[0] if described else model_cfg, resolve=True))
    source = described[2] if described else "the model/* choices of this command"
    tokenizer = saved_tokenizer(weights)
    if tokenizer is not None and "tokenizer" in cfg.llm:
        cfg.llm.tokenizer = str(tokenizer)  # the ids it trained with
    model = build_vlm(cfg)
    try:
        load_weights(model, weights)
    except ValueError as err:
        raise ValueError(f"{err} (The model config came from {source}.)") from err
    mode = image_resize or (described[1] if described else None) or "resize"
    anyres = described[3] if described else None
    return LoadedModel(model.eval(), OmegaConf.to_container(cfg), mode, source, weights, anyres)


def save_model_folder(loaded: LoadedModel, folder: str | Path) -> Path:
    """vlmlab's own format: `model.safetensors`, `tokenizer/` and `model.yaml`. It holds any vlmlab model;
    `vlmlab-generate checkpoint=` loads it and `vlmlab-train init_from=` starts from it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(loaded.model, folder / WEIGHTS_FILE)
    loaded.model.llm.tokenizer.save_pretrained(str(folder / "tokenizer"))
    describe_model_folder(folder.resolve(), loaded.model_config, loaded.image_resize, loaded.anyres)
    return folder
