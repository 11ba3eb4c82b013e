"""One visual-token budget, two ways to spend it: every image resized to one square (`resize`) or each image at its
own aspect ratio within the budget (`native`), through the same tower (the tiny Qwen2-VL preset, 2x2 merger).

    .venv/bin/python experiments/native_resolution/bench_token_budget.py     # ~4 min on 2 cores, one torch thread

Images: 64 of eight shapes from 60x280 to 280x60 px (receipts, strips, squares), decoded and patched by vlmlab's
own pipeline (`NativeImageProcessor`); `resize` first stretches each to the square of the budget (side
sqrt(budget) x 28 px), which gives exactly `budget` tokens, `native` lets the processor choose (at most
`budget`). Prompts: one image and 24 text tokens (6 of them the answer). For each budget (16, 36, 64, 144) and
policy: image tokens per image, encoder patches per batch of 8, the share of padding in padded LLM rows, and the
samples/s of a training step (forward, backward, AdamW: tower, connector and a 2-layer LLM) on padded rows and
on packed rows (`sdpa_varlen`, no padding), the variants interleaved round by round, median and range of 7
rounds of 8 batches.
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
from vlmlab.data.image_processing import NativeImageProcessor
from vlmlab.data.packing import collate_packed
from vlmlab.models.builder import build_vlm
from vlmlab.models.vlm import VisionLanguageModel
from vlmlab.testing import TINY_OVERRIDES, compose_train

SHAPES = [(60, 280), (280, 60), (120, 360), (360, 120), (200, 200), (150, 300), (300, 150), (240, 240)]
BUDGETS = (16, 36, 64, 144)
TEXT_TOKENS, ANSWER_TOKENS = 24, 6
BATCH = 8
MODEL = [  # the tiny tower (as the tests'), a 2-layer 64-wide LLM
    "model/encoder=tiny_qwen2_vl",
    "model.llm.config.hidden_size=64",
    "model.llm.config.intermediate_size=128",
    "model.llm.config.num_hidden_layers=2",
    "model.llm.attn_implementation=sdpa_varlen",
]


def images(count: int) -> list[Image.Image]:
    generator = np.random.default_rng(0)
    shapes = [SHAPES[i % len(SHAPES)] for i in range(count)]
    return [Image.fromarray(generator.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]


def build(budget: int) -> VisionLanguageModel:
    overrides = [*TINY_OVERRIDES, *MODEL, f"model.encoder.max_tokens={budget}", "model.encoder.min_tokens=4"]
    torch.manual_seed(0)
    return build_vlm(compose_train(overrides).model)


def samples(model: VisionLanguageModel, pictures: list[Image.Image], policy: str, budget: int) -> list[dict]:
    """Training samples: 18 prompt tokens, the image's tokens, 6 answer tokens (trained on)."""
    processor = NativeImageProcessor(model.encoder.recipe)
    side = int(budget**0.5) * model.encoder.recipe.patch_size * model.encoder.recipe.merge_size
    generator = torch.Generator().manual_seed(0)
    out = []
    for k, picture in enumerate(pictures):
        image = processor(picture.resize((side, side)) if policy == "resize" else picture)
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
    patches = [int(sum(s["pixel_values"].shape[0] for s in b)) for b in batch_samples]
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
        model = build(budget).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        variants = {}
        for policy in ("resize", "native"):
            made = samples(model, pictures, policy, budget)
            batches = [made[i : i + BATCH] for i in range(0, len(made), BATCH)]
            variants[policy] = (batches, figures(batches, model))
        times: dict[tuple[str, str], list[float]] = {}
        runs = [(policy, rows) for policy in variants for rows in ("padded", "packed")]
        for r in range(args.rounds + 1):  # round 0: warm-up
            for policy, rows in runs[r % len(runs) :] + runs[: r % len(runs)]:
                batches = variants[policy][0]
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
