"""Shared pieces of the benchmarks: tiny LLaVA-shaped models built from config (nothing is downloaded),
a batch of realistic shape, one training step, interleaved timing and peak-memory measurement."""

from __future__ import annotations

import copy
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration

from vlmlab.data.synthetic import tokenizer_corpus
from vlmlab.interop.llava_weights import llava_to_vlmlab
from vlmlab.models.connectors import MLPConnector
from vlmlab.models.encoders import HFVisionEncoder
from vlmlab.models.llms import LanguageModel
from vlmlab.models.llms.tiny_tokenizer import train_tiny_tokenizer
from vlmlab.models.vlm import VisionLanguageModel
from vlmlab.training.module import VLMTrainingModule
from vlmlab.training.stage import StageSpec

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def machine() -> str:
    if DEVICE.type == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU, {torch.get_num_threads()} threads"


def tokenizer():
    """The tiny local BPE tokenizer (a second to train) plus the <image> token."""
    tok = train_tiny_tokenizer(tokenizer_corpus(num_samples=200), vocab_size=300)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tok


def llava_config(vision: dict[str, int], text: dict[str, int], tok) -> LlavaConfig:
    """LLaVA-1.5's layout (CLIP tower, penultimate layer, CLS dropped, 2-layer GELU projector, Llama)."""
    return LlavaConfig(
        vision_config=CLIPVisionConfig(**vision),
        text_config=LlamaConfig(**text, pad_token_id=tok.pad_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )


def vlmlab_model(vision: dict[str, int], text: dict[str, int], tok) -> VisionLanguageModel:
    """vlmlab's model of LLaVA's layout: CLIP tower (penultimate layer, CLS dropped) + mlp2x_gelu + Llama."""
    encoder = HFVisionEncoder("clip", config=vision, feature_layer=-2, feature_select="default")
    text_config = LlamaConfig(**text, pad_token_id=tok.pad_token_id)
    llm = LanguageModel(LlamaForCausalLM(text_config), copy.deepcopy(tok), chat_template="simple")
    connector = MLPConnector(encoder.output_dim, llm.hidden_size, encoder.num_patches, depth=2)
    return VisionLanguageModel(encoder, connector, llm)


def vlmlab_from_llava(llava: LlavaForConditionalGeneration, vision: dict, text: dict, tok) -> VisionLanguageModel:
    """vlmlab's model of the same config, holding a copy of `llava`'s weights (as the parity test maps them)."""
    model = vlmlab_model(vision, text, tok)
    model.load_state_dict(llava_to_vlmlab(llava.state_dict()), strict=True)
    return model


def training_module(model: VisionLanguageModel, **stage: Any) -> VLMTrainingModule:
    """Every part trains (the heaviest step); `stage` overrides StageSpec fields (loss, compile, ...)."""
    train = {"encoder": "full", "connector": "full", "llm": "full"}
    spec = StageSpec.from_fields(name="bench", mixture="bench", train=train, lr=dict.fromkeys(train, 1e-4), **stage)
    return VLMTrainingModule(model, spec).train()


def batch(
    tok, num_image_tokens: int, rows: int, length: int, vocab: int, answer_share: float = 0.35, seed: int = 0
) -> dict[str, torch.Tensor]:
    """`rows` sequences of `length` tokens: a prompt, one image, then two question/answer turns; about
    `answer_share` of the text tokens are answers (trained on), the rest masked (-100)."""
    g = torch.Generator().manual_seed(seed)
    image = tok.convert_tokens_to_ids("<image>")
    text = length - num_image_tokens
    if text < 16:
        raise ValueError(f"length {length} leaves no room for text beside {num_image_tokens} image tokens")
    prompt = text // 8
    ids = torch.randint(3, min(vocab, 2**31 - 1), (rows, length), generator=g)
    ids[ids == image] = 3
    ids[:, prompt : prompt + num_image_tokens] = image
    labels = torch.full_like(ids, -100)
    rest = text - prompt  # two turns in the text after the image
    answer = int(answer_share * text / 2)
    start = prompt + num_image_tokens
    for _ in range(2):  # two question/answer turns
        question_end = start + rest // 2 - answer
        labels[:, question_end : question_end + answer] = ids[:, question_end : question_end + answer]
        start += rest // 2
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": labels,
        "pixel_values": None,  # set by the caller: one image per row
    }


def with_images(b: dict[str, torch.Tensor], image_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = dict(b)
    out["pixel_values"] = torch.randn(b["input_ids"].shape[0], 3, image_size, image_size, generator=g)
    return {k: v.to(DEVICE) for k, v in out.items()}


def step_fn(loss_fn: Callable[[], torch.Tensor], params: list[torch.nn.Parameter]) -> Callable[[], float]:
    """One training step: forward + backward + AdamW step; returns the loss."""
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def interleaved(steps: dict[str, Callable[[], float]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per step of each variant, the variants alternating within each round (order rotated), so
    that load from other processes falls on all of them alike."""
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            sync()
            t0 = time.perf_counter()
            steps[name]()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median of per-round ratios (round r's two times were taken moments apart)."""
    return statistics.median(n / d for n, d in zip(numerator, denominator, strict=True))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_during(step: Callable[[], float]) -> tuple[float, float]:
    """(peak MiB above the memory in use just before, loss) of one call of `step`.

    CPU: the kernel's peak RSS (VmHWM, reset through /proc/self/clear_refs) minus the RSS before; large
    tensors are mmap-ed by malloc and given back when freed, so the RSS follows the live tensors.
    GPU: the CUDA allocator's peak minus what was allocated before.
    """
    gc.collect()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        loss = step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20, loss
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    before = _status_kib("VmRSS")
    loss = step()
    return (_status_kib("VmHWM") - before) / 1024, loss


def run_worker(script: str, args: list[str]) -> dict[str, Any]:
    """Run `script --worker ...` in a fresh interpreter (its own peak memory) and read its JSON line."""
    out = subprocess.run([sys.executable, script, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
