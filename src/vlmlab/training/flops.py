"""FLOPs of one training micro-batch, for the MFU that Lightning's `ThroughputMonitor` logs.

Model FLOPs as in PaLM's MFU: the work the model needs, not what the hardware ran, so recomputation
(activation checkpointing, the chunked loss's backward) and padding are not counted. Per part:

- encoder: forward FLOPs per image, counted once by `FlopCounterMode` when the encoder probes its
  shapes (`VisionEncoder.flops_per_image`); the count of tiles (one per image unless tiled) comes from the batch;
  a native-resolution encoder's from each image's patches n, a x n + b x n^2 (`NativeResolutionEncoder.flops`);
- connector: forward FLOPs per image (a native-resolution encoder's: per token), counted the same way when the
  estimate is built;
- LLM: 2 x (decoder matmul weights) per real token, 2 x d x V per token that reaches `lm_head` (every
  token with `loss: full`, answer targets only with `loss: chunked`), and attention's two T x T
  products, 4 x layers x heads x head_dim x T^2 per row (T = the row's real tokens; packed rows are
  counted as one sequence, an over-estimate).

The backward pass costs twice the forward for a part whose weights train (input and weight
gradients), once for a part that is frozen or trained through LoRA adapters but has trained parts
before it (input gradients only, the adapters' own weight gradients are negligible), and nothing
for a frozen part with nothing trained before it. `tests/test_flops.py` checks the estimate against
`FlopCounterMode` on a real forward and backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vlmlab.models.batch import Batch
from vlmlab.models.encoders.native_resolution import NativeResolutionEncoder, PatchFlops
from vlmlab.models.image_layout import NativeTokenLayout
from vlmlab.models.vlm import VisionLanguageModel
from vlmlab.training.stage import PARTS, StageSpec


def _passes(stage: StageSpec) -> dict[str, int]:
    """Forward + backward cost per part, in units of that part's forward FLOPs (see module docstring)."""
    passes, trained_before = {}, False
    for part in PARTS:  # the order data flows through the model
        mode = stage.train[part]
        passes[part] = 3 if mode == "full" else 2 if mode == "lora" or trained_before else 1
        trained_before = trained_before or mode != "frozen"
    return passes


@dataclass(frozen=True)
class FlopsEstimate:
    """Per-part constants of the model, so that each batch's estimate is a few integer operations."""

    passes: dict[str, int]
    encoder_per_image: int  # a native-resolution encoder's: 0, its FLOPs come from `native`
    connector_per_image: int  # a native-resolution encoder's: per token
    llm_linear: int  # decoder matmul weights (LoRA adapters included), lm_head excluded
    lm_head: int  # d x V
    attention_width: int  # layers x heads x head_dim
    chunked_loss: bool
    # a native-resolution encoder's FLOPs of a batch's grids, and its tokens per image of a grid
    native: tuple[PatchFlops, NativeTokenLayout] | None = None

    @classmethod
    def of(cls, model: VisionLanguageModel, stage: StageSpec) -> FlopsEstimate:
        """Count the model's constants; call before the model is sharded (the connector runs once)."""
        head = model.llm.model.get_output_embeddings()
        linear = sum(m.weight.numel() for m in model.llm.model.modules() if isinstance(m, nn.Linear) and m is not head)
        config = model.llm.model.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        param = next(model.connector.parameters(), None)
        native = model.encoder if isinstance(model.encoder, NativeResolutionEncoder) else None
        features = torch.zeros(
            1,
            1 if native is not None else model.encoder.num_patches,
            model.encoder.output_dim,
            dtype=param.dtype if param is not None else torch.float32,
            device=param.device if param is not None else None,
        )
        # Attention as matmuls, which the counter sees (as the encoder's probe). Not under no_grad: the
        # counter's module tracker hooks the gradients of module inputs, and a learned-query connector
        # (Perceiver) passes its latents, a parameter, into its layers, which no_grad leaves hookless.
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model.connector(features)
        return cls(
            passes=_passes(stage),
            encoder_per_image=0 if native is not None else model.encoder.flops_per_image,
            connector_per_image=int(counter.get_total_flops()),
            llm_linear=linear,
            lm_head=head.weight.numel(),
            attention_width=config.num_hidden_layers * config.num_attention_heads * head_dim,
            chunked_loss=stage.loss == "chunked",
            native=None if native is None else (native.flops, native.token_layout),
        )

    def __call__(self, batch: Batch) -> int:
        """Training FLOPs (forward + backward) of `batch` (input_ids, attention_mask, labels, images)."""
        if "input_ids" not in batch:
            return 0
        lengths = batch["attention_mask"].sum(dim=1)  # (B,) real tokens per row
        tokens = int(lengths.sum())
        head_tokens = int((batch["labels"][:, 1:] != -100).sum()) if self.chunked_loss else tokens
        llm = 2 * self.llm_linear * tokens + 2 * self.lm_head * head_tokens
        llm += 4 * self.attention_width * int((lengths**2).sum())
        features = batch.get("image_features")
        pixels = batch.get("pixel_values")
        num_tiles = len(features if features is not None else pixels if pixels is not None else ())
        encoder = 0 if features is not None else num_tiles * self.encoder_per_image  # cached features: no encoder
        connector = num_tiles * self.connector_per_image
        grids = batch.get("image_grids")
        if self.native is not None and pixels is not None and grids is not None:
            flops, layout = self.native
            encoder = flops(grids)
            connector = int(layout.counts(grids).sum()) * self.connector_per_image
        return self.passes["encoder"] * encoder + self.passes["connector"] * connector + self.passes["llm"] * llm
