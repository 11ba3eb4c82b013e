"""Step time and peak memory of the stage options `compile` (torch.compile per LLM decoder block) and
`gradient_checkpointing`, alone and together, against the plain model. See README.md."""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from _common import (
    DEVICE,
    batch,
    interleaved,
    machine,
    median_ratio,
    peak_during,
    step_fn,
    tokenizer,
    training_module,
    vlmlab_model,
    with_images,
)

VISION = dict(
    image_size=224, patch_size=16, hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=2
)
TEXT = dict(vocab_size=32000, hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6)
VARIANTS = {
    "plain": dict(),
    "gradient_checkpointing": dict(gradient_checkpointing=True),
    "compile": dict(compile=True),
    "compile + gradient_checkpointing": dict(compile=True, gradient_checkpointing=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=8, help="timed rounds (each times every variant once)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tok = tokenizer()
    steps, losses, first_step_s = {}, {}, {}
    for name in args.variants:
        torch.manual_seed(0)  # the same weights in every variant
        module = training_module(vlmlab_model(VISION, TEXT, tok), **VARIANTS[name]).to(DEVICE)
        b = with_images(batch(tok, module.model.num_image_tokens, args.rows, args.length, TEXT["vocab_size"]), 224)
        steps[name] = step_fn(
            lambda m=module, b=b: m.batch_loss(b), [p for p in module.parameters() if p.requires_grad]
        )
        t0 = time.perf_counter()
        losses[name] = steps[name]()  # the first step compiles where compile is on
        first_step_s[name] = time.perf_counter() - t0
    times = interleaved(steps, args.repeats, warmup=1)
    peaks = {name: peak_during(steps[name])[0] for name in args.variants}  # one step each, after timing
    print(f"# {machine()}, torch {torch.__version__}; batch {args.rows} x {args.length}; {args.repeats} rounds")
    print("| variant | first step s | step s (median) | speed vs plain (median of rounds) ", end="")
    print("| peak MiB above start | first loss |")
    print("|---|---|---|---|---|---|")
    plain = times.get("plain")
    for name in args.variants:
        ratio = median_ratio(plain, times[name]) if plain else float("nan")
        print(
            f"| {name} | {first_step_s[name]:.1f} | {statistics.median(times[name]):.3f} | {ratio:.3f} "
            f"| {peaks[name]:.0f} | {losses[name]:.6f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
