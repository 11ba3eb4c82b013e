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
)


def llava_to_vlmlab(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a LLaVA state dict to vlmlab's names; an unknown key is an error, not a silent drop."""
    renamed = {}
    for key, value in state_dict.items():
        for llava_prefix, vlmlab_prefix in LLAVA_TO_VLMLAB:
            if key.startswith(llava_prefix):
                renamed[vlmlab_prefix + key[len(llava_prefix) :]] = value
                break
        else:
            raise KeyError(f"LLaVA weight '{key}' has no counterpart in vlmlab's model")
    return renamed
