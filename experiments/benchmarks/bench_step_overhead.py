"""Training-step throughput of vlmlab's VisionLanguageModel against transformers' LlavaForConditionalGeneration:
same config, same weights, same batch, forward + backward + AdamW, timed steps interleaved. See README.md."""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
from _common import (
    DEVICE,
    batch,
    interleaved,
    llava_config,
    machine,
    median_ratio,
    step_fn,
    tokenizer,
    training_module,
    vlmlab_from_llava,
    with_images,
)
from transformers import LlavaForConditionalGeneration

# Two sizes that run in seconds per step on 2 CPU cores; LLaVA's proportions (a ViT tower, a wider LLM).
SIZES = {
    "S": dict(
        vision=dict(
            image_size=224,
            patch_size=16,
            hidden_size=128,
            intermediate_size=512,
            num_hidden_layers=4,
            num_attention_heads=2,
        ),
        text=dict(vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4),
        rows=2,
        length=320,
    ),
    "M": dict(
        vision=dict(
            image_size=224,
            patch_size=16,
            hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=6,
            num_attention_heads=4,
        ),
        text=dict(
            vocab_size=32000, hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6
        ),
        rows=2,
        length=448,
    ),
}


def measure(size: str, repeats: int, warmup: int) -> None:
    spec = SIZES[size]
    tok = tokenizer()
    torch.manual_seed(0)
    llava = LlavaForConditionalGeneration(llava_config(spec["vision"], spec["text"], tok)).to(DEVICE).train()
    full = training_module(vlmlab_from_llava(llava, spec["vision"], spec["text"], tok), loss="full").to(DEVICE)
    chunked = training_module(vlmlab_from_llava(llava, spec["vision"], spec["text"], tok), loss="chunked").to(DEVICE)
    n = full.model.num_image_tokens
    b = with_images(
        batch(tok, n, spec["rows"], spec["length"], spec["text"]["vocab_size"]), spec["vision"]["image_size"]
    )

    def hf_loss() -> torch.Tensor:
        return llava(**b).loss

    steps = {
        "transformers": step_fn(hf_loss, list(llava.parameters())),
        "vlmlab loss=full": step_fn(lambda: full.batch_loss(b), list(full.parameters())),
        "vlmlab loss=chunked": step_fn(lambda: chunked.batch_loss(b), list(chunked.parameters())),
    }
    with torch.no_grad():  # same weights, same batch: the same loss
        losses = [float(hf_loss()), float(full.batch_loss(b)), float(chunked.batch_loss(b))]
    times = interleaved(steps, repeats, warmup)
    params = sum(p.numel() for p in llava.parameters()) / 1e6
    answers = int((b["labels"][:, 1:] != -100).sum())
    print(
        f"\n## size {size}: {params:.1f} M parameters, batch {spec['rows']} x {spec['length']} tokens "
        f"({n} image tokens per row, {answers} answer targets); losses before training "
        + ", ".join(f"{x:.6f}" for x in losses)
    )
    print("| model | step s (median) | steps/s | ratio vs transformers (median of rounds) |")
    print("|---|---|---|---|")
    reference = times["transformers"]
    for name, t in times.items():
        ratio = median_ratio(reference, t)  # > 1: faster than transformers
        print(f"| {name} | {statistics.median(t):.3f} | {1 / statistics.median(t):.2f} | {ratio:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=SIZES)
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds (each times every model once)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {machine()}, torch {torch.__version__}; every part trains (fp32); {args.repeats} rounds")
    for size in args.sizes:
        measure(size, args.repeats, args.warmup)


if __name__ == "__main__":
    sys.exit(main())
