"""Strategies (single device, DDP, FSDP, FSDP2) built from `conf/strategy/`, and the process's rank.

FSDP (Lightning's `FSDPStrategy`, GPU only) wraps the LLM decoder layers, the vision blocks and the
connector as units; FSDP2 (`ModelParallelStrategy`) applies `fully_shard` to the same units in
`VLMTrainingModule.configure_model`, and also runs on the CPU (gloo).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy, Strategy
from torch import nn

from vlmlab.models.vlm import VisionLanguageModel
from vlmlab.training.checkpoints import save_sharded_atomically

STRATEGIES = ("auto", "ddp", "fsdp", "fsdp2")
FSDP_SHARDING = {"full": "FULL_SHARD", "grad_op": "SHARD_GRAD_OP", "hybrid": "HYBRID_SHARD"}


def global_rank(devices_per_node: int) -> int:
    """This process's rank before any Trainer exists: from torchrun or SLURM, else from the variables
    Lightning's own launcher sets for the processes it starts (0 for the one a user starts)."""
    if TorchElasticEnvironment.detect():
        return int(os.environ["RANK"])
    if SLURMEnvironment.detect():
        return int(os.environ["SLURM_PROCID"])
    return int(os.environ.get("NODE_RANK", 0)) * devices_per_node + int(os.environ.get("LOCAL_RANK", 0))


def shard_units(model: VisionLanguageModel) -> set[type[nn.Module]]:
    """The module classes sharded as one unit each: LLM decoder layers, vision blocks, the connector (if it has
    weights)."""
    connector = {type(model.connector)} if next(model.connector.parameters(), None) is not None else set()
    return model.llm.decoder_layer_classes() | model.encoder.block_classes() | connector


def build_strategy(settings: dict[str, Any], model: VisionLanguageModel, world_size: int) -> Strategy | str:
    """The Lightning strategy `settings` (a `conf/strategy/*.yaml`) names, wrapping `model`'s units;
    `world_size` processes in all (FSDP2 shards over all of them)."""
    name = settings.get("name")
    if name not in STRATEGIES:
        raise ValueError(f"strategy.name={name!r} is not one of {', '.join(STRATEGIES)} (see conf/strategy/)")
    if name == "auto":
        return "auto"
    if name == "ddp":
        return DDPStrategy(
            find_unused_parameters=settings["find_unused_parameters"],
            gradient_as_bucket_view=settings["gradient_as_bucket_view"],
        )
    if name == "fsdp":
        if settings["sharding"] not in FSDP_SHARDING:
            raise ValueError(f"strategy.sharding={settings['sharding']!r} is not one of {', '.join(FSDP_SHARDING)}")
        return FSDPStrategy(
            auto_wrap_policy=shard_units(model),
            sharding_strategy=FSDP_SHARDING[settings["sharding"]],
            state_dict_type=settings["state_dict_type"],
            cpu_offload=settings["cpu_offload"],
            use_orig_params=True,  # frozen and trained weights may share a unit; one LR group per part
        )
    return AtomicModelParallelStrategy(
        data_parallel_size=world_size,
        tensor_parallel_size=1,
        save_distributed_checkpoint=settings["sharded_checkpoint"],
    )


class AtomicModelParallelStrategy(ModelParallelStrategy):
    """FSDP2 whose sharded checkpoints are written to a partial folder and swapped in once complete
    (`vlmlab.training.checkpoints`); Lightning's writes into the folder it replaces."""

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(filepath))
        parent = super()
        save_sharded_atomically(
            lambda folder: parent.save_checkpoint(checkpoint, folder, storage_options),
            path,
            self.global_rank == 0,
            self.barrier,
        )


def is_sharded(strategy: Strategy) -> bool:
    return isinstance(strategy, FSDPStrategy | ModelParallelStrategy)


def fully_shard_units(model: VisionLanguageModel, mesh: Any) -> None:
    """FSDP2: shard each unit (`shard_units`), the encoder's remaining weights, then the rest of the model over
    `mesh`."""
    from torch.distributed.fsdp import fully_shard

    units = shard_units(model)
    for module in [m for m in model.modules() if type(m) in units]:
        fully_shard(module, mesh=mesh)
    fully_shard(model.encoder, mesh=mesh)  # a unit of its own: a contrastive objective calls it directly
    fully_shard(model, mesh=mesh)
