"""Learned-query connectors: Flamingo's Perceiver resampler and a BLIP-2-style Q-Former.

Both turn any number of patch features into a fixed number of tokens: learned queries read the
patches through cross-attention.
"""

from __future__ import annotations

import torch
from torch import nn

from vlmlab.models.connectors.base import Connector


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult), nn.GELU(), nn.Linear(dim * mult, dim))


class PerceiverLayer(nn.Module):
    """Flamingo's resampler layer: the latents attend to [patches; latents] (keys and values), then a
    feed-forward block; both residual, pre-normalised."""

    def __init__(self, dim: int, heads: int, head_dim: int, ff_mult: int) -> None:
        super().__init__()
        inner = heads * head_dim
        self.norm_media, self.norm_latents = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.ff = feed_forward(dim, ff_mult)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, T, H*D) -> (B, H, T, D)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        media, normed = self.norm_media(media), self.norm_latents(latents)
        q = self._split(self.to_q(normed))
        k, v = (self._split(t) for t in self.to_kv(torch.cat([media, normed], dim=1)).chunk(2, dim=-1))
        attended = nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        latents = latents + self.to_out(attended)
        return latents + self.ff(latents)


class PerceiverResamplerConnector(Connector):
    """Flamingo's Perceiver resampler (Alayrac et al. 2022): `num_latents` learned latents refined by
    `depth` layers of attention over the patches, at the encoder's width, then a LayerNorm and a linear
    map to the LLM width. Defaults are Flamingo's: 64 latents, depth 6, 8 heads of 64, feed-forward x4."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_in_tokens: int,
        num_latents: int = 64,
        depth: int = 6,
        heads: int = 8,
        head_dim: int = 64,
        ff_mult: int = 4,
    ) -> None:
        super().__init__(in_dim, out_dim, num_in_tokens)
        self.latents = nn.Parameter(torch.randn(num_latents, in_dim) * in_dim**-0.5)
        self.layers = nn.ModuleList(PerceiverLayer(in_dim, heads, head_dim, ff_mult) for _ in range(depth))
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, out_dim)

    @property
    def num_out_tokens(self) -> int:
        return self.latents.shape[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        latents = self.latents.expand(features.shape[0], -1, -1)
        for layer in self.layers:
            latents = layer(features, latents)
        return self.proj(self.norm(latents))


class QFormerLayer(nn.Module):
    """One query-transformer layer: self-attention among the queries, cross-attention to the patches
    (in every `cross_attention_every`-th layer, as BLIP-2), a feed-forward block; pre-normalised."""

    def __init__(self, dim: int, media_dim: int, heads: int, ff_mult: int, cross_attention: bool) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross = None
        if cross_attention:
            self.norm_cross, self.norm_media = nn.LayerNorm(dim), nn.LayerNorm(media_dim)
            self.cross = nn.MultiheadAttention(dim, heads, kdim=media_dim, vdim=media_dim, batch_first=True)
        self.ff = feed_forward(dim, ff_mult)

    def forward(self, media: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        normed = self.norm_self(queries)
        queries = queries + self.self_attn(normed, normed, normed, need_weights=False)[0]
        if self.cross is not None:
            media = self.norm_media(media)
            queries = queries + self.cross(self.norm_cross(queries), media, media, need_weights=False)[0]
        return queries + self.ff(queries)


class QFormerConnector(Connector):
    """A BLIP-2-style Q-Former (Li et al. 2023): `num_queries` learned queries pass through `depth`
    transformer layers of width `hidden_dim`, cross-attending to the patches every
    `cross_attention_every` layers, then a linear map to the LLM width. BLIP-2's sizes are the defaults
    (32 queries, 12 layers of 768 with 12 heads, cross-attention every 2nd layer); it is trained here
    from scratch, without BLIP-2's BERT initialisation and its image-text pre-training objectives."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_in_tokens: int,
        num_queries: int = 32,
        depth: int = 12,
        hidden_dim: int = 768,
        heads: int = 12,
        ff_mult: int = 4,
        cross_attention_every: int = 2,
    ) -> None:
        super().__init__(in_dim, out_dim, num_in_tokens)
        if cross_attention_every < 1 or cross_attention_every > depth:
            raise ValueError(f"QFormerConnector: cross_attention_every={cross_attention_every} must be in [1, {depth}]")
        self.queries = nn.Parameter(torch.randn(num_queries, hidden_dim) * 0.02)
        self.layers = nn.ModuleList(
            QFormerLayer(hidden_dim, in_dim, heads, ff_mult, cross_attention=i % cross_attention_every == 0)
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(hidden_dim)
        self.proj = nn.Linear(hidden_dim, out_dim)

    @property
    def num_out_tokens(self) -> int:
        return self.queries.shape[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        queries = self.queries.expand(features.shape[0], -1, -1)
        for layer in self.layers:
            queries = layer(features, queries)
        return self.proj(self.norm(queries))
