"""Host memory of the training input pipeline on a LLaVA-665K-sized instruction file, by loader workers.

    python experiments/data_loading/bench_memory.py                      # writes the file once, then 0, 2, 4 workers
    python experiments/data_loading/bench_memory.py --workers 0 4 --batches 400

The file has the 665K mixture's shape: 665,298 records, 40K of them text-only multi-turn chats
(ShareGPT), ~158K multi-turn image conversations with long answers (LLaVA-Instruct), the rest VQA-style
records of 1-10 short questions about one image (VQAv2, GQA, OCR-VQA, ...); about 1 GB of JSON like the
real one. Its images are 64 JPEGs of COCO's sizes (640x480, 480x640, 640x427, 500x375, ...; textured, so
they do not compress to nothing), shared by all records.

Each worker count runs in a fresh process: the data module reads the file, the training loader starts its
workers and `--batches` batches are drawn in the sampler's random order. The loader is training's at
LLaVA-1.5's scale: batch 16, length grouping on, a tiny tokenizer and LLaVA's chat template, 576 image tokens
per image, and every image decoded and letterboxed to 336 px by the preprocessing of a tiny random-weight
CLIP tower built at 336 px with 14 px patches (bicubic, CLIP's mean and std: LLaVA-1.5's recipe).
A thread samples the memory of the process and of its workers every 0.25 s: RSS (resident pages, shared
ones counted in every process that touched them), PSS (each shared page divided among the processes
sharing it: the memory the pipeline really holds) and USS (pages only that process holds). Reported:
start-up (file read to first batch); over the whole run, the peak of the summed RSS and of the summed PSS
(each a sum over the processes at one sampling instant; the PSS peak is usually the start-up's, the file's
text beside the record store being built, which a 0.25 s sample may catch or miss by ~0.3 GiB); while
iterating (after the first batch), the peak of the summed PSS, the parent's PSS and the workers' summed USS at
that instant, and the workers' summed USS at its own peak; samples/s after the first batch (noisy on a shared
machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

NUM_RECORDS = 665_298
TEXT_ONLY = 40_688  # ShareGPT
LONG_FORM = 157_712  # LLaVA-Instruct-158K
WORDS = (
    "the a of to and in is on with what color image shape there are how many left right top bottom "
    "person table window car dog cat sign text number total price item street building tree sky water "
    "answer question single word phrase describe detail scene background front behind wearing holding"
).split()


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def record(i: int, rng: random.Random, image: str) -> dict:
    """One record shaped like the 665K mixture's (see the module docstring)."""
    turns = []
    if i < TEXT_ONLY:
        for _ in range(rng.randint(1, 5)):
            turns += [
                {"from": "human", "value": sentence(rng, rng.randint(10, 80))},
                {"from": "gpt", "value": sentence(rng, rng.randint(60, 300))},
            ]
        return {"id": f"sharegpt-{i}", "model": "", "conversations": turns}
    long_form = i < TEXT_ONLY + LONG_FORM
    for t in range(rng.randint(1, 5) if long_form else rng.randint(1, 10)):
        question = sentence(rng, rng.randint(6, 20))
        if not long_form:
            question += "\nAnswer the question using a single word or phrase."
        answer = sentence(rng, rng.randint(30, 120)) if long_form else sentence(rng, rng.randint(1, 3))
        turns += [
            {"from": "human", "value": f"<image>\n{question}" if t == 0 else question},
            {"from": "gpt", "value": answer},
        ]
    return {"id": f"{i:09d}", "image": image, "conversations": turns}


COCO_SIZES = [(640, 480), (480, 640), (640, 427), (427, 640), (500, 375), (640, 512), (612, 612), (640, 360)]


def write_images(root: Path) -> list[str]:
    """64 textured JPEGs of COCO's sizes under `root/images_coco` (written when missing)."""
    import numpy as np
    from PIL import Image

    folder = root / "images_coco"
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for k in range(64):
        name = f"images_coco/{k:03d}.jpg"
        names.append(name)
        if (root / name).is_file():
            continue
        width, height = COCO_SIZES[k % len(COCO_SIZES)]
        rng = np.random.default_rng(k)
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack([(x * (k + 1)) % 256, (y * 3 + k) % 256, (x + y) % 256], axis=-1).astype(np.int16)
        noisy = np.clip(base + rng.integers(-24, 25, size=base.shape), 0, 255).astype(np.uint8)
        tmp = root / f"{name}.tmp"
        Image.fromarray(noisy).save(tmp, format="JPEG", quality=90)
        tmp.rename(root / name)
    return names


def write_file(root: Path) -> Path:
    """The images and `llava_665k_like_coco_images.json` under `root` (kept and reused when present)."""
    images = write_images(root)
    path = root / "llava_665k_like_coco_images.json"
    if path.is_file():
        return path
    rng = random.Random(0)
    records = [record(i, rng, rng.choice(images)) for i in range(NUM_RECORDS)]
    rng.shuffle(records)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records))
    tmp.rename(path)
    return path


class MemorySampler(threading.Thread):
    """Peaks of the summed RSS and PSS over this process and its children (each sum taken at one instant), sampled
    every `interval` seconds; after `iterating()`, also the peak of the summed PSS from then on, with the parent's
    PSS and the children's summed USS at that instant, and the children's summed USS at its own peak."""

    def __init__(self, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.peak_rss = self.peak_pss = 0
        self.since: int | None = None  # peaks while iterating: set by `iterating()`
        self.iterating_pss = self.iterating_parent_pss = self.iterating_workers_uss = self.peak_workers_uss = 0
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def iterating(self) -> None:
        with self.lock:
            self.since = 0

    def sample(self) -> None:
        import psutil

        rss = pss = workers_uss = parent_pss = 0
        for process in [self.process, *self.process.children(recursive=True)]:
            try:
                info = process.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rss, pss = rss + info.rss, pss + info.pss
            if process.pid == self.process.pid:
                parent_pss = info.pss
            else:
                workers_uss += info.uss
        with self.lock:
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            if self.since is None:
                return
            self.since += 1
            self.peak_workers_uss = max(self.peak_workers_uss, workers_uss)
            if pss > self.iterating_pss:
                self.iterating_pss, self.iterating_parent_pss, self.iterating_workers_uss = pss, parent_pss, workers_uss

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.sample()


def gib(n: int) -> float:
    return round(n / 2**30, 2)


def measure(path: Path, workers: int, batches: int) -> dict:
    """One worker count, in this (fresh) process; see the module docstring."""
    import torch

    from vlmlab.data.chat_format import ChatFormatter
    from vlmlab.data.datamodule import VLMDataModule, loading_options
    from vlmlab.data.image_processing import ImageProcessor
    from vlmlab.data.synthetic import tokenizer_corpus
    from vlmlab.models.encoders import HFVisionEncoder
    from vlmlab.models.llms.chat_templates import CHAT_TEMPLATES
    from vlmlab.models.llms.tiny_tokenizer import train_tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = train_tiny_tokenizer(tokenizer_corpus(num_samples=200), vocab_size=300)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.chat_template = CHAT_TEMPLATES["vicuna_v1"]
    encoder = HFVisionEncoder(  # a tiny CLIP tower at LLaVA-1.5's input: 336 px, 14 px patches, 576 tokens
        "clip",
        config=dict(image_size=336, patch_size=14, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4),
        interpolation="bicubic",
    )  # fmt: skip
    formatter = ChatFormatter(tokenizer, "<image>", encoder.num_patches, max_length=100_000)
    processor = ImageProcessor(encoder.preprocessing, "letterbox")
    memory = MemorySampler()
    memory.start()
    start = time.perf_counter()
    datamodule = VLMDataModule(
        sources={"instruct": {"task": "instruct", "format": "llava", "train": {"file": str(path)}}},
        mixture={"instruct": 1.0},
        formatter=formatter,
        image_processor=processor,
        micro_batch_size=16,
        seed=0,
        **loading_options(num_workers=workers, on_bad_record="raise"),
    )
    loader = iter(datamodule.train_dataloader())
    first = next(loader)
    startup = time.perf_counter() - start
    memory.iterating()
    assert first["pixel_values"] is None or first["pixel_values"].shape[-2:] == (336, 336)
    drawn, timed_from = 1, time.perf_counter()
    samples = 0
    while drawn < batches:
        batch = next(loader)
        drawn, samples = drawn + 1, samples + len(batch["ids"])
    elapsed = time.perf_counter() - timed_from
    memory.sample()
    memory.stopped.set()
    return {
        "workers": workers,
        "startup_s": round(startup, 1),
        "peak_rss_gib": gib(memory.peak_rss),
        "peak_pss_gib": gib(memory.peak_pss),
        "iterating_pss_gib": gib(memory.iterating_pss),
        "iterating_parent_pss_gib": gib(memory.iterating_parent_pss),
        "iterating_workers_uss_gib": gib(memory.iterating_workers_uss),
        "peak_workers_uss_gib": gib(memory.peak_workers_uss),
        "memory_samples_iterating": memory.since,
        "samples_per_s": round(samples / elapsed, 1),
        "batches": drawn,
        "image_tokens": encoder.num_patches,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "vlmlab-bench-memory")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument("--batches", type=int, default=200, help="batches of 16 drawn per worker count")
    parser.add_argument("--measure", type=int, default=None, help=argparse.SUPPRESS)  # internal: one worker count
    args = parser.parse_args()
    path = write_file(args.root)
    if args.measure is not None:
        print(json.dumps(measure(path, args.measure, args.batches)))
        return
    print(f"{path}: {path.stat().st_size / 2**30:.2f} GiB; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    print(
        "| workers | start-up (s) | peak RSS, summed (GiB) | peak PSS, summed (GiB) | peak PSS while iterating, summed "
        "(GiB) | at that peak: parent PSS, workers' USS (GiB) | peak workers' USS, summed (GiB) | samples/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for workers in args.workers:
        command = [sys.executable, __file__, "--root", str(args.root), "--batches", str(args.batches)]
        out = subprocess.run([*command, "--measure", str(workers)], capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        cells = [
            workers,
            row["startup_s"],
            row["peak_rss_gib"],
            row["peak_pss_gib"],
            row["iterating_pss_gib"],
            f"{row['iterating_parent_pss_gib']}, {row['iterating_workers_uss_gib']}",
            row["peak_workers_uss_gib"],
            row["samples_per_s"],
        ]
        print("| " + " | ".join(map(str, cells)) + " |", flush=True)


if __name__ == "__main__":
    main()
