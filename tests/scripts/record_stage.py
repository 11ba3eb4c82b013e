"""A test-only Lightning callback that records, per stage, the weights when training starts and the parameters
that get a gradient (class attributes: the curriculum runs in the test's own process)."""

from __future__ import annotations

import lightning as L
import torch

from vlmlab.training.module import VLMTrainingModule


class RecordStage(L.Callback):
    """Test probe: each stage's weights when training starts and the parameters that get a gradient."""

    weights_at_start: dict[str, dict[str, torch.Tensor]] = {}
    with_gradient: dict[str, set[str]] = {}

    def on_train_start(self, trainer: L.Trainer, module: VLMTrainingModule) -> None:
        state = module.model.state_dict()
        RecordStage.weights_at_start[module.stage.name] = {k: v.detach().clone() for k, v in state.items()}

    def on_before_optimizer_step(self, trainer: L.Trainer, module: VLMTrainingModule, optimizer) -> None:
        names = {n for n, p in module.model.named_parameters() if p.grad is not None}
        RecordStage.with_gradient.setdefault(module.stage.name, set()).update(names)
