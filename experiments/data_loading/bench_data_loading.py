"""Data-loading benchmark: samples/s of the real pipeline at 336 px, and padding waste of batching orders.

    python experiments/data_loading/bench_data_loading.py                        # both parts
    python experiments/data_loading/bench_data_loading.py --llava-json /datasets/llava/llava_v1_5_mix665k.json

Part 1 writes COCO-sized JPEGs (640x480) and LLaVA-format records to a temporary folder, then times the
training dataloader (read, decode, letterbox to 336 px, normalise, tokenise with the chat template,
collate) with 0, 1 and 2 worker processes. Part 2 compares the padding of random batches with the
grouped sampler's (global pools) and the streaming sampler's (grouping within a shuffle buffer, records in
LitData-sized chunks of 400) on a length distribution like LLaVA-665K's (or on the real file's, if given).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader

from vlmlab.data.chat_format import ChatFormatter
from vlmlab.data.conversation_dataset import ConversationDataset, collate
from vlmlab.data.formats import read_llava
from vlmlab.data.image_processing import ImageProcessor
from vlmlab.data.lengths import SampleLengths, estimate_length
from vlmlab.data.sampler import GroupedMixtureSampler, StreamingMixtureSampler
from vlmlab.data.sampler import padding_waste as sampler_padding_waste
from vlmlab.data.synthetic import tokenizer_corpus
from vlmlab.models.encoders.base import ImagePreprocessing
from vlmlab.models.llms.chat_templates import CHAT_TEMPLATES
from vlmlab.models.llms.tiny_tokenizer import train_tiny_tokenizer

CLIP_336 = ImagePreprocessing(336, 336, (0.4815, 0.4578, 0.4082), (0.2686, 0.2613, 0.2758))
IMAGE_TOKENS = 576  # CLIP ViT-L/14 at 336 px: 24 x 24 patches


def write_dataset(root: Path, num_images: int) -> Path:
    """COCO-like 640x480 JPEGs (quality 90) with shapes on a gradient, and one two-turn record each."""
    generator = torch.Generator().manual_seed(0)
    records = []
    for i in range(num_images):
        image = Image.linear_gradient("L").resize((640, 480)).convert("RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(12):
            x, y, w, h = torch.randint(0, 560, (4,), generator=generator).tolist()
            colour = tuple(torch.randint(0, 256, (3,), generator=generator).tolist())
            draw.rectangle([x, y % 400, x + w % 200, y % 400 + h % 200], fill=colour)
        image.save(root / f"{i:06d}.jpg", quality=90)
        records.append(
            {
                "id": i,
                "image": f"{i:06d}.jpg",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat is the colour of the largest shape?"},
                    {"from": "gpt", "value": "The largest shape is a dark red rectangle near the top."},
                    {"from": "human", "value": "How many shapes are there?"},
                    {"from": "gpt", "value": "There are twelve shapes."},
                ],
            }
        )
    path = root / "records.json"
    path.write_text(json.dumps(records))
    return path


def loading_throughput(path: Path, workers: Sequence[int], batch_size: int, epochs: int) -> dict[int, float]:
    tokenizer = train_tiny_tokenizer(tokenizer_corpus(num_samples=500), vocab_size=512)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.chat_template = CHAT_TEMPLATES["vicuna_v1"]
    formatter = ChatFormatter(tokenizer, "<image>", num_image_tokens=IMAGE_TOKENS, max_length=2048)
    dataset = ConversationDataset(
        read_llava({"file": str(path)}, "train", None), formatter, ImageProcessor(CLIP_336, "letterbox"), task="vqa"
    )
    results = {}
    for num_workers in workers:
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            collate_fn=partial(collate, pad_token_id=tokenizer.pad_token_id),
        )
        for _ in loader:  # warm-up epoch: worker start-up, page cache
            pass
        start = time.perf_counter()
        samples = sum(len(batch["ids"]) for _ in range(epochs) for batch in loader)
        results[num_workers] = samples / (time.perf_counter() - start)
        print(f"workers={num_workers}: {results[num_workers]:.1f} samples/s")
    return results


def llava_665k_like_lengths(seed: int = 0) -> SampleLengths:
    """Token lengths modelled on LLaVA-1.5's mix (source sizes from the LLaVA-1.5 paper, table 7).

    Each source: (records, median text tokens, log-normal spread). Image records add 576 tokens;
    ShareGPT is text-only. The VQA-style sources are the
    many-question-per-image conversations LLaVA-1.5 builds, hence their hundreds of text tokens.
    """
    sources = {
        "llava_instruct": (158_000, 260, 0.6, True),
        "sharegpt": (40_000, 700, 0.8, False),
        "vqav2": (83_000, 110, 0.5, True),
        "gqa": (72_000, 120, 0.5, True),
        "okvqa_aokvqa": (75_000, 50, 0.4, True),
        "ocrvqa": (80_000, 90, 0.4, True),
        "textcaps": (22_000, 40, 0.3, True),
        "refcoco": (48_000, 240, 0.5, True),
        "vg": (86_000, 260, 0.5, True),
    }
    generator = torch.Generator().manual_seed(seed)
    tokens, images = [], []
    for count, median, spread, has_image in sources.values():
        text = (math.log(median) + spread * torch.randn(count, generator=generator)).exp().clamp(8, 2048 - 577)
        tokens += [(IMAGE_TOKENS + int(t)) if has_image else int(t) for t in text]
        images += [has_image] * count
    return SampleLengths(tokens, images)


ORDERS = {
    "random": "random",
    "grouped": "grouped by modality + length (pools of 50 global batches)",
    "streaming": "streaming: chunk by chunk, grouped within a shuffle buffer",
}


def padding_waste(
    lengths: SampleLengths, batch_size: int, num_replicas: int, order: str, shuffle_buffer: int = 4096, chunk: int = 400
) -> tuple[float, int]:
    """(fraction of padded token positions, longest sample of the first step) over one epoch, all ranks.
    `streaming`: the records in LitData chunks of `chunk` records, each process's part shuffled and grouped
    within windows of `shuffle_buffer` samples (`StreamingMixtureSampler`)."""
    table = torch.tensor(lengths.tokens)
    batches, first = [], 0
    for rank in range(num_replicas):
        common = dict(
            lengths=[lengths],
            weights=[1.0],
            batch_size=batch_size * num_replicas,  # global batch: `batch_size` per process
            micro_batch_size=batch_size,
            num_replicas=num_replicas,
            rank=rank,
        )
        if order == "streaming":
            chunks = [chunk] * (len(lengths) // chunk) + ([len(lengths) % chunk] if len(lengths) % chunk else [])
            sampler = StreamingMixtureSampler(**common, chunk_sizes=[chunks], shuffle_buffer=shuffle_buffer)
        else:
            sampler = GroupedMixtureSampler(**common, group_by_length=order == "grouped")
        rank_batches = sampler.micro_batches()
        batches += rank_batches
        first = max(first, int(table[rank_batches[0]].max()))
    return sampler_padding_waste(batches, table), first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per worker count")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--llava-json", type=Path, help="use this LLaVA JSON's estimated lengths for part 2")
    parser.add_argument("--padding-only", action="store_true", help="part 2 only (no image files, no timing)")
    parser.add_argument("--shuffle-buffers", type=int, nargs="+", default=[1024, 4096, 16384])
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads")

    if not args.padding_only:
        with tempfile.TemporaryDirectory() as folder:
            path = write_dataset(Path(folder), args.num_images)
            loading_throughput(path, args.workers, args.batch_size, args.epochs)

    if args.llava_json:
        lengths = SampleLengths.of(estimate_length(r, IMAGE_TOKENS) for r in json.loads(args.llava_json.read_text()))
    else:
        lengths = llava_665k_like_lengths()
    absolute = torch.tensor(lengths.tokens).float()
    print(
        f"{len(lengths)} samples, {lengths.has_image.count(False)} text-only; tokens p50 {absolute.median():.0f}, "
        f"p90 {absolute.quantile(0.9):.0f}, max {absolute.max():.0f}"
    )
    print("| per-GPU batch | GPUs | order | padding waste | longest sample at step 1 |")
    print("|---|---|---|---|---|")
    for batch_size, replicas in ((16, 1), (16, 8), (4, 8)):
        for order in ORDERS:
            for buffer in args.shuffle_buffers if order == "streaming" else [None]:
                waste, first = padding_waste(lengths, batch_size, replicas, order, buffer or 0)
                name = ORDERS[order] + (f", buffer {buffer}" if buffer else "")
                print(f"| {batch_size} | {replicas} | {name} | {100 * waste:.1f} % | {first} |", flush=True)


if __name__ == "__main__":
    main()
