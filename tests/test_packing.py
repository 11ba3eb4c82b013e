"""Sequence packing: the packed batch gives the unpacked batch's loss and gradients, through the real Trainer too."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch

from vlmlab.data.chat_format import ChatFormatter
from vlmlab.data.conversation_dataset import collate
from vlmlab.data.datamodule import VLMDataModule
from vlmlab.data.packing import collate_packed, pack_rows
from vlmlab.models.builder import build_vlm
from vlmlab.models.connectors import MLPConnector
from vlmlab.models.encoders import TimmVisionEncoder
from vlmlab.models.llms import VARLEN_ATTENTION, LanguageModel
from vlmlab.models.vlm import VisionLanguageModel
from vlmlab.training.module import VLMTrainingModule
from vlmlab.training.stage import mixture_weights, stage_specs

LLAMA = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def tiny_vlm(tokenizer, attn_implementation: str) -> VisionLanguageModel:
    torch.manual_seed(0)
    encoder = TimmVisionEncoder(
        "vit_tiny_patch16_224", image_size=32, model_kwargs=dict(patch_size=16, embed_dim=24, depth=2, num_heads=2)
    )
    llm = LanguageModel.from_config(
        LLAMA, copy.deepcopy(tokenizer), chat_template="simple", attn_implementation=attn_implementation
    )
    return VisionLanguageModel(encoder, MLPConnector(24, 32, encoder.num_patches), llm)


def samples(model: VisionLanguageModel) -> list[dict]:
    """Samples of varied length: one image, two images, text only, multi-turn."""
    formatter = ChatFormatter(model.llm.tokenizer, "<image>", model.num_image_tokens, max_length=128)
    conversations = [
        [{"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "red"}],
        [{"from": "human", "value": "<image> and <image>: which is larger?"}, {"from": "gpt", "value": "the left one"}],
        [{"from": "human", "value": "How many shapes are there in a grid?"}, {"from": "gpt", "value": "nine"}],
        [
            {"from": "human", "value": "<image>\nDescribe the picture."},
            {"from": "gpt", "value": "a blue square in the top left corner"},
            {"from": "human", "value": "And the colour of the triangle?"},
            {"from": "gpt", "value": "green"},
        ],
        [{"from": "human", "value": "<image>\nShape?"}, {"from": "gpt", "value": "a circle"}],
    ]
    generator = torch.Generator().manual_seed(1)
    out = []
    for i, conversation in enumerate(conversations):
        encoded = formatter.encode(conversation)
        num_images = sum(turn["value"].count("<image>") for turn in conversation)
        pixels = torch.randn(num_images, 3, 32, 32, generator=generator) if num_images else None
        out.append(
            {"input_ids": encoded.input_ids, "labels": encoded.labels, "pixel_values": pixels, "id": i, "task": "t"}
        )
    return out


def loss_and_grads(model: VisionLanguageModel, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = model.batch_loss(batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_rows_hold_every_sample_once_within_the_length() -> None:
    lengths = [7, 3, 9, 2, 5, 5, 1]
    rows = pack_rows(lengths, pack_length=10)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    assert len(rows) == 4  # 32 tokens need at least 4 rows of 10; first-fit decreasing finds it
    assert pack_rows(lengths, pack_length=None) == [list(range(len(lengths)))]
    with pytest.raises(ValueError, match="more than data.pack_length=8"):
        pack_rows(lengths, pack_length=8)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager", VARLEN_ATTENTION])
@pytest.mark.parametrize("pack_length", [128, None])
def test_packed_loss_and_gradients_equal_unpacked(tokenizer, attn_implementation: str, pack_length: int | None) -> None:
    model = tiny_vlm(tokenizer, attn_implementation)
    batch = samples(model)
    pad = model.llm.tokenizer.pad_token_id
    padded, packed = collate(batch, pad), collate_packed(batch, pad, pack_length)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]  # fewer rows, less padding
    assert int(packed["attention_mask"].sum()) == int(padded["attention_mask"].sum())
    assert packed["pixel_values"].shape == padded["pixel_values"].shape  # all 5 images, in packing order
    loss, grads = loss_and_grads(model, padded)
    packed_loss, packed_grads = loss_and_grads(model, packed)
    torch.testing.assert_close(packed_loss, loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == packed_grads.keys() and any(n.startswith("encoder.") for n in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_packing_without_position_ids_would_leak_across_samples(tokenizer) -> None:
    """The guard the equality rests on: the same packed rows as one causal sequence give another loss."""
    model = tiny_vlm(tokenizer, "sdpa")
    batch = samples(model)
    packed = collate_packed(batch, model.llm.tokenizer.pad_token_id, 128)
    loss, _ = loss_and_grads(model, packed)
    leaky, _ = loss_and_grads(model, {**packed, "position_ids": None, "cu_seq_lens": None})
    assert abs(float(loss - leaky)) > 1e-4  # far outside the 1e-5 the equality tests allow


def fit_first_losses(compose_config, packing: bool) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Per-step training losses (each step's batch the same samples) and the weights after 3 steps;
    packed through `sdpa_varlen`, unpacked through plain `sdpa`."""
    stage = "curriculum.stages.instruct"
    attention = VARLEN_ATTENTION if packing else "sdpa"
    cfg = compose_config(
        [
            f"{stage}.train.llm=full",
            f"{stage}.lr.llm=1e-3",
            f"data.packing={packing}",
            "data.pack_length=256",
            f"model.llm.attn_implementation={attention}",
        ]
    )
    spec = stage_specs(cfg)[1]
    L.seed_everything(0)
    model = build_vlm(cfg.model)
    datamodule = VLMDataModule.from_config(cfg.data, model, cfg.seed, mixture_weights(cfg, spec), spec.micro_batch_size)
    module = VLMTrainingModule(model, spec)
    losses: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            losses.append(float(outputs["loss"]))
            assert ("position_ids" in batch) == packing

    trainer = L.Trainer(
        max_steps=3,
        accumulate_grad_batches=spec.accumulation(1),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Record()],
    )
    trainer.fit(module, datamodule=datamodule)
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_trainer_with_packing_follows_the_unpacked_run(compose_config) -> None:
    losses, weights = fit_first_losses(compose_config, packing=False)
    packed_losses, packed_weights = fit_first_losses(compose_config, packing=True)
    assert len(losses) == len(packed_losses) == 6  # 3 steps of 2 accumulated micro-batches
    assert packed_losses == pytest.approx(losses, rel=1e-4)
    for name, value in weights.items():
        torch.testing.assert_close(packed_weights[name], value, rtol=1e-4, atol=1e-5, msg=name)
