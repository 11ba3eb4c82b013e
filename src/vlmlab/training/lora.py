"""LoRA adapters (peft) on the encoder or the LLM of a stage whose freeze policy says `lora`.

The adapters are injected into the part's backbone in place (`llm.model`, `encoder.model`), so the
model keeps its structure and forward code; only the adapted layers gain `base_layer` / `lora_A` /
`lora_B` children. peft's `PeftModel` handle is kept beside the model, not inside it, to save the
adapters in peft's own format (loadable with `PeftModel.from_pretrained` on the same base) and to merge
them into the base weights when the stage ends, so the stage's `model.safetensors`, the next stage and
`vlmlab-eval` all see a plain model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn


def add_lora(backbone: nn.Module, settings: dict[str, Any], target_modules: str | list[str]) -> PeftModel:
    """Freeze `backbone` and inject trainable LoRA adapters into the layers `target_modules` names
    (module names or "all-linear"). `settings`: r, alpha, dropout (the stage's `lora` config)."""
    config = LoraConfig(
        r=settings["r"],
        lora_alpha=settings["alpha"],
        lora_dropout=settings["dropout"],
        target_modules=target_modules if isinstance(target_modules, str) else list(target_modules),
        bias="none",
    )
    return get_peft_model(backbone, config)


def save_and_merge(adapters: dict[str, PeftModel], folder: Path) -> None:
    """Save each part's adapters to `folder/<part>` (peft format), then merge them into the base weights in place."""
    for part, peft_model in adapters.items():
        peft_model.save_pretrained(str(folder / part))
        peft_model.merge_and_unload()
    adapters.clear()
