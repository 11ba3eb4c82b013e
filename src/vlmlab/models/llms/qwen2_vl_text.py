"""Qwen2-VL's language model as a causal LM of its own, and the M-RoPE positions its image tokens take.

transformers has Qwen2-VL's text decoder (`Qwen2VLTextModel`) only inside `Qwen2VLForConditionalGeneration`, beside
the vision tower. vlmlab keeps the tower as its encoder (`Qwen2VLVisionEncoder`), so the LLM is the decoder and
`lm_head` laid out as every other causal LM (`model` + `lm_head`): `Qwen2VLTextForCausalLM`, registered with
`AutoModelForCausalLM` for `model_type: qwen2_vl_text` (so `LanguageModel.from_config` builds it).

M-RoPE (multimodal rotary positions): each token has three positions (frames, rows, columns). A text token has its
1-D position in all three. An image's tokens, on its merged grid (t, h, w), take (s + frame, s + row, s + column)
where s is the position after the text before it; the text after the image continues at s + max(t, h, w)
(`Qwen2VLModel.get_rope_index` of transformers 5.24, which `mrope_positions` reproduces and the tests compare with).
Generation goes on from the last position + 1, as `GenerationMixin` extends 3-row `position_ids`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLPreTrainedModel, Qwen2VLTextModel


class Qwen2VLTextForCausalLM(Qwen2VLPreTrainedModel, GenerationMixin):
    """`Qwen2VLTextModel` + `lm_head`: Qwen2-VL's language model without its vision tower. Takes 1-row
    `position_ids` (text only, or packed rows' restarts), 3-row ones (M-RoPE) or 4-row ones (packed M-RoPE: the
    restarts, then the three rows)."""

    config_class = Qwen2VLTextConfig
    config: Qwen2VLTextConfig
    base_model_prefix = "model"
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _no_split_modules = ["Qwen2VLDecoderLayer"]

    def __init__(self, config: Qwen2VLTextConfig) -> None:
        super().__init__(config)
        self.model = Qwen2VLTextModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache)


AutoModelForCausalLM.register(Qwen2VLTextConfig, Qwen2VLTextForCausalLM, exist_ok=True)


def uses_mrope(model: nn.Module) -> bool:
    """Whether a causal LM takes M-RoPE positions (three rows) for its image tokens."""
    return isinstance(model, Qwen2VLTextForCausalLM)


def sequence_positions(
    input_ids: Sequence[int], image_token_id: int, token_grids: Sequence[Sequence[int]]
) -> tuple[torch.Tensor, int]:
    """M-RoPE positions [3, len(input_ids)] of one sequence whose images' token runs have the merged grids
    `token_grids` (frames, rows, columns), in order; and how many grids it used. Each run is as long as its grid's
    tokens, so images side by side are told apart by their counts."""
    ids = list(input_ids)
    rows = torch.empty(3, len(ids), dtype=torch.long)
    position, i, used = 0, 0, 0
    while i < len(ids):
        if ids[i] != image_token_id:  # a text run up to the next image token
            end = ids.index(image_token_id, i) if image_token_id in ids[i:] else len(ids)
            rows[:, i:end] = torch.arange(position, position + end - i)
            position, i = position + end - i, end
            continue
        if used == len(token_grids):
            raise ValueError("the batch has more image token runs than image grids")
        frames, height, width = (int(v) for v in token_grids[used])
        count = frames * height * width
        t, h, w = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij")
        rows[:, i : i + count] = torch.stack([t, h, w]).reshape(3, -1) + position
        position += max(frames, height, width)
        i, used = i + count, used + 1
    return rows, used


def mrope_positions(
    input_ids: torch.Tensor,
    image_token_id: int,
    token_grids: torch.Tensor | None,
    attention_mask: torch.Tensor | None = None,
    packed_positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """M-RoPE position ids of a batch [B, T] whose image runs have the merged grids `token_grids` ([num_images, 3],
    in row-major order over the batch).

    Padded rows (`attention_mask`, either side): each row's real tokens from 0, padding at 0 (as transformers'
    `get_rope_index`): [3, B, T]. Packed rows (`packed_positions`, 1-D positions restarting at 0 at each sample):
    each sample from 0, returned under its restarts (which transformers builds the block-diagonal mask from):
    [4, B, T].
    """
    grids = [] if token_grids is None else token_grids.tolist()
    batch, length = input_ids.shape
    out = torch.zeros(3, batch, length, dtype=torch.long)
    used = 0
    for row in range(batch):
        if packed_positions is not None:
            starts = (packed_positions[row] == 0).nonzero().flatten().tolist() + [length]
            spans = [(a, b) for a, b in zip(starts, starts[1:])]
        else:
            real = torch.ones(length, dtype=torch.bool) if attention_mask is None else attention_mask[row].bool()
            spans = [(None, real)]
        for start, end in spans:
            where = slice(start, end) if start is not None else end
            positions, taken = sequence_positions(input_ids[row, where].tolist(), image_token_id, grids[used:])
            out[:, row, where] = positions
            used += taken
    if used != len(grids):
        raise ValueError(f"the batch has {used} image token runs but {len(grids)} image grids")
    out = out.to(input_ids.device)
    return torch.cat([packed_positions[None], out]) if packed_positions is not None else out
