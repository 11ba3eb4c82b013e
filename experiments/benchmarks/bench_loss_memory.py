"""Peak memory of one training step with the full-logits loss vs the chunked answer-only loss, at
Qwen2.5's 151,936-token vocabulary. Each measurement runs in a fresh subprocess. See README.md."""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
from _common import DEVICE, batch, machine, peak_during, run_worker, step_fn, tokenizer, training_module, vlmlab_model
from _common import with_images as place

VISION = dict(
    image_size=96, patch_size=4, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
)
VOCAB = 151936  # Qwen2.5's
TEXT = dict(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)
VARIANTS = {
    "full": dict(loss="full"),
    "chunked-1024": dict(loss_chunk_size=1024),
    "chunked-256": dict(loss_chunk_size=256),
}


def worker(variant: str, rows: int, length: int, threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tok = tokenizer()
    model = vlmlab_model(VISION, TEXT, tok).to(DEVICE)
    module = training_module(model, **VARIANTS[variant])
    b = place(batch(tok, model.num_image_tokens, rows, length, VOCAB), VISION["image_size"])
    step = step_fn(lambda: module.batch_loss(b), [p for p in module.parameters() if p.requires_grad])
    first_loss = step()  # creates AdamW's state, so the measured step allocates only what a step needs
    peak_mib, _ = peak_during(step)
    answers = int((b["labels"][:, 1:] != -100).sum())
    print(json.dumps({"variant": variant, "peak_mib": peak_mib, "loss": first_loss, "answer_targets": answers}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2, help="sequences per micro-batch")
    parser.add_argument("--length", type=int, default=1024, help="tokens per sequence (576 are image tokens)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per variant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.rows, args.length, args.threads)
    common = ["--rows", str(args.rows), "--length", str(args.length), "--threads", str(args.threads)]
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):  # variants alternate, each in its own process
        for variant in VARIANTS:
            results[variant].append(run_worker(__file__, [*common, "--worker", variant]))
    full = statistics.median(r["peak_mib"] for r in results["full"])
    logits_mib = args.rows * args.length * VOCAB * 4 / 2**20
    print(f"# {machine()}, torch {torch.__version__}; batch {args.rows} x {args.length} tokens, vocab {VOCAB}")
    answers = results["full"][0]["answer_targets"]
    print(f"# answer targets: {answers}; one fp32 copy of full logits: {logits_mib:.0f} MiB")
    print("| loss | peak MiB above the step's start (median) | runs | vs full | loss value |")
    print("|---|---|---|---|---|")
    for variant, runs in results.items():
        peak = statistics.median(r["peak_mib"] for r in runs)
        each = ", ".join(f"{r['peak_mib']:.0f}" for r in runs)
        print(f"| {variant} | {peak:.0f} | {each} | {100 * (peak / full - 1):+.0f} % | {runs[0]['loss']:.6f} |")


if __name__ == "__main__":
    sys.exit(main())
