"""Sequence packing: padding waste and effective tokens/s of random, length-grouped and packed batches.

    .venv/bin/python experiments/benchmarks/bench_packing.py           # ~5 min on 2 cores

Lengths: LLaVA-665K-like (experiments/data_loading's model of the mix: 576 image tokens plus text,
40K text-only records; p50 ~717, p90 ~1000, max 2047 tokens). Part 1 counts padded token positions
over one whole epoch. Part 2 trains a tiny VLM (one forward, backward and AdamW step per
micro-batch) on samples of those lengths and reports effective tokens/s (real tokens, not padding,
per second). Variants, each round timing the same number of micro-batches of each, interleaved:
`random` (padded), `grouped` (GroupedMixtureSampler's length grouping, padded), `packed sdpa`
(the random batches packed, plain sdpa with the block-diagonal mask), `packed sdpa_varlen` (the same
packed rows, attention per sample). Random and both packed variants train on the very same samples.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from vlmlab.data.chat_format import IGNORE_INDEX
from vlmlab.data.conversation_dataset import collate
from vlmlab.data.lengths import SampleLength, SampleLengths
from vlmlab.data.packing import collate_packed, pack_rows
from vlmlab.data.sampler import GroupedMixtureSampler
from vlmlab.models.connectors import MLPConnector
from vlmlab.models.encoders import TimmVisionEncoder
from vlmlab.models.llms import VARLEN_ATTENTION, LanguageModel
from vlmlab.models.vlm import VisionLanguageModel

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1] / "data_loading")]
from _common import machine, tokenizer  # noqa: E402
from bench_data_loading import IMAGE_TOKENS, llava_665k_like_lengths  # noqa: E402

PACK_LENGTH = 2048  # LLaVA-1.5's max_length: every sample fits one row


def padding_waste(lengths: SampleLengths, batch_size: int) -> dict[str, float]:
    """Padded share of token positions over one epoch: random, grouped, and random batches packed."""
    absolute = torch.tensor(lengths.tokens)
    waste = {}
    for name, grouped in (("random", False), ("grouped", True)):
        sampler = GroupedMixtureSampler([lengths], [1.0], batch_size, group_by_length=grouped)
        batch_lengths = absolute[torch.stack(sampler.global_batches())]  # (num_batches, batch_size)
        waste[name] = 1 - int(batch_lengths.sum()) / (int(batch_lengths.max(dim=1).values.sum()) * batch_size)
        if not grouped:
            positions = 0
            for row_lengths in batch_lengths.tolist():
                rows = pack_rows(row_lengths, PACK_LENGTH)
                positions += len(rows) * max(sum(row_lengths[i] for i in row) for row in rows)
            waste["packed"] = 1 - int(batch_lengths.sum()) / positions
    return waste


def sample(length: SampleLength, vocab: int, image_token_id: int, generator: torch.Generator) -> dict:
    """A training sample of `length` tokens: (image) prompt, then an answer of a third of the text."""
    n, has_image = length
    ids = torch.randint(4, vocab, (n,), generator=generator)
    ids[ids == image_token_id] = 4
    if has_image:
        ids[2 : 2 + IMAGE_TOKENS] = image_token_id
    labels = torch.full((n,), IGNORE_INDEX)
    answer = max(1, (n - (2 + IMAGE_TOKENS if has_image else 0)) // 3)
    labels[-answer:] = ids[-answer:]
    pixels = torch.randn(1, 3, 48, 48, generator=generator) if has_image else None
    return {"input_ids": ids, "labels": labels, "pixel_values": pixels, "id": 0, "task": "bench"}


def build_model(tok, hidden_size: int, layers: int) -> VisionLanguageModel:
    """A 1-block ViT giving 576 patch tokens (48 px, patch 2; frozen) + MLP + a Llama of `layers` x `hidden_size`.

    The LLM's width sets how much of the step is attention: per layer and token, attention costs about
    4·T·d FLOPs against the linear layers' ~24·d² (T the attended length), a ratio of T / 6d. LLaVA-1.5's
    7B LLM (d = 4096) at these lengths (T ~ 750) spends ~3 % on attention; a 128-wide toy spends ~100 %,
    which says nothing about packing on real models. 512 wide gives ~25 %, still attention-heavier than a 7B.
    """
    torch.manual_seed(0)
    encoder = TimmVisionEncoder(
        "vit_tiny_patch16_224",
        image_size=48,
        feature_layer=-1,
        model_kwargs=dict(patch_size=2, embed_dim=32, depth=1, num_heads=2),
    )
    assert encoder.num_patches == IMAGE_TOKENS
    llama = dict(
        model_type="llama",
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 8 // 3,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden_size // 64),
        max_position_embeddings=PACK_LENGTH,
    )
    llm = LanguageModel.from_config(llama, tok, chat_template="simple")
    model = VisionLanguageModel(encoder, MLPConnector(32, hidden_size, IMAGE_TOKENS), llm)
    model.encoder.requires_grad_(False).eval()
    return model


def step(model: VisionLanguageModel, optimizer: torch.optim.Optimizer, batch: dict) -> None:
    loss = model.batch_loss(batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8, help="micro-batch (samples per step)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed micro-batches per variant per round")
    parser.add_argument("--hidden-size", type=int, default=512, help="LLM width (attention share: build_model)")
    parser.add_argument("--layers", type=int, default=2, help="LLM decoder layers")
    args = parser.parse_args()
    lengths = llava_665k_like_lengths()
    absolute = torch.tensor(lengths.tokens).float()
    print(
        f"{machine()}; {len(lengths)} samples, {lengths.has_image.count(False)} text-only; tokens p50 "
        f"{absolute.median():.0f}, p90 {absolute.quantile(0.9):.0f}, max {absolute.max():.0f}"
    )
    print("| micro-batch | random | grouped | packed, rows of 2048 | packed, one row |\n|---|---|---|---|---|")
    for batch_size in (8, 16):
        waste = padding_waste(lengths, batch_size)
        print(
            f"| {batch_size} | "
            + " | ".join(f"{100 * waste[k]:.1f} %" for k in ("random", "grouped", "packed"))
            + " | 0.0 % |"
        )

    tok = tokenizer()
    model = build_model(tok, args.hidden_size, args.layers)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    pad, image_token_id, vocab = tok.pad_token_id, model.image_token_id, len(tok)
    generator = torch.Generator().manual_seed(0)
    subset = lengths.select(torch.randperm(len(lengths), generator=generator)[:20_000].tolist())
    orders = {
        grouped: GroupedMixtureSampler([subset], [1.0], args.batch_size, group_by_length=grouped).global_batches()
        for grouped in (False, True)
    }
    picks = torch.randperm(min(len(o) for o in orders.values()), generator=generator).tolist()
    variants = ("random", "grouped", "packed sdpa", f"packed {VARLEN_ATTENTION}")
    rates: dict[str, list[float]] = {v: [] for v in variants}
    wasted: dict[str, list[float]] = {v: [] for v in variants}

    def run(variant: str, batch_indices: list[torch.Tensor]) -> float:
        packed = variant.startswith("packed")
        model.llm.model.set_attn_implementation(VARLEN_ATTENTION if variant.endswith("varlen") else "sdpa")
        batches = []
        for indices in batch_indices:
            samples = [sample(subset[i], vocab, image_token_id, generator) for i in indices.tolist()]
            # Dense-mask sdpa pays for a row's full attention: rows of 2048. Per-sample attention: one row.
            pack_length = None if variant.endswith("varlen") else PACK_LENGTH
            batches.append(collate_packed(samples, pad, pack_length) if packed else collate(samples, pad))
        real = sum(int(b["attention_mask"].sum()) for b in batches)
        positions = sum(b["input_ids"].numel() for b in batches)
        start = time.perf_counter()
        for batch in batches:
            step(model, optimizer, batch)
        elapsed = time.perf_counter() - start
        wasted[variant].append(1 - real / positions)
        return real / elapsed

    run("random", [orders[False][picks[-1]]])  # warm-up
    for r in range(args.rounds):
        chosen = picks[r * args.steps : (r + 1) * args.steps]
        for k in range(len(variants)):
            variant = variants[(r + k) % len(variants)]  # rotate which variant goes first
            order = orders[variant == "grouped"]
            rates[variant].append(run(variant, [order[i] for i in chosen]))
        print(f"round {r + 1}: " + ", ".join(f"{v} {rates[v][-1]:.0f} tok/s" for v in variants), flush=True)

    print(
        f"\nmicro-batch {args.batch_size}, {args.rounds} rounds x {args.steps} steps per variant, LLM "
        f"{args.layers} x {args.hidden_size}"
    )
    print("| variant | effective tokens/s (median) | padding in the timed batches | x random (median of rounds) |")
    print("|---|---|---|---|")
    for v in variants:
        ratio = statistics.median(a / b for a, b in zip(rates[v], rates["random"]))
        print(f"| {v} | {statistics.median(rates[v]):.0f} | {100 * statistics.mean(wasted[v]):.1f} % | {ratio:.2f} |")


if __name__ == "__main__":
    main()
