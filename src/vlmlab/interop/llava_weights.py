"""Weight names of `transformers.LlavaForConditionalGeneration` <-> vlmlab's `VisionLanguageModel`.

Valid for LLaVA checkpoints whose parts fit vlmlab's: a transformers CLIP/SigLIP vision tower
(`HFVisionEncoder`), LLaVA's two-layer projector (`MLPConnector(depth=2)`) and a causal LM.
transformers itself converts older checkpoint layouts on load, so this maps the layout a loaded
`LlavaForConditionalGeneration` has.
"""

from __future__ import annotations

import torch

# (LLaVA prefix, vlmlab prefix)
LLAVA_TO_VLMLAB = (
    ("model.vision_tower.", "encoder.model."),
    ("model.multi_modal_projector.linear_1.", "connector.layers.0."),
    ("model.multi_modal_projector.linear_2.", "connector.layers.2."),
    ("model.language_model.", "llm.model.model."),
    ("lm_head.", "llm.model.lm_head."),
    ("model.image_newline", "connector.image_newline"),  # LLaVA-NeXT's row-end token
)


def renamed(
    state_dict: dict[str, torch.Tensor], prefixes: list[tuple[str, str]], source: str, target: str
) -> dict[str, torch.Tensor]:
    """Replace each key's (from, to) prefix; a key no prefix matches is an error, not a silent drop."""
    renamed = {}
    for key, value in state_dict.items():
        for old, new in prefixes:
            if key.startswith(old):
                renamed[new + key[len(old) :]] = value
                break
        else:
            raise KeyError(f"{source} weight '{key}' has no counterpart in {target}'s layout")
    return renamed


def llava_to_vlmlab(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a LLaVA state dict to vlmlab's names."""
    return renamed(state_dict, list(LLAVA_TO_VLMLAB), "LLaVA", "vlmlab")


def vlmlab_to_llava(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename vlmlab's weights to LLaVA's."""
    return renamed(state_dict, [(new, old) for old, new in LLAVA_TO_VLMLAB], "vlmlab", "LLaVA")
