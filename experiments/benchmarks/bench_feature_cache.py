"""Frozen-encoder feature cache: training throughput of a stage with a frozen encoder, with and without it.

    .venv/bin/python experiments/benchmarks/bench_feature_cache.py     # ~4 min on 2 cores

The real stage: `conf/train.yaml` composed as `vlmlab-train` would, the instruct stage (encoder
frozen, connector + LLM trained) on the synthetic tasks (96 px images), the real data module,
loader (image decode and preprocessing, or the memory-mapped features) and Lightning Trainer. The
encoder is a ViT heavier than the LLM, as in LLaVA (CLIP ViT-L 304M beside a 7B LLM is lighter, but
at 576 tokens per image and a short answer the encoder is a large share of a stage-1 step): 6 blocks,
192 wide, patch 8 (144 image tokens), against the demo's 2-layer 128-wide Llama. Each round trains
`--steps` micro-batches without and with the cache (order alternating), each from the same seed;
reported: samples/s over the timed steps (the first step of each fit is not timed) and the ratio.
The one-off build of the cache is timed separately.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
from hydra import compose, initialize_config_dir

from vlmlab.data.datamodule import VLMDataModule
from vlmlab.models.builder import build_vlm
from vlmlab.presets import config_dir
from vlmlab.training.module import VLMTrainingModule
from vlmlab.training.stage import mixture_weights, stage_specs

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine  # noqa: E402

ENCODER = [  # a ViT heavier than the LLM
    "model.encoder.model_kwargs.patch_size=8",
    "model.encoder.model_kwargs.embed_dim=192",
    "model.encoder.model_kwargs.depth=6",
    "model.encoder.model_kwargs.num_heads=3",
]


class StepTimer(L.Callback):
    """Wall time from the end of the first training batch to the end of the last (warm steps only)."""

    def __init__(self) -> None:
        self.start = self.end = 0.0
        self.samples = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if batch_idx == 0:
            self.start = now
        else:
            self.samples += len(batch["ids"])
        self.end = now


def run(cfg, cached: bool, steps: int) -> tuple[float, float]:
    """(samples/s of the warm steps, seconds spent in setup before the first step: the cache build)."""
    spec = stage_specs(cfg)[1]
    L.seed_everything(0)
    model = build_vlm(cfg.model)
    cfg.data.feature_cache.enabled = cached
    datamodule = VLMDataModule.from_config(
        cfg.data, model, cfg.seed, mixture_weights(cfg, spec), spec.micro_batch_size, encoder_frozen=True
    )
    timer = StepTimer()
    trainer = L.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    begin = time.perf_counter()
    trainer.fit(VLMTrainingModule(model, spec), datamodule=datamodule)
    rate = timer.samples / (timer.end - timer.start) if timer.samples else 0.0
    return rate, timer.start - begin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=12, help="micro-batches per fit (the first is not timed)")
    parser.add_argument("--micro-batch", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, initialize_config_dir(str(config_dir()), version_base="1.3"):
        stage = "curriculum.stages.instruct"
        cfg = compose(
            "train",
            overrides=[
                *ENCODER,
                f"paths.root_dir={folder}",
                f"data.root={folder}/synthetic",
                "data.synthetic.num_train=300",
                "data.num_workers=0",
                f"{stage}.batch_size={args.micro_batch}",
                f"{stage}.micro_batch_size={args.micro_batch}",
                f"{stage}.max_steps={args.steps}",
                "~logger",
            ],
        )
        model = build_vlm(cfg.model)
        parts = {p: sum(x.numel() for x in getattr(model, p).parameters()) for p in ("encoder", "connector", "llm")}
        print(f"{machine()}; parameters {parts}; {model.num_image_tokens} image tokens per image")
        datamodule = VLMDataModule.from_config(cfg.data, model, cfg.seed)
        datamodule.prepare_data()  # write the synthetic data once
        _, build = run(cfg, cached=True, steps=1)  # builds the cache (timed), then it is reused
        print(f"cache build (encoder over every training image, once): {build:.1f} s")
        rates: dict[bool, list[float]] = {False: [], True: []}
        for r in range(args.rounds):
            for cached in (r % 2 == 0, r % 2 == 1):
                rates[cached].append(run(cfg, cached, args.steps)[0])
            print(f"round {r + 1}: images {rates[False][-1]:.1f} samples/s, cache {rates[True][-1]:.1f} samples/s")
    ratio = statistics.median(c / p for c, p in zip(rates[True], rates[False]))
    print(f"\n| variant | samples/s (median of {args.rounds}) |\n|---|---|")
    print(f"| images through the frozen encoder | {statistics.median(rates[False]):.1f} |")
    print(f"| feature cache | {statistics.median(rates[True]):.1f} |")
    print(f"ratio cache / images (median of rounds): {ratio:.2f}")


if __name__ == "__main__":
    main()
