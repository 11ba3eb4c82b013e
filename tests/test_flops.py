"""`flops_per_batch` (the MFU that ThroughputMonitor logs) agrees with PyTorch's FLOP counter on a real step."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from tests.tiny_models import batch_for, tiny_vlm
from vlmlab.models.connectors import PerceiverResamplerConnector, QFormerConnector
from vlmlab.training.flops import FlopsEstimate
from vlmlab.training.module import VLMTrainingModule
from vlmlab.training.stage import StageSpec


@pytest.mark.parametrize(
    "train",
    [
        {"encoder": "full", "connector": "full", "llm": "full"},
        {"encoder": "frozen", "connector": "full", "llm": "frozen"},  # LLaVA's align: input gradients through the LLM
        {"encoder": "frozen", "connector": "frozen", "llm": "full"},  # no backward through encoder and connector
    ],
)
def test_flops_per_batch_matches_the_flop_counter(tokenizer, train: dict[str, str]) -> None:
    lr = {part: 1e-3 for part, mode in train.items() if mode != "frozen"}
    module = VLMTrainingModule(
        tiny_vlm(tokenizer), StageSpec.from_fields(name="s", mixture="m", train=train, lr=lr, loss="full")
    )
    batch = batch_for(module.model)
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])  # padding is not counted by the estimate
    module.train()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:  # attention as countable matmuls
        module.batch_loss(batch).backward()
    measured = counter.get_total_flops()
    module.training_step(batch, 0)  # sets the estimate of this batch
    # Within 10 %: the estimate also counts a backward through the encoder's last layer, which LLaVA's
    # penultimate-layer features leave out (one of this tiny encoder's two layers).
    assert abs(module.flops_per_batch / measured - 1) < 0.1, (module.flops_per_batch, measured)


def test_chunked_loss_counts_lm_head_at_answer_positions_only(tokenizer) -> None:
    train = {"encoder": "full", "connector": "full", "llm": "full"}
    lr = dict.fromkeys(train, 1e-3)
    estimates = {}
    for loss in ("full", "chunked"):
        module = VLMTrainingModule(
            tiny_vlm(tokenizer), StageSpec.from_fields(name="s", mixture="m", train=train, lr=lr, loss=loss)
        )
        batch = batch_for(module.model)
        estimates[loss] = module.objective.flops(batch)
    tokens, answers = int(batch["attention_mask"].sum()), int((batch["labels"][:, 1:] != -100).sum())
    lm_head = module.model.llm.model.get_output_embeddings().weight.numel()
    assert estimates["full"] - estimates["chunked"] == 3 * 2 * lm_head * (tokens - answers)


@pytest.mark.parametrize("connector_cls", [PerceiverResamplerConnector, QFormerConnector])
def test_learned_query_connectors_are_counted(tokenizer, connector_cls) -> None:
    """Their queries are parameters passed into their layers, which the counter's module hooks must handle."""
    model = tiny_vlm(tokenizer)
    model.connector = connector_cls(in_dim=32, out_dim=48, num_in_tokens=model.encoder.num_patches)
    train = {"encoder": "frozen", "connector": "full", "llm": "full"}
    estimate = FlopsEstimate.of(
        model, StageSpec.from_fields(name="s", mixture="m", train=train, lr={"connector": 1e-3, "llm": 1e-3})
    )
    features = torch.randn(1, model.encoder.num_patches, 32)
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.connector(features)
    assert estimate.connector_per_image == counter.get_total_flops() > 0
