"""One visual-token budget, three ways to spend it: every image resized to one square (`resize`) or each image at its
own aspect ratio within the budget (`native`), through the same tower (the tiny Qwen2-VL preset, 2x2 merger); and
LLaVA-NeXT's tiles (`anyres`), which need a fixed-size tower: a ViT of the same depth and width with one token per
28 px patch, as the Qwen2-VL tower has one per 28 px after merging.

    .venv/bin/python experiments/native_resolution/bench_token_budget.py     # ~8 min, one torch thread

Images: 64 of eight shapes from 60x280 to 280x60 px (receipts, strips, squares), decoded and patched by vlmlab's
own pipeline. `resize` stretches each to the square of the budget (`model.encoder.keep_aspect_ratio=false`: side
sqrt(budget) x 28 px, exactly `budget` tokens); `native` lets the processor choose (at most `budget`); `anyres` cuts
each into 56 px tiles (4 tokens each) on the grid that fits it best among those of at most budget / 4 - 1 tiles,
beside the whole image as the base tile (at most `budget` tokens, fewer where the unpadding drops rows or columns).
Prompts: one image and 24 text tokens (6 of them the answer). For each budget (16, 36, 64, 144) and policy: image
tokens per image, the tower's patches per batch of 8, the share of padding in padded LLM rows, and the samples/s of
a training step (forward, backward, AdamW: tower, connector and a 2-layer LLM) on padded rows and on packed rows
(`sdpa_varlen`, no padding), the variants interleaved round by round, median and range of 7 rounds of 8 batches.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch
from PIL import Image

from vlmlab.data.conversation_dataset import collate
from vlmlab.data.image_processing import NativeImageProcessor, encoder_image_processor
from vlmlab.data.packing import collate_packed
from vlmlab.models.builder import build_vlm
from vlmlab.models.vlm import VisionLanguageModel
from vlmlab.testing import TINY_OVERRIDES, compose_train

SHAPES = [(60, 280), (280, 60), (120, 360), (360, 120), (200, 200), (150, 300), (300, 150), (240, 240)]
BUDGETS = (16, 36, 64, 144)
POLICIES = ("resize", "native", "anyres")
TEXT_TOKENS, ANSWER_TOKENS = 24, 6
BATCH = 8
LLM = [  # a 2-layer 64-wide LLM
    "model.llm.config.hidden_size=64",
    "model.llm.config.intermediate_size=128",
    "model.llm.config.num_hidden_layers=2",
    "model.llm.attn_implementation=sdpa_varlen",
]
NATIVE_TOWER = ["model/encoder=tiny_qwen2_vl", "model.encoder.min_tokens=4"]  # as the tests'
TILE = 56  # px: 2 x 2 tokens of 28 px
TILE_TOWER = [  # a timm ViT as deep and wide as the Qwen2-VL tower, one token per 28 px patch
    "model/encoder=tiny_vit",
    f"model.encoder.image_size={TILE}",
    "model.encoder.model_kwargs.patch_size=28",
    "model.encoder.model_kwargs.embed_dim=32",
    "model.encoder.model_kwargs.depth=2",
]


def images(count: int) -> list[Image.Image]:
    generator = np.random.default_rng(0)
    shapes = [SHAPES[i % len(SHAPES)] for i in range(count)]
    return [Image.fromarray(generator.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]


def build(budget: int, policy: str) -> VisionLanguageModel:
    tower = TILE_TOWER if policy == "anyres" else [*NATIVE_TOWER, f"model.encoder.max_tokens={budget}"]
    if policy == "resize":
        tower.append("model.encoder.keep_aspect_ratio=false")  # the square of the budget
    torch.manual_seed(0)
    return build_vlm(compose_train([*TINY_OVERRIDES, *LLM, *tower]).model)


def tile_grids(budget: int) -> dict:
    """`data.anyres` of a budget: every grid of at most budget / 4 - 1 tiles of 4 tokens (the base tile takes 4)."""
    most = budget // 4 - 1
    grids = [[r, c] for r in range(1, most + 1) for c in range(1, most + 1) if r * c <= most]
    return {"grid_pinpoints": grids, "max_tiles": most}


def samples(model: VisionLanguageModel, pictures: list[Image.Image], policy: str, budget: int) -> list[dict]:
    """Training samples: 18 prompt tokens, the image's tokens, 6 answer tokens (trained on)."""
    if policy == "anyres":
        processor = encoder_image_processor(model.encoder, "anyres", tile_grids(budget))
    else:
        processor = NativeImageProcessor(model.encoder.recipe)
    generator = torch.Generator().manual_seed(0)
    out = []
    for k, picture in enumerate(pictures):
        image = processor(picture)
        count = model.image_layout.count(image.grid)
        text = torch.randint(3, 250, (TEXT_TOKENS,), generator=generator)
        prompt, answer = text[: TEXT_TOKENS - ANSWER_TOKENS], text[TEXT_TOKENS - ANSWER_TOKENS :]
        ids = torch.cat([prompt[:4], torch.full((count,), model.image_token_id), prompt[4:], answer])
        labels = torch.full_like(ids, -100)
        labels[-ANSWER_TOKENS:] = answer
        grid = torch.tensor([image.grid])
        out.append({"input_ids": ids, "labels": labels, "pixel_values": image.pixels, "image_grids": grid,
                    "id": str(k), "task": "bench", "source": "bench"})  # fmt: skip
    return out


def figures(batch_samples: list[list[dict]], model: VisionLanguageModel) -> dict[str, float]:
    tokens = [model.image_layout.count(s["image_grids"][0]) for b in batch_samples for s in b]
    padded = [collate(b, 0) for b in batch_samples]
    real = sum(int(b["attention_mask"].sum()) for b in padded)
    positions = sum(b["attention_mask"].numel() for b in padded)
    # the tower's sequence: packed 14 px patches, or tiles x the ViT's patches per tile
    per_row = 1 if model.native_resolution else model.encoder.num_patches
    patches = [int(sum(s["pixel_values"].shape[0] for s in b)) * per_row for b in batch_samples]
    return {
        "image_tokens_mean": statistics.mean(tokens),
        "image_tokens_min": min(tokens),
        "image_tokens_max": max(tokens),
        "patches_per_batch": statistics.mean(patches),
        "padding_share": 1 - real / positions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--budgets", type=int, nargs="*", default=list(BUDGETS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    pictures = images(8 * BATCH)
    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} thread, {len(pictures)} images of {len(SHAPES)} shapes"
    )
    print("| budget | policy | image tokens mean (min-max) | patches / batch | padding share (padded rows) | "
          "samples/s padded: median (range) | samples/s packed: median (range) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for budget in args.budgets:
        models = {policy: build(budget, policy).train() for policy in POLICIES}
        optimizers = {p: torch.optim.AdamW(m.parameters(), lr=1e-4) for p, m in models.items()}
        variants = {}
        for policy, model in models.items():
            made = samples(model, pictures, policy, budget)
            batches = [made[i : i + BATCH] for i in range(0, len(made), BATCH)]
            variants[policy] = (batches, figures(batches, model))
        times: dict[tuple[str, str], list[float]] = {}
        runs = [(policy, rows) for policy in variants for rows in ("padded", "packed")]
        for r in range(args.rounds + 1):  # round 0: warm-up
            for policy, rows in runs[r % len(runs) :] + runs[: r % len(runs)]:
                batches, model, optimizer = variants[policy][0], models[policy], optimizers[policy]
                start = time.perf_counter()
                for b in batches:
                    batch = collate(b, 0) if rows == "padded" else collate_packed(b, 0, pack_length=None)
                    optimizer.zero_grad(set_to_none=True)
                    model.batch_loss(batch).backward()
                    optimizer.step()
                if r:
                    times.setdefault((policy, rows), []).append(len(pictures) / (time.perf_counter() - start))
        for policy, (_, f) in variants.items():
            rate = {rows: times[policy, rows] for rows in ("padded", "packed")}
            shown = {k: f"{statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})" for k, v in rate.items()}
            print(f"| {budget} | {policy} | {f['image_tokens_mean']:.1f} ({f['image_tokens_min']}-"
                  f"{f['image_tokens_max']}) | {f['patches_per_batch']:.0f} | {f['padding_share']:.1%} | "
                  f"{shown['padded']} | {shown['packed']} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
