"""The stage's `compile` option: each LLM decoder block is compiled in place, with the plain model's loss."""

from __future__ import annotations

import pytest
import torch

from tests.tiny_models import batch_for, tiny_vlm
from vlmlab.training.module import VLMTrainingModule
from vlmlab.training.stage import StageSpec

TRAIN = {"encoder": "full", "connector": "full", "llm": "full"}


def stage(**fields) -> StageSpec:
    return StageSpec.from_fields(name="s", mixture="m", train=TRAIN, lr=dict.fromkeys(TRAIN, 1e-3), **fields)


def test_compile_wraps_each_decoder_block_and_keeps_the_weight_names(tokenizer) -> None:
    plain = VLMTrainingModule(tiny_vlm(tokenizer), stage())
    compiled = VLMTrainingModule(tiny_vlm(tokenizer), stage(compile=True))
    blocks = compiled.model.llm.model.model.layers
    assert len(blocks) == 2 and all(block._compiled_call_impl is not None for block in blocks)
    assert all(block._compiled_call_impl is None for block in plain.model.llm.model.model.layers)
    assert compiled.state_dict().keys() == plain.state_dict().keys()  # checkpoints load either way


@pytest.mark.slow  # Inductor compiles the block's forward and backward: about a minute on 2 cores
def test_compiled_blocks_give_the_plain_loss_and_gradients(tokenizer) -> None:
    results = []
    for module in (
        VLMTrainingModule(tiny_vlm(tokenizer), stage()),
        VLMTrainingModule(tiny_vlm(tokenizer), stage(compile=True, gradient_checkpointing=True)),
    ):
        module.train()
        loss = module.batch_loss(batch_for(module.model))
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in module.named_parameters() if p.grad is not None}))
    (loss, grads), (compiled_loss, compiled_grads) = results
    assert torch.allclose(compiled_loss, loss, atol=1e-5, rtol=0)
    assert compiled_grads.keys() == grads.keys()
    assert all(torch.allclose(compiled_grads[n], g, atol=1e-5, rtol=1e-4) for n, g in grads.items())
