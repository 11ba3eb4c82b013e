"""`sdpa_varlen`: PyTorch SDPA that attends within each packed sample only, on any device.

Packed rows (`vlmlab.data.packing`) carry `cu_seq_lens_q` (sample boundaries in the flattened batch,
as flash-attention's variable-length kernel takes them). `flash_attention_2` uses them natively;
plain `sdpa` and `eager` instead get a dense block-diagonal mask from the restarting `position_ids`,
which is correct but computes attention for the whole row, every pair of samples included. This
implementation runs SDPA once per sample (causal), so a packed row costs the sum of its samples'
attention, not the square of its length. Batches without `cu_seq_lens_q` (unpacked training,
evaluation, generation with a KV cache) go through transformers' own `sdpa` unchanged.

Registered on import with transformers' attention and mask interfaces: select it with
`model.llm.attn_implementation=sdpa_varlen`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "sdpa_varlen"


def varlen_sdpa_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query [B, H, T, hd], key/value [B, H_kv, T, hd] -> ([B, T, H, hd], None), as transformers' sdpa."""
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    batch, heads, length, head_dim = query.shape
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)

    def flat(x: torch.Tensor) -> torch.Tensor:  # (B, H, T, hd) -> (1, H, B*T, hd), rows end to end
        return x.transpose(0, 1).reshape(1, heads, batch * length, head_dim)

    # split, not slicing: the backward of one split is one concatenation, while each slice's backward
    # would write into its own zero tensor of the whole row (a cost of samples x row length).
    lengths = cu_seq_lens_q.diff().tolist()
    per_sample = zip(*(flat(x).split(lengths, dim=2) for x in (query, key, value)))
    out = torch.cat(
        [
            nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling, is_causal=True)
            for q, k, v in per_sample
        ],
        dim=2,
    )  # (1, H, B*T, hd)
    return out.view(heads, batch, length, head_dim).permute(1, 2, 0, 3), None  # (B, T, H, hd)


def varlen_sdpa_mask(*args: Any, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor | None:
    """sdpa's mask for padded batches; none for packed ones (their boundaries come as `cu_seq_lens_q`),
    so the dense block-diagonal mask of a long packed row is never built."""
    return None if attention_mask is None else sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


AttentionInterface.register(NAME, varlen_sdpa_attention)
AttentionMaskInterface.register(NAME, varlen_sdpa_mask)
