"""The chunked answer-only loss equals transformers' loss on full logits: same value, same gradients."""

from __future__ import annotations

import pytest
import torch

from tests.tiny_models import batch_for, tiny_vlm
from vlmlab.models.loss import chunked_cross_entropy
from vlmlab.models.vlm import VisionLanguageModel
from vlmlab.training.module import VLMTrainingModule
from vlmlab.training.stage import StageSpec


def loss_and_grads(model: VisionLanguageModel, batch: dict, **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(**batch, **kwargs).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk_size", [1, 4, 1024])
def test_chunked_loss_has_the_plain_loss_and_gradients(tokenizer, chunk_size: int) -> None:
    model = tiny_vlm(tokenizer)
    batch = batch_for(model)
    expected, expected_grads = loss_and_grads(model, batch)
    actual, actual_grads = loss_and_grads(model, batch, loss_chunk_size=chunk_size)
    assert torch.allclose(actual, expected, atol=1e-5, rtol=0), (actual, expected)
    assert actual_grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        assert torch.allclose(actual_grads[name], grad, atol=1e-5, rtol=1e-4), name


def test_chunked_loss_with_gradient_checkpointing_through_the_training_module(tokenizer) -> None:
    """The stage's `loss` option reaches the model; activation checkpointing composes with it."""
    spec = dict(name="s", mixture="m", train={"encoder": "full", "connector": "full", "llm": "full"})
    spec["lr"] = {"encoder": 1e-3, "connector": 1e-3, "llm": 1e-3}
    full = VLMTrainingModule(tiny_vlm(tokenizer), StageSpec.from_fields(**spec, loss="full"))
    chunked = VLMTrainingModule(
        tiny_vlm(tokenizer),
        StageSpec.from_fields(**spec, loss="chunked", loss_chunk_size=3, gradient_checkpointing=True),
    )
    batch = batch_for(full.model)
    losses = []
    for module in (full, chunked):
        module.train()
        loss = module.batch_loss(batch)
        loss.backward()
        losses.append(loss.detach())
    assert torch.allclose(losses[0], losses[1], atol=1e-5, rtol=0)
    grads = [{n: p.grad for n, p in m.named_parameters() if p.grad is not None} for m in (full, chunked)]
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[1][n], g, atol=1e-5, rtol=1e-4) for n, g in grads[0].items())


def test_bf16_chunked_loss_matches_the_plain_loss(tokenizer) -> None:
    """In bf16 both paths upcast the logits to fp32 before the softmax: equal to bf16's precision."""
    model = tiny_vlm(tokenizer).to(torch.bfloat16)
    batch = batch_for(model)
    batch["pixel_values"] = batch["pixel_values"].bfloat16()
    with torch.no_grad():
        expected = model(**batch).loss
        actual = model(**batch, loss_chunk_size=5).loss
    assert actual.dtype == expected.dtype == torch.float32
    assert abs(actual.item() - expected.item()) < 1e-2


def test_no_answer_tokens_gives_nan_like_the_plain_path(tokenizer) -> None:
    hidden, lm_head = torch.randn(2, 6, 8, requires_grad=True), torch.nn.Linear(8, 11, bias=False)
    loss = chunked_cross_entropy(hidden, torch.full((2, 6), -100), lm_head, chunk_size=4)
    assert torch.isnan(loss) and loss.requires_grad  # the NaN policy of the training module handles it


def test_chunked_loss_refuses_models_that_transform_their_logits(tokenizer) -> None:
    model = tiny_vlm(tokenizer)
    model.llm.model.config.final_logit_softcapping = 30.0  # as Gemma 2 sets it
    with pytest.raises(ValueError, match="final_logit_softcapping.*loss: full"):
        model(**batch_for(model), loss_chunk_size=8)


def test_stage_rejects_an_unknown_loss() -> None:
    train = {"encoder": "frozen", "connector": "full", "llm": "frozen"}
    with pytest.raises(ValueError, match="loss='fused' is not one of full, chunked"):
        StageSpec.from_fields(name="s", mixture="m", train=train, lr={"connector": 1e-3}, loss="fused")
