"""`VLMTrainingModule`: one curriculum stage of a `VisionLanguageModel` as a LightningModule."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any, Literal, get_args

import lightning as L
import torch
from peft import PeftModel
from torch import nn

from vlmlab.errors import UsageError
from vlmlab.models.batch import Batch
from vlmlab.models.vlm import VisionLanguageModel
from vlmlab.training.distributed import fully_shard_units, is_sharded
from vlmlab.training.lora import add_lora, save_and_merge
from vlmlab.training.objectives import LanguageModelling
from vlmlab.training.stage import PARTS, StageSpec

NanPolicy = Literal["raise", "skip"]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warmup to 1, then cosine decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norms and embeddings get no weight decay (the usual AdamW practice)."""
    return param.ndim < 2 or "norm" in name.lower() or "embed" in name.lower()


class VLMTrainingModule(L.LightningModule):
    """Applies the stage's freeze policy (frozen, full, or LoRA adapters), trains on answer tokens, and
    builds AdamW with one LR per part.

    Its checkpoints hold the trainable weights only (a frozen 7B LLM is not copied into every
    checkpoint of a connector-only stage); the frozen ones are those the stage started from, which the
    curriculum loads from its record before resuming.
    """

    def __init__(
        self,
        model: VisionLanguageModel,
        stage: StageSpec,
        nan_policy: NanPolicy = "raise",
        objective: nn.Module | None = None,
    ) -> None:
        """`objective`: the stage's loss and validation (`vlmlab.training.objectives`); language modelling by
        default. Its own parameters (a text tower, projection heads) train with `lr.text`."""
        super().__init__()
        if nan_policy not in get_args(NanPolicy):
            raise ValueError(f"nan_policy={nan_policy!r} is not one of {', '.join(get_args(NanPolicy))}")
        self.model = model
        self.stage = stage
        self.nan_policy = nan_policy
        self.nan_steps = 0
        self.trained_samples = 0  # samples this process trained on in the stage (resumed ones included)
        self.skipped: Counter[str] = Counter()
        self.step_logged: tuple[int, dict[str, Any]] = (-1, {})  # (step, its training metrics)
        self.relog: dict[str, Any] | None = None
        self.sharded = False  # fully_shard applied (FSDP2)
        self.window_losses: list[torch.Tensor] = []  # this optimizer step's micro-batch losses
        self.strict_loading = False  # checkpoints hold only the trainable weights: checked in on_load_checkpoint
        # part -> peft handle; a plain dict, not a submodule: the adapters already live inside the model
        self.adapters: dict[str, PeftModel] = {}
        for part in PARTS:
            getattr(model, part).requires_grad_(stage.train[part] == "full")
            if stage.train[part] == "lora":
                backbone = getattr(model, part).model
                self.adapters[part] = add_lora(backbone, stage.lora, stage.lora["target_modules"][part])
        if stage.gradient_checkpointing:
            model.llm.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if stage.compile:  # per block, in place: parameter names (and checkpoints) stay as they are
            blocks = model.llm.decoder_layer_classes()
            for block in [m for m in model.llm.model.modules() if type(m) in blocks]:
                block.compile()
        self.objective = objective if objective is not None else LanguageModelling(model, stage)
        self._batch_flops = 0

    def train(self, mode: bool = True) -> VLMTrainingModule:
        """Frozen parts stay in eval mode (no dropout, fixed norm statistics) while the rest trains."""
        super().train(mode)
        for part in PARTS:
            if self.stage.train[part] == "frozen":  # a LoRA part trains (its adapters' dropout is active)
                getattr(self.model, part).eval()
        return self

    def configure_model(self) -> None:
        """FSDP2 (ModelParallelStrategy sets `device_mesh`): shard the model's units over the processes."""
        if self.device_mesh is not None and not self.sharded:
            fully_shard_units(self.model, self.device_mesh["data_parallel"])
            if any(True for _ in self.objective.parameters()):  # a text tower and heads: sharded as one unit
                from torch.distributed.fsdp import fully_shard

                fully_shard(self.objective, mesh=self.device_mesh["data_parallel"])
            self.sharded = True

    def save_and_merge_adapters(self, folder: Path) -> None:
        """The stage's end for LoRA parts: adapters saved to `folder/<part>`, then merged into the weights."""
        save_and_merge(self.adapters, folder)

    def checkpointed_keys(self) -> set[str]:
        """State-dict keys a checkpoint of this stage holds: the trainable weights, and all of a fully trained part."""
        trainable = {name for name, p in self.named_parameters(remove_duplicate=False) if p.requires_grad}
        full = tuple(f"model.{part}." for part in PARTS if self.stage.train[part] == "full")
        return {key for key in self.state_dict(keep_vars=True) if key in trainable or key.startswith(full)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not is_sharded(self.trainer.strategy):  # shards are already split over the processes
            keep = self.checkpointed_keys()
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["vlmlab"] = {
            "skipped": dict(self.skipped),
            "nan_steps": self.nan_steps,
            "trained_samples": self.trained_samples,
        }
        # Lightning saves step checkpoints before it sends that step's metrics to the logger: a run
        # killed in between would miss the step in its history. The checkpoint carries them, to be
        # logged again on resume (an identical duplicate where they did arrive).
        step, metrics = self.step_logged
        if metrics and (step + 1) % max(1, self.trainer.log_every_n_steps) == 0:
            checkpoint["vlmlab"]["step_metrics"] = {"step": step, "metrics": {k: float(v) for k, v in metrics.items()}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        expected, found = self.checkpointed_keys(), set(checkpoint.get("state_dict", {}))
        if not is_sharded(self.trainer.strategy) and expected != found:
            missing, extra = sorted(expected - found), sorted(found - expected)
            raise ValueError(
                f"stage '{self.stage.name}': the checkpoint's weights are not this stage's trainable weights "
                f"(missing: {missing[:5]}, unexpected: {extra[:5]}); it was written with another model or "
                "stage config: resume with the overrides of the run that wrote it"
            )
        saved = checkpoint.get("vlmlab", {})
        self.skipped = Counter(saved.get("skipped", {}))
        self.nan_steps = saved.get("nan_steps", 0)
        self.trained_samples = saved.get("trained_samples", 0)
        self.relog = saved.get("step_metrics")

    def on_train_start(self) -> None:
        if self.relog is not None and self.logger is not None:
            self.logger.log_metrics(self.relog["metrics"], step=self.relog["step"])
        self.relog = None

    def _count_skipped(self, batch: Batch) -> None:
        """Running totals of dropped records by reason, logged as `data/skipped/<reason>`."""
        for reason, count in batch.get("skipped", {}).items():
            self.skipped[reason] += count
        for reason, total in self.skipped.items():
            self._log_train(f"data/skipped/{reason}", float(total), reduce_fx="max")

    def _log_train(self, name: str, value: float | torch.Tensor, **kwargs: Any) -> None:
        """`self.log` for training metrics, remembering the step's values for `on_save_checkpoint`."""
        self.log(name, value, **kwargs)
        if self.step_logged[0] != self.global_step:
            self.step_logged = (self.global_step, {})
        self.step_logged[1][name] = value.detach() if isinstance(value, torch.Tensor) else value

    def batch_loss(self, batch: Batch) -> torch.Tensor:
        """The stage objective's loss of a collated batch (language modelling: the mean answer-token loss,
        computed as the stage says, `loss: chunked | full`)."""
        return self.objective.loss(self.model, batch)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        self._count_skipped(batch)
        if "input_ids" not in batch:  # every record of this batch was skipped
            return self._zero_loss()
        self.trained_samples += batch["input_ids"].shape[0]  # drawn and usable (a non-finite loss aside)
        self._batch_flops = self.objective.batch_flops(batch)
        loss = self.batch_loss(batch)
        if not torch.isfinite(loss):
            if self.nan_policy == "skip":
                self.nan_steps += 1
                self._log_train("train/nan_skipped", float(self.nan_steps), reduce_fx="max")
                return self._zero_loss()
            checkpoint = self.trainer.checkpoint_callback
            last_good = (checkpoint.last_model_path or checkpoint.best_model_path) if checkpoint else ""
            raise FloatingPointError(
                f"stage '{self.stage.name}': loss is {loss.item()} at step {self.global_step}; the last good "
                f"checkpoint is {last_good or 'none yet'}. Lower the learning rate or check the batch, then resume "
                "(resume=true); nan_policy=skip would skip such steps instead"
            )
        batch_size = batch["input_ids"].shape[0]
        # train/loss is the global batch's: the mean over this step's micro-batches and processes (each
        # micro-batch's loss is already a mean over its answer tokens, as the gradient is).
        self.window_losses.append(loss.detach())
        window = torch.stack(self.window_losses).mean()
        self._log_train("train/loss", window, prog_bar=True, batch_size=batch_size, sync_dist=True)
        self._log_train("train/tokens", float(batch["attention_mask"].sum()), reduce_fx="sum", batch_size=batch_size)
        return loss

    @property
    def flops_per_batch(self) -> int:
        """Model FLOPs of the last training micro-batch (`FlopsEstimate`); Lightning's ThroughputMonitor
        divides their rate by the device's peak to log MFU (`train/device/mfu`, GPUs it knows)."""
        return self._batch_flops

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.window_losses = []

    def on_before_zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        self.objective.after_optimizer_step()  # runs after each optimizer step (e.g. CLIP's temperature clamp)

    def _zero_loss(self) -> torch.Tensor:
        """A zero loss over the trainable weights: the step runs with zero gradients (AdamW's moments and
        weight decay still advance) instead of no step, so distributed processes stay in step (DDP's
        gradient all-reduce needs every rank)."""
        return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        for reason, count in batch.get("skipped", {}).items():  # per validation pass: `val/skipped/<reason>`
            self.log(f"val/skipped/{reason}", float(count), reduce_fx="sum", on_epoch=True, batch_size=1)
        if "input_ids" not in batch:
            return
        self.objective.validation_step(self, self.model, batch)

    def on_validation_epoch_end(self) -> None:
        self.objective.on_validation_epoch_end(self)

    def configure_optimizers(self) -> dict[str, Any]:
        groups = []
        for part in PARTS:
            if self.stage.train[part] == "frozen":
                continue
            named = [(n, p) for n, p in getattr(self.model, part).named_parameters() if p.requires_grad]
            lr = self.stage.lr[part]
            decay = [p for n, p in named if not _no_decay(n, p)]
            no_decay = [p for n, p in named if _no_decay(n, p)]
            groups.append({"params": decay, "lr": lr, "weight_decay": self.stage.weight_decay, "name": f"{part}"})
            groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{part}_no_decay"})
        own = [(n, p) for n, p in self.objective.named_parameters() if p.requires_grad]
        if own:  # the objective's text tower and heads
            lr = self.stage.lr["text"]
            decay = [p for n, p in own if not _no_decay(n, p)]
            groups.append({"params": decay, "lr": lr, "weight_decay": self.stage.weight_decay, "name": "text"})
            no_decay = [p for n, p in own if _no_decay(n, p)]
            groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": "text_no_decay"})
        groups = [g for g in groups if g["params"]]
        if not groups:
            trained = [part for part in PARTS if self.stage.train[part] != "frozen"]
            raise UsageError(
                f"stage '{self.stage.name}' trains nothing: its trained part(s) {', '.join(trained) or '(none)'} have "
                "no weights (model/connector=identity has none); train the encoder or llm in it "
                f"(curriculum.stages.{self.stage.name}.train.llm=full), or start at a later stage "
                "(curriculum.start_stage=)"
            )
        optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999))
        total = int(self.trainer.estimated_stepping_batches)
        warmup = max(1, int(self.stage.warmup_ratio * total))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
