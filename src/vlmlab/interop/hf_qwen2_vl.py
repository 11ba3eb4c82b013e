"""vlmlab model <-> a Hugging Face Qwen2-VL folder (`Qwen2VLForConditionalGeneration` + `Qwen2VLProcessor`).

Qwen2-VL in vlmlab's parts: its vision tower with the 2 x 2 patch merger (`Qwen2VLVisionEncoder`, output `merged`,
the token budget of its processor's `min_pixels` / `max_pixels`), no connector (`IdentityConnector`: the merger
already projects to the LLM's width) and its language model (`Qwen2VLTextForCausalLM`, whose image tokens take
M-RoPE positions). Prompts keep vlmlab's `<image>` placeholder; the model's chat template writes each image as
`<|vision_start|><|image_pad|><|vision_end|>` and `<|image_pad|>` is expanded to the image's tokens, as
transformers' processor does. Qwen2.5-VL (window attention in the tower) is another architecture and is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoProcessor, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
from transformers.image_utils import PILImageResampling
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

from vlmlab.data.chat_format import renders_image_parts
from vlmlab.interop.hf_folder import config_fields, folder_model_type
from vlmlab.interop.llava_weights import renamed
from vlmlab.models.builder import build_vlm
from vlmlab.models.connectors.identity import IdentityConnector
from vlmlab.models.encoders.hf_preprocessing import pixel_statistics
from vlmlab.models.encoders.native_resolution import Qwen2VLVisionEncoder
from vlmlab.models.llms.language_model import DEFAULT_IMAGE_TOKEN
from vlmlab.models.llms.qwen2_vl_text import Qwen2VLTextForCausalLM
from vlmlab.models.vlm import VisionLanguageModel

MODEL_TYPE = "qwen2_vl"
IMAGE_PAD = "<|image_pad|>"
# (Qwen2VLForConditionalGeneration prefix, vlmlab prefix), of a loaded model (transformers converts older layouts)
QWEN2_VL_TO_VLMLAB = (
    ("model.visual.", "encoder.model."),
    ("model.language_model.", "llm.model.model."),
    ("lm_head.", "llm.model.lm_head."),
)
# The config's token ids, by the tokens Qwen2-VL's tokenizer has for them
SPECIAL_TOKENS = {
    "image_token_id": IMAGE_PAD,
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}
OWN_FORMAT = "Export it in vlmlab's own format instead (vlmlab-export format=vlmlab)"


def is_hf_qwen2_vl_folder(path: Path) -> bool:
    """A folder holding a transformers Qwen2-VL config (an export, or a checkpoint as Qwen/Qwen2-VL-2B-Instruct)."""
    return folder_model_type(path) == MODEL_TYPE


def qwen2_vl_model_config(folder: str | Path, chat_template: str | None = None) -> dict[str, Any]:
    """The vlmlab model config (encoder, connector, llm) of a Qwen2-VL folder: the architecture with random weights
    (`pretrained: null`), the encoder's pixels and token budget its processor's, the folder's tokenizer and the
    processor's chat template."""
    folder = Path(folder)
    config = AutoConfig.from_pretrained(str(folder))
    if config.model_type != MODEL_TYPE:
        raise ValueError(f"{folder} holds a '{config.model_type}' model, not Qwen2-VL (model_type {MODEL_TYPE})")
    processor = AutoProcessor.from_pretrained(str(folder))
    images, tokenizer = processor.image_processor, processor.tokenizer
    statistics = pixel_statistics(images, str(folder))
    vision = config.vision_config
    problems = []
    if statistics["rescale_factor"] != 1 / 255:
        problems.append(f"its processor rescales by {statistics['rescale_factor']}, not 1/255")
    if (images.patch_size, images.merge_size, images.temporal_patch_size) != (
        vision.patch_size,
        vision.spatial_merge_size,
        vision.temporal_patch_size,
    ):
        problems.append("its processor's patch, merge or temporal patch size is not its vision tower's")
    unit = (vision.patch_size * vision.spatial_merge_size) ** 2
    pixels = (int(images.size["shortest_edge"]), int(images.size["longest_edge"]))
    if any(p % unit for p in pixels):
        problems.append(f"its processor's min_pixels / max_pixels {pixels} are not whole tokens of {unit} pixels")
    if problems:
        raise ValueError(f"the Qwen2-VL checkpoint in {folder} does not fit vlmlab's model: {'; '.join(problems)}")
    template = chat_template or processor.chat_template or tokenizer.chat_template
    if template is None:
        raise ValueError(f"{folder}: neither its processor nor its tokenizer has a chat template; give one")
    text = config_fields(config.text_config)
    text["tie_word_embeddings"] = bool(config.tie_word_embeddings)
    return {
        "image_newline": False,
        "encoder": {
            "_target_": "vlmlab.models.encoders.Qwen2VLVisionEncoder",
            "_convert_": "all",  # its rope_parameters reach transformers as a plain dict
            "pretrained": None,
            "config": config_fields(vision),
            "output": "merged",
            "min_tokens": pixels[0] // unit,
            "max_tokens": pixels[1] // unit,
            "interpolation": statistics["interpolation"],
            "image_mean": list(statistics["mean"]),
            "image_std": list(statistics["std"]),
        },
        "connector": {"_target_": "vlmlab.models.connectors.IdentityConnector"},
        "llm": {
            "_target_": "vlmlab.models.llms.LanguageModel.from_config",
            "_convert_": "all",  # nested config fields (rope_parameters) reach transformers as plain dicts
            "config": text,  # model_type qwen2_vl_text: Qwen2VLTextForCausalLM
            "tokenizer": str(folder),
            "chat_template": template,
            "image_token": DEFAULT_IMAGE_TOKEN,
            "template_image_token": processor.image_token,
        },
    }


def vlm_from_hf_qwen2_vl(
    folder: str | Path, chat_template: str | None = None
) -> tuple[VisionLanguageModel, dict[str, Any]]:
    """A vlmlab model holding a Qwen2-VL folder's weights, and its model config. The folder is loaded once with
    transformers (safetensors, no code of the folder's), its weights copied over by name, then dropped."""
    model_cfg = qwen2_vl_model_config(folder, chat_template)
    model = build_vlm(OmegaConf.create(model_cfg))
    model.llm.tokenizer.chat_template = model_cfg["llm"]["chat_template"]  # saved with the tokenizer
    qwen = Qwen2VLForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32)
    vocab = qwen.config.text_config.vocab_size
    if model.llm.model.get_input_embeddings().num_embeddings != vocab:
        raise ValueError(
            f"{folder}: the tokenizer has {len(model.llm.tokenizer)} tokens but the LLM's vocabulary is {vocab}"
        )
    model.load_state_dict(qwen2_vl_to_vlmlab(qwen.state_dict()), strict=True)
    del qwen
    return model.eval(), model_cfg


def qwen2_vl_to_vlmlab(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return renamed(state_dict, list(QWEN2_VL_TO_VLMLAB), "Qwen2-VL", "vlmlab")


def vlmlab_to_qwen2_vl(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return renamed(state_dict, [(new, old) for old, new in QWEN2_VL_TO_VLMLAB], "vlmlab", "Qwen2-VL")


def check_fits_qwen2_vl(model: VisionLanguageModel) -> None:
    """Raise a ValueError naming every part of `model` that Qwen2-VL's architecture cannot express."""
    problems = []
    encoder, llm = model.encoder, model.llm
    if not isinstance(encoder, Qwen2VLVisionEncoder) or encoder.output != "merged":
        problems.append("Qwen2-VL needs its vision tower with the patch merger (Qwen2VLVisionEncoder, output: merged)")
    elif encoder.recipe.square:
        problems.append("the encoder stretches every image to a square (keep_aspect_ratio: false); Qwen2-VL's does not")
    if not isinstance(model.connector, IdentityConnector):
        problems.append(
            f"the connector is {type(model.connector).__name__}; Qwen2-VL has none (model/connector=identity)"
        )
    if not isinstance(llm.model, Qwen2VLTextForCausalLM):
        problems.append(f"the LLM is {type(llm.model).__name__}, Qwen2-VL's is its own (qwen2_vl_text)")
    if not renders_image_parts(llm.tokenizer, IMAGE_PAD):
        problems.append(f"the chat template does not write {IMAGE_PAD} for an image, as Qwen2-VL's processor expects")
    if any("lora_" in name for name, _ in model.named_parameters()):
        problems.append("the model still holds LoRA adapters; merge them first (a stage's model.safetensors is merged)")
    if problems:
        raise ValueError("this model does not fit transformers' Qwen2-VL: " + "; ".join(problems) + f". {OWN_FORMAT}.")


def export_hf_qwen2_vl(model: VisionLanguageModel, folder: str | Path) -> Path:
    """Write `model` as a folder that `Qwen2VLForConditionalGeneration.from_pretrained` and
    `AutoProcessor.from_pretrained` load: config, safetensors weights, tokenizer, image processor, chat template."""
    check_fits_qwen2_vl(model)
    folder = Path(folder)
    encoder, llm = model.encoder, model.llm
    tokenizer = llm.tokenizer
    vocab = tokenizer.get_vocab()
    ids = {name: vocab[token] for name, token in SPECIAL_TOKENS.items() if token in vocab}
    config = Qwen2VLConfig(
        vision_config=encoder.model.config.to_dict(),
        text_config=llm.model.config.to_dict(),
        tie_word_embeddings=bool(getattr(llm.model.config, "tie_word_embeddings", False)),
        **ids,
    )
    qwen = Qwen2VLForConditionalGeneration(config).to(next(model.parameters()).dtype)
    missing, unexpected = qwen.load_state_dict(vlmlab_to_qwen2_vl(model.state_dict()), strict=False)
    if missing or unexpected:
        raise ValueError(f"Qwen2-VL's layout differs from this model's: missing {missing}, unexpected {unexpected}")
    qwen.eval().save_pretrained(str(folder))
    r = encoder.recipe
    settings = dict(
        size={"shortest_edge": r.min_pixels, "longest_edge": r.max_pixels},
        patch_size=r.patch_size,
        merge_size=r.merge_size,
        temporal_patch_size=r.temporal_patch_size,
        image_mean=list(r.mean),
        image_std=list(r.std),
        rescale_factor=r.rescale_factor,
        resample=PILImageResampling[r.interpolation.upper()],
    )
    # vlmlab trains on images; the video processor (which the processor requires) gets the same patches and pixels
    Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**settings),
        video_processor=Qwen2VLVideoProcessor(**settings),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    ).save_pretrained(str(folder))
    return folder
