"""vlmlab model <-> a Hugging Face LLaVA folder (`LlavaForConditionalGeneration` + `LlavaProcessor`) or
LLaVA-NeXT folder (`LlavaNextForConditionalGeneration` + `LlavaNextProcessor`: AnyRes tiles, `image_newline`).

Export writes what transformers, vLLM and TGI serve; import turns a public LLaVA checkpoint into a
vlmlab model. Both work only where the parts are LLaVA's: a transformers CLIP or SigLIP vision tower,
the two-layer GELU projector and a causal LM laid out as `model` + `lm_head`; `check_fits_llava`
names what else does not fit. vlmlab's own folder format (`vlmlab-export format=vlmlab`) holds any model.
LLaVA-NeXT's tile grids are `data.anyres.grid_pinpoints` in tiles; its `image_grid_pinpoints` are in pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from transformers import (
    AutoConfig,
    AutoProcessor,
    CLIPImageProcessor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessor,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    LlavaProcessor,
    SiglipImageProcessor,
)
from transformers.image_utils import PILImageResampling

from vlmlab.data.chat_format import takes_content_parts
from vlmlab.data.image_processing import ResizeMode
from vlmlab.data.tiling import Tiling, tiling_from_options
from vlmlab.interop.hf_folder import config_fields, folder_model_type
from vlmlab.interop.llava_weights import llava_to_vlmlab, vlmlab_to_llava
from vlmlab.models.builder import build_vlm
from vlmlab.models.connectors.mlp import MLPConnector
from vlmlab.models.encoders.hf_encoder import HFVisionEncoder
from vlmlab.models.encoders.hf_preprocessing import processor_recipe
from vlmlab.models.image_layout import tile_count
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


LLAVA_MODEL_TYPES = ("llava", "llava_next")


def check_fits_llava(model: VisionLanguageModel, next_: bool = False) -> None:
    """Raise a ValueError naming every part of `model` that LLaVA's (`next_`: LLaVA-NeXT's) architecture
    cannot express."""
    problems = []
    if next_ and model.image_newline is None:
        problems.append("LLaVA-NeXT has a learned image_newline token, this model does not (model.image_newline)")
    if not next_ and model.image_newline is not None:
        problems.append("the model has LLaVA-NeXT's image_newline token; export it with format=hf_llava_next")
    encoder, connector, llm = model.encoder, model.connector, model.llm
    if not isinstance(encoder, HFVisionEncoder) or encoder.family not in VISION_MODEL_TYPES:
        kind = (
            f"HFVisionEncoder(family={encoder.family})"
            if isinstance(encoder, HFVisionEncoder)
            else type(encoder).__name__
        )
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
        name = "LLaVA-NeXT" if next_ else "LLaVA"
        raise ValueError(f"this model does not fit transformers' {name}: " + "; ".join(problems) + f". {OWN_FORMAT}.")


def feature_select_strategy(encoder: HFVisionEncoder) -> str:
    """LLaVA's `default` drops the first token whatever the tower, so a SigLIP tower (no CLS) is `full`."""
    return "default" if encoder.num_dropped_tokens else "full"


def llava_config(model: VisionLanguageModel, tiling: Tiling | None = None) -> LlavaConfig | LlavaNextConfig:
    """LLaVA's config of `model`; LLaVA-NeXT's with `tiling` (its grids in pixels)."""
    encoder, llm = model.encoder, model.llm
    layers = encoder.feature_layers
    fields = dict(
        vision_config=encoder.model.config.to_dict(),
        text_config=llm.model.config.to_dict(),
        image_token_index=model.image_token_id,
        image_seq_length=model.connector.num_out_tokens,
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        vision_feature_layer=layers[0] if len(layers) == 1 else layers,
        vision_feature_select_strategy=feature_select_strategy(encoder),
        tie_word_embeddings=bool(llm.model.config.tie_word_embeddings),
    )
    if tiling is None:
        return LlavaConfig(**fields)
    return LlavaNextConfig(**fields, image_grid_pinpoints=[list(r) for r in tiling.resolutions])


def image_processor(
    encoder: HFVisionEncoder, mode: ResizeMode, tiling: Tiling | None = None
) -> CLIPImageProcessor | SiglipImageProcessor | LlavaImageProcessor | LlavaNextImageProcessor:
    """The transformers image processor whose pixels are vlmlab's in `mode` (its default torchvision backend:
    the same operations, see `vlmlab.data.pixels`): `hf_preprocessing.processor_recipe` in reverse."""
    p = encoder.preprocessing
    common = dict(
        image_mean=list(p.mean),
        image_std=list(p.std),
        resample=PILImageResampling[p.interpolation.upper()],
        rescale_factor=p.rescale_factor,
        do_convert_rgb=True,
    )
    crop = {"height": p.height, "width": p.width}
    shortest = {"shortest_edge": p.short_side}
    if mode == "anyres":  # padded to one tile count per batch (the model drops the padding tiles)
        pinpoints = [list(r) for r in tiling.resolutions]
        return LlavaNextImageProcessor(
            size=shortest, crop_size=crop, do_center_crop=True, do_pad=True, image_grid_pinpoints=pinpoints, **common
        )
    if mode == "resize_crop":
        return CLIPImageProcessor(size=shortest, crop_size=crop, do_center_crop=True, **common)
    if mode == "letterbox":  # LLaVA-1.5's `pad`: pad to a square with the mean colour, then as resize_crop
        return LlavaImageProcessor(size=shortest, crop_size=crop, do_pad=True, do_center_crop=True, **common)
    cls = SiglipImageProcessor if encoder.family == "siglip" else CLIPImageProcessor
    return cls(size=crop, do_center_crop=False, **common)


def processor_chat_template(tokenizer: Any, image_token: str) -> str:
    """The template an exported processor formats messages with: the model's own when it takes content parts (an
    imported llava-hf template, kept as it was); else the model's string template behind `CONTENT_PRELUDE`."""
    if takes_content_parts(tokenizer):
        return tokenizer.chat_template
    return CONTENT_PRELUDE.replace("__IMAGE__", image_token) + tokenizer.chat_template


def export_hf_llava(
    model: VisionLanguageModel,
    folder: str | Path,
    image_resize: ResizeMode = "resize",
    anyres: dict[str, Any] | None = None,
    next_: bool = False,
) -> Path:
    """Write `model` as a folder that `LlavaForConditionalGeneration.from_pretrained` (`next_`:
    `LlavaNextForConditionalGeneration`, with the tile grids of `anyres`) and `AutoProcessor.from_pretrained`
    load: config, safetensors weights, tokenizer, processor, chat template."""
    check_fits_llava(model, next_)
    if next_ and image_resize != "anyres":
        raise ValueError(
            f"LLaVA-NeXT tiles its images: the model was trained with image_resize={image_resize}, not anyres"
        )
    tiling = tiling_from_options(anyres, model.encoder.preprocessing.height) if next_ else None
    folder = Path(folder)
    model_class = LlavaNextForConditionalGeneration if next_ else LlavaForConditionalGeneration
    llava = model_class(llava_config(model, tiling)).to(next(model.parameters()).dtype)
    missing, unexpected = llava.load_state_dict(vlmlab_to_llava(model.state_dict()), strict=False)
    if missing or unexpected:
        raise ValueError(f"LLaVA's layout differs from this model's: missing {missing}, unexpected {unexpected}")
    llava.eval().save_pretrained(str(folder))
    tokenizer, encoder = model.llm.tokenizer, model.encoder
    processor_class = LlavaNextProcessor if next_ else LlavaProcessor
    processor = processor_class(
        image_processor=image_processor(encoder, image_resize, tiling),
        tokenizer=tokenizer,
        patch_size=encoder.model.config.patch_size,
        vision_feature_select_strategy=feature_select_strategy(encoder),
        chat_template=processor_chat_template(tokenizer, model.llm.image_token),
        image_token=model.llm.image_token,
        num_additional_image_tokens=1 if encoder.family == "clip" else 0,
    )
    processor.save_pretrained(str(folder))
    return folder


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


def anyres_options(config: LlavaNextConfig) -> dict[str, Any]:
    """`data.anyres` of a LLaVA-NeXT config: its pixel grids as tile grids of the vision tower's size."""
    tile = config.vision_config.image_size
    if any(h % tile or w % tile for h, w in config.image_grid_pinpoints):
        raise ValueError(
            f"LLaVA-NeXT's image_grid_pinpoints {config.image_grid_pinpoints} are not whole tiles of {tile} px"
        )
    return {"grid_pinpoints": [[h // tile, w // tile] for h, w in config.image_grid_pinpoints], "max_tiles": None}


def llava_model_config(
    folder: str | Path, chat_template: str | None = None
) -> tuple[dict[str, Any], ResizeMode, dict[str, Any] | None]:
    """The vlmlab model config (encoder, connector, llm) of a LLaVA or LLaVA-NeXT folder, its resize mode
    and its tile grids (`data.anyres`; None for LLaVA).

    The config builds the architecture with random weights (`pretrained: null`, `from_config`); the
    weights come from a vlmlab weights file (`init_from=`, `checkpoint=`). The tokenizer is the folder's.
    The encoder's preprocessing and the layout are its image processor's (`processor_recipe`), so vlmlab's
    pixels are the processor's; the chat template is its processor's.
    """
    folder = Path(folder)
    config = AutoConfig.from_pretrained(str(folder))
    is_next = config.model_type == "llava_next"
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
    recipe, layout = processor_recipe(images, str(folder))
    if template is None:
        raise ValueError(
            f"{folder}: neither its processor nor its tokenizer has a chat template; give one with "
            "chat_template=<a name (vicuna_v1 for LLaVA-1.5, simple) or a Jinja string>"
        )
    model_cfg = {
        "image_newline": is_next,
        "encoder": {
            "_target_": "vlmlab.models.encoders.HFVisionEncoder",
            "family": family,
            "pretrained": None,
            "config": config_fields(config.vision_config),
            "feature_layer": config.vision_feature_layer,
            "feature_select": config.vision_feature_select_strategy,
            "image_size": recipe["height"],
            "image_mean": list(recipe["mean"]),
            "image_std": list(recipe["std"]),
            "interpolation": recipe["interpolation"],
            "shortest_edge": recipe["shortest_edge"] if "shortest_edge" in recipe else None,
        },
        "connector": {"_target_": "vlmlab.models.connectors.MLPConnector", "depth": 2},
        "llm": {
            "_target_": "vlmlab.models.llms.LanguageModel.from_config",
            "_convert_": "all",  # nested config fields (rope_parameters) reach transformers as plain dicts
            "config": config_fields(config.text_config),
            "tokenizer": str(folder),
            "chat_template": template,
            "image_token": processor.image_token,
        },
    }
    return model_cfg, layout, anyres_options(config) if is_next else None


def vlm_from_hf_llava(
    folder: str | Path, chat_template: str | None = None
) -> tuple[VisionLanguageModel, dict[str, Any], ResizeMode, dict[str, Any] | None]:
    """A vlmlab model holding a LLaVA (or LLaVA-NeXT) folder's weights, its model config, its resize mode
    and its tile grids (`data.anyres`, LLaVA-NeXT only).

    The LLaVA model is loaded once with transformers (which converts older checkpoint layouts), its
    weights are copied over by name, then it is dropped: peak memory is about twice the model.
    """
    model_cfg, mode, anyres = llava_model_config(folder, chat_template)
    model = build_vlm(OmegaConf.create(model_cfg))
    # The processor's template is the one transformers formats messages with, even where the folder's tokenizer
    # has another of its own; set on the tokenizer, it is saved with it.
    model.llm.tokenizer.chat_template = model_cfg["llm"]["chat_template"]
    model_class = LlavaNextForConditionalGeneration if anyres is not None else LlavaForConditionalGeneration
    llava = model_class.from_pretrained(str(folder), dtype=torch.float32)
    weights = llava_to_vlmlab(llava.state_dict())
    if model.llm.model.get_input_embeddings().num_embeddings != llava.config.text_config.vocab_size:
        raise ValueError(
            f"{folder}: the tokenizer has {len(model.llm.tokenizer)} tokens but the LLM's vocabulary is "
            f"{llava.config.text_config.vocab_size}"
        )
    model.load_state_dict(weights, strict=True)
    del llava
    return model.eval(), model_cfg, mode, anyres


def batch_from_processor(inputs: Mapping[str, Any], anyres: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A transformers LLaVA or LLaVA-NeXT processor's output as the batch a vlmlab model takes, to compare the two
    on the same inputs: `model(**batch).logits`, `model.generate(**batch, max_new_tokens=...)`.

    `inputs`: `processor(images=..., text=..., return_tensors="pt")` or `processor.apply_chat_template(...,
    tokenize=True, return_dict=True, return_tensors="pt")`. `anyres`: the model's tile grids (`LoadedModel.anyres`)
    for LLaVA-NeXT, whose processor pads every image to one tile count: the padding tiles are dropped and each
    image gets its grid row (`image_grids`). The token ids are used as they are (the processor has expanded each
    `<image>` to its count, as vlmlab does).
    """
    batch: dict[str, Any] = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    pixels = inputs.get("pixel_values")
    batch["pixel_values"] = pixels
    if pixels is None or pixels.dim() == 4:  # none, or one tile per image
        return batch
    if anyres is None:
        raise ValueError("tiled pixel values (LLaVA-NeXT): pass the model's tile grids, anyres=<LoadedModel.anyres>")
    tiling = tiling_from_options(anyres, int(pixels.shape[-1]))
    grids = torch.tensor([(*tiling.grid(tuple(size)), *size) for size in inputs["image_sizes"].tolist()])
    counts = [tile_count(grid) for grid in grids.tolist()]
    batch["pixel_values"] = torch.cat([tiles[:n] for tiles, n in zip(pixels, counts)])
    batch["image_grids"] = grids
    return batch


def is_hf_llava_folder(path: Path) -> bool:
    """A folder holding a transformers LLaVA or LLaVA-NeXT config (an export, or a checkpoint such as
    llava-hf/llava-1.5-7b-hf or llava-hf/llava-v1.6-vicuna-7b-hf)."""
    return folder_model_type(path) in LLAVA_MODEL_TYPES
