"""vlmlab model <-> a Hugging Face LLaVA folder (`LlavaForConditionalGeneration` + `LlavaProcessor`).

Export writes what transformers, vLLM and TGI serve; import turns a public LLaVA checkpoint into a
vlmlab model. Both work only where the parts are LLaVA's: a transformers CLIP or SigLIP vision tower,
the two-layer GELU projector and a causal LM laid out as `model` + `lm_head`; `check_fits_llava`
names what else does not fit. vlmlab's own folder format (`vlmlab-export format=vlmlab`) holds any model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from transformers import (
    AutoProcessor,
    CLIPImageProcessor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessor,
    LlavaProcessor,
    SiglipImageProcessor,
)
from transformers.image_utils import PILImageResampling

from vlmlab.data.image_processing import ResizeMode
from vlmlab.interop.llava_weights import llava_to_vlmlab, vlmlab_to_llava
from vlmlab.models.builder import build_vlm
from vlmlab.models.connectors.mlp import MLPConnector
from vlmlab.models.encoders.hf_encoder import HFVisionEncoder
from vlmlab.models.vlm import VisionLanguageModel

VISION_MODEL_TYPES = {"clip": "clip_vision_model", "siglip": "siglip_vision_model"}
OWN_FORMAT = "Export it in vlmlab's own format instead (vlmlab-export format=vlmlab), which vlmlab-generate loads"
# Chat templates are written for string contents; a processor's messages carry lists of parts
# ({"type": "image"}, {"type": "text", "text": ...}). This prelude turns each list into the string
# vlmlab trained on ("<image>\n" per image, then the text) before the model's own template runs.
CONTENT_PRELUDE = (
    "{%- set ns = namespace(messages=[]) -%}"
    "{%- for m in messages -%}"
    "{%- if m['content'] is string -%}{%- set ns.messages = ns.messages + [m] -%}"
    "{%- else -%}{%- set text = namespace(value='') -%}"
    "{%- for part in m['content'] -%}"
    "{%- if part['type'] == 'image' -%}{%- set text.value = text.value + '__IMAGE__\n' -%}"
    "{%- elif part['type'] == 'text' -%}{%- set text.value = text.value + part['text'] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- set ns.messages = ns.messages + [{'role': m['role'], 'content': text.value}] -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- set messages = ns.messages -%}"
)


def check_fits_llava(model: VisionLanguageModel) -> None:
    """Raise a ValueError naming every part of `model` that LLaVA's architecture cannot express."""
    problems = []
    encoder, connector, llm = model.encoder, model.connector, model.llm
    if not isinstance(encoder, HFVisionEncoder) or encoder.family not in VISION_MODEL_TYPES:
        kind = f"HFVisionEncoder(family={encoder.family})" if isinstance(encoder, HFVisionEncoder) else type(encoder)
        problems.append(f"the encoder is {kind}, LLaVA needs a transformers CLIP or SigLIP vision tower")
    elif encoder._forward_kwargs:
        problems.append(
            f"the encoder runs at {encoder.preprocessing.height}px, not its config's "
            f"{encoder.model.config.image_size}px (interpolated position embeddings)"
        )
    layers = getattr(connector, "layers", None)
    is_llava_mlp = isinstance(connector, MLPConnector) and len(layers) == 3 and layers[1].approximate == "none"
    if not is_llava_mlp:
        problems.append(f"the connector is {type(connector).__name__}, LLaVA needs MLPConnector with depth 2 (GELU)")
    if set(dict(llm.model.named_children())) != {"model", "lm_head"}:
        problems.append(
            f"the LLM ({type(llm.model).__name__}) is not laid out as `model` + `lm_head`, as LLaVA's language model"
        )
    if any("lora_" in name for name, _ in model.named_parameters()):
        problems.append("the model still holds LoRA adapters; merge them first (a stage's model.safetensors is merged)")
    if problems:
        raise ValueError("this model does not fit transformers' LLaVA: " + "; ".join(problems) + f". {OWN_FORMAT}.")


def feature_select_strategy(encoder: HFVisionEncoder) -> str:
    """LLaVA's `default` drops the first token whatever the tower, so a SigLIP tower (no CLS) is `full`."""
    return "default" if encoder.num_dropped_tokens else "full"


def llava_config(model: VisionLanguageModel) -> LlavaConfig:
    encoder, llm = model.encoder, model.llm
    layers = encoder.feature_layers
    return LlavaConfig(
        vision_config=encoder.model.config.to_dict(),
        text_config=llm.model.config.to_dict(),
        image_token_index=model.image_token_id,
        image_seq_length=model.num_image_tokens,
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        vision_feature_layer=layers[0] if len(layers) == 1 else layers,
        vision_feature_select_strategy=feature_select_strategy(encoder),
        tie_word_embeddings=bool(llm.model.config.tie_word_embeddings),
    )


def image_processor(encoder: HFVisionEncoder, mode: ResizeMode) -> CLIPImageProcessor | SiglipImageProcessor:
    """A transformers image processor preparing images as vlmlab's `ImageProcessor` does in `mode`.

    Same geometry, interpolation (bilinear, antialiased) and normalisation; transformers resizes the
    8-bit image and vlmlab the float one, so pixel values differ by rounding (about 1e-2 after
    normalisation), not by layout.
    """
    p = encoder.preprocessing
    common = dict(
        image_mean=list(p.mean), image_std=list(p.std), resample=PILImageResampling.BILINEAR, do_convert_rgb=True
    )
    square = {"height": p.height, "width": p.width}
    if mode == "resize_crop":
        return CLIPImageProcessor(
            size={"shortest_edge": min(p.height, p.width)}, crop_size=square, do_center_crop=True, **common
        )
    if mode == "letterbox":  # LLaVA-1.5's `pad`: pad to a square with the mean colour, then resize
        return LlavaImageProcessor(size=square, do_pad=True, do_center_crop=False, **common)
    cls = SiglipImageProcessor if encoder.family == "siglip" else CLIPImageProcessor
    return cls(size=square, do_center_crop=False, **common)


def export_hf_llava(model: VisionLanguageModel, folder: str | Path, image_resize: ResizeMode = "resize") -> Path:
    """Write `model` as a folder that `LlavaForConditionalGeneration.from_pretrained` and
    `AutoProcessor.from_pretrained` load: config, safetensors weights, tokenizer, processor, chat template."""
    check_fits_llava(model)
    folder = Path(folder)
    llava = LlavaForConditionalGeneration(llava_config(model)).to(next(model.parameters()).dtype)
    missing, unexpected = llava.load_state_dict(vlmlab_to_llava(model.state_dict()), strict=False)
    if missing or unexpected:
        raise ValueError(f"LLaVA's layout differs from this model's: missing {missing}, unexpected {unexpected}")
    llava.eval().save_pretrained(str(folder))
    tokenizer, encoder = model.llm.tokenizer, model.encoder
    processor = LlavaProcessor(
        image_processor=image_processor(encoder, image_resize),
        tokenizer=tokenizer,
        patch_size=encoder.model.config.patch_size,
        vision_feature_select_strategy=feature_select_strategy(encoder),
        chat_template=CONTENT_PRELUDE.replace("__IMAGE__", model.llm.image_token) + tokenizer.chat_template,
        image_token=model.llm.image_token,
        num_additional_image_tokens=1 if encoder.family == "clip" else 0,
    )
    processor.save_pretrained(str(folder))
    return folder


def resize_mode(processor: Any) -> ResizeMode:
    """vlmlab's resize mode for a LLaVA folder's image processor (CLIP's own processors centre-crop)."""
    if getattr(processor, "do_pad", False):
        return "letterbox"
    return "resize_crop" if getattr(processor, "do_center_crop", False) else "resize"


def _config_fields(config: Any) -> dict[str, Any]:
    fields = config.to_diff_dict()
    for key in ("transformers_version", "architectures", "_name_or_path", "dtype"):
        fields.pop(key, None)
    return fields


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def check_processor_files(folder: Path) -> None:
    """A LLaVA folder carries its image processor and tokenizer (`processor.save_pretrained(folder)`); name
    what is missing before transformers fails on it with a message about the hub."""
    missing = []
    if not (folder / "preprocessor_config.json").is_file() and not (folder / "processor_config.json").is_file():
        missing.append("an image processor (preprocessor_config.json)")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        missing.append(f"a tokenizer ({' or '.join(TOKENIZER_FILES)})")
    if missing:
        raise ValueError(
            f"{folder} lacks {' and '.join(missing)}; save them beside the model with "
            "AutoProcessor.from_pretrained(<the original>).save_pretrained(folder)"
        )


def llava_model_config(folder: str | Path, chat_template: str | None = None) -> tuple[dict[str, Any], ResizeMode]:
    """The vlmlab model config (encoder, connector, llm) of a LLaVA folder, and its resize mode.

    The config builds the architecture with random weights (`pretrained: null`, `from_config`); the
    weights come from a vlmlab weights file (`init_from=`, `checkpoint=`). The tokenizer is the folder's.
    """
    folder = Path(folder)
    config = LlavaConfig.from_pretrained(str(folder))
    vision_type = config.vision_config.model_type
    family = next((f for f, t in VISION_MODEL_TYPES.items() if t == vision_type), None)
    problems = []
    if family is None:
        problems.append(f"its vision tower is '{vision_type}', vlmlab imports {', '.join(VISION_MODEL_TYPES.values())}")
    if config.projector_hidden_act != "gelu" or not config.multimodal_projector_bias:
        problems.append(f"its projector uses '{config.projector_hidden_act}' (bias {config.multimodal_projector_bias})")
    if family == "siglip" and config.vision_feature_select_strategy == "default":
        problems.append("it drops the first patch of a SigLIP tower (vision_feature_select_strategy=default)")
    if problems:
        raise ValueError(f"the LLaVA checkpoint in {folder} does not fit vlmlab's model: {'; '.join(problems)}")
    check_processor_files(folder)
    processor = AutoProcessor.from_pretrained(str(folder))
    images, tokenizer = processor.image_processor, processor.tokenizer
    template = chat_template or processor.chat_template or tokenizer.chat_template
    if template is None:
        raise ValueError(
            f"{folder}: neither its processor nor its tokenizer has a chat template; give one with "
            "chat_template=<a name (vicuna_v1 for LLaVA-1.5, simple) or a Jinja string>"
        )
    model_cfg = {
        "encoder": {
            "_target_": "vlmlab.models.encoders.HFVisionEncoder",
            "family": family,
            "pretrained": None,
            "config": _config_fields(config.vision_config),
            "feature_layer": config.vision_feature_layer,
            "feature_select": config.vision_feature_select_strategy,
            "image_size": None,
            "image_mean": list(images.image_mean),
            "image_std": list(images.image_std),
        },
        "connector": {"_target_": "vlmlab.models.connectors.MLPConnector", "depth": 2},
        "llm": {
            "_target_": "vlmlab.models.llms.LanguageModel.from_config",
            "_convert_": "all",  # nested config fields (rope_parameters) reach transformers as plain dicts
            "config": _config_fields(config.text_config),
            "tokenizer": str(folder),
            "chat_template": template,
            "image_token": processor.image_token,
        },
    }
    return model_cfg, resize_mode(images)


def vlm_from_hf_llava(
    folder: str | Path, chat_template: str | None = None
) -> tuple[VisionLanguageModel, dict[str, Any], ResizeMode]:
    """A vlmlab model holding a LLaVA folder's weights, its model config and its resize mode.

    The LLaVA model is loaded once with transformers (which converts older checkpoint layouts), its
    weights are copied over by name, then it is dropped: peak memory is about twice the model.
    """
    model_cfg, mode = llava_model_config(folder, chat_template)
    model = build_vlm(OmegaConf.create(model_cfg))
    llava = LlavaForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32)
    weights = llava_to_vlmlab(llava.state_dict())
    if model.llm.model.get_input_embeddings().num_embeddings != llava.config.text_config.vocab_size:
        raise ValueError(
            f"{folder}: the tokenizer has {len(model.llm.tokenizer)} tokens but the LLM's vocabulary is "
            f"{llava.config.text_config.vocab_size}"
        )
    model.load_state_dict(weights, strict=True)
    del llava
    return model.eval(), model_cfg, mode


def is_hf_llava_folder(path: Path) -> bool:
    """A folder holding a transformers LLaVA config (an export, or a checkpoint such as llava-hf/llava-1.5-7b-hf)."""
    config = path / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == "llava"
