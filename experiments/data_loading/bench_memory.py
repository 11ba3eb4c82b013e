"""Host memory of the training input pipeline on a LLaVA-665K-sized instruction file, by loader workers.

    python experiments/data_loading/bench_memory.py                      # writes the file once, then 0, 2, 4 workers
    python experiments/data_loading/bench_memory.py --workers 0 4 --samples 50000

The file has the 665K mixture's shape: 665,298 records, 40K of them text-only multi-turn chats
(ShareGPT), ~158K multi-turn image conversations with long answers (LLaVA-Instruct), the rest VQA-style
records of 1-10 short questions about one image (VQAv2, GQA, OCR-VQA, ...); about 1 GB of JSON like the
real one. Its images are 64 small JPEGs shared by all records, so that decoding does not hide the
record handling.

Each worker count runs in a fresh process: the data module reads the file, the training loader (length
grouping on, batch 16, a tiny tokenizer and LLaVA's chat template, 32 px images) starts its workers,
and `--samples` samples are drawn in the sampler's random order. A thread samples the memory of the
process and of its workers every 0.25 s: RSS (resident pages, shared ones counted in every process
that touched them) and PSS (each shared page divided among the processes sharing it: the memory the
pipeline really holds). Reported: start-up (file read to first batch), peak sums of RSS and PSS, and
samples/s after the first batch.
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


def write_file(root: Path) -> Path:
    """The images and `llava_665k_like.json` under `root` (kept and reused when present)."""
    from PIL import Image

    path = root / "llava_665k_like.json"
    if path.is_file():
        return path
    (root / "images").mkdir(parents=True, exist_ok=True)
    images = []
    for k in range(64):
        name = f"images/{k:03d}.jpg"
        Image.new("RGB", (96, 72), (4 * k, 255 - 4 * k, 128)).save(root / name, quality=90)
        images.append(name)
    rng = random.Random(0)
    records = [record(i, rng, rng.choice(images)) for i in range(NUM_RECORDS)]
    rng.shuffle(records)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records))
    tmp.rename(path)
    return path


class MemorySampler(threading.Thread):
    """Peak sums of RSS and PSS over this process and its children, sampled every `interval` seconds."""

    def __init__(self, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.peak_rss = self.peak_pss = 0
        self.stopped = threading.Event()

    def sample(self) -> None:
        import psutil

        rss = pss = 0
        for process in [self.process, *self.process.children(recursive=True)]:
            try:
                info = process.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rss, pss = rss + info.rss, pss + info.pss
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.sample()


def measure(path: Path, workers: int, samples: int) -> dict:
    """One worker count, in this (fresh) process; see the module docstring."""
    import torch

    from vlmlab.data.chat_format import ChatFormatter
    from vlmlab.data.datamodule import VLMDataModule
    from vlmlab.data.image_processing import ImageProcessor
    from vlmlab.data.synthetic import tokenizer_corpus
    from vlmlab.models.encoders.base import ImagePreprocessing
    from vlmlab.models.llms.chat_templates import CHAT_TEMPLATES
    from vlmlab.models.llms.tiny_tokenizer import train_tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = train_tiny_tokenizer(tokenizer_corpus(num_samples=200), vocab_size=300)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.chat_template = CHAT_TEMPLATES["vicuna_v1"]
    formatter = ChatFormatter(tokenizer, "<image>", 16, max_length=100_000)
    processor = ImageProcessor(ImagePreprocessing(32, 32, (0.5,) * 3, (0.5,) * 3), "letterbox")
    memory = MemorySampler()
    memory.start()
    start = time.perf_counter()
    datamodule = VLMDataModule(
        sources={"instruct": {"task": "instruct", "format": "llava", "train": {"file": str(path)}}},
        mixture={"instruct": 1.0},
        formatter=formatter,
        image_processor=processor,
        micro_batch_size=16,
        num_workers=workers,
        on_bad_record="raise",
    )
    loader = iter(datamodule.train_dataloader())
    next(loader)
    startup = time.perf_counter() - start
    drawn, timed_from = 16, time.perf_counter()
    while drawn < samples:
        batch = next(loader)
        drawn += len(batch["ids"])
    elapsed = time.perf_counter() - timed_from
    memory.sample()
    memory.stopped.set()
    return {
        "workers": workers,
        "startup_s": round(startup, 1),
        "peak_rss_gib": round(memory.peak_rss / 2**30, 2),
        "peak_pss_gib": round(memory.peak_pss / 2**30, 2),
        "samples_per_s": round((drawn - 16) / elapsed, 1),
        "samples": drawn,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "vlmlab-bench-memory")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument("--samples", type=int, default=20_000, help="samples drawn per worker count")
    parser.add_argument("--measure", type=int, default=None, help=argparse.SUPPRESS)  # internal: one worker count
    args = parser.parse_args()
    path = write_file(args.root)
    if args.measure is not None:
        print(json.dumps(measure(path, args.measure, args.samples)))
        return
    print(f"{path}: {path.stat().st_size / 2**30:.2f} GiB; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    print("| workers | start-up (s) | peak RSS, summed (GiB) | peak PSS, summed (GiB) | samples/s |")
    print("|---|---|---|---|---|")
    for workers in args.workers:
        command = [sys.executable, __file__, "--root", str(args.root), "--samples", str(args.samples)]
        out = subprocess.run([*command, "--measure", str(workers)], capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        cells = [workers, row["startup_s"], row["peak_rss_gib"], row["peak_pss_gib"], row["samples_per_s"]]
        print("| " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    main()
