"""`StageSpec`: one curriculum stage, read and checked from its config before anything is built; the
curriculum's list of stages."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, get_args

from omegaconf import DictConfig, OmegaConf

from vlmlab.errors import UsageError, check_types
from vlmlab.models.loss import LossImpl
from vlmlab.presets import preset_values

PARTS = ("encoder", "connector", "llm")
TRAIN_MODES = ("frozen", "full", "lora")
LORA_PARTS = ("encoder", "llm")  # the connector is small: it trains in full
LOSSES = get_args(LossImpl)
OBJECTIVES = ("lm", "contrastive")
# Lightning's `Trainer(precision=...)` values (its documented list, with its short aliases)
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "transformer-engine",
              "transformer-engine-float16", "64", "32", "16", "bf16")  # fmt: skip
CONTRASTIVE_LOSSES = ("siglip", "clip")


@dataclass
class StageSpec:
    """What one stage trains, on what, and how. Fields only: every field's meaning and default value is in
    conf/stage/base.yaml, which every stage preset starts from."""

    name: str
    mixture: str
    train: dict[str, str]
    lr: dict[str, float | None]  # per part (and `text`); null for a frozen part
    weight_decay: float
    warmup_ratio: float
    max_steps: int
    max_epochs: int
    batch_size: int  # global: micro_batch_size x devices x nodes x accumulation
    micro_batch_size: int
    gradient_clip_val: float | None
    precision: str
    gradient_checkpointing: bool
    compile: bool
    loss: str
    loss_chunk_size: int
    val_check_interval: int | float | None
    lora: dict[str, Any] | None
    objective: str
    contrastive_loss: str
    contrastive_dim: int

    @classmethod
    def from_config(cls, name: str, cfg: DictConfig, mixtures: dict[str, dict[str, float]]) -> StageSpec:
        if not isinstance(cfg, DictConfig):
            raise UsageError(f"curriculum stage '{name}' must be a mapping, got {cfg!r}")
        check_types(
            cfg, cls, f"curriculum.stages.{name}", exclude=("name",)
        )  # types and field names, before any value is used
        missing = [f.name for f in fields(cls) if f.name != "name" and f.name not in cfg]
        if missing:
            raise UsageError(
                f"curriculum.stages.{name} does not set {', '.join(missing)}: start the stage from the stage presets, "
                f"e.g. `- /stage@stages.{name}: base` in the curriculum's defaults list (conf/stage/base.yaml)"
            )
        spec = cls(name=name, **OmegaConf.to_container(cfg, resolve=True))
        spec.validate(mixtures)
        return spec

    @classmethod
    def from_fields(cls, name: str, **values: Any) -> StageSpec:
        """A stage of conf/stage/base.yaml's values and `values`, checked, for code that builds one without Hydra
        (benchmarks, tests); its mixture is taken to exist."""
        cfg = OmegaConf.merge(preset_values("stage/base"), values)
        return cls.from_config(name, cfg, {cfg.mixture: {}})

    def validate(self, mixtures: dict[str, dict[str, float]]) -> None:
        where = f"curriculum stage '{self.name}'"
        for part in PARTS:
            mode = self.train.get(part)
            if mode not in TRAIN_MODES:
                raise UsageError(f"{where}: train.{part}={mode!r} is not one of {', '.join(TRAIN_MODES)}")
            if mode != "frozen" and not self.lr.get(part):
                raise UsageError(f"{where}: {part} trains ({mode}) but lr.{part} is not set")
            if mode == "lora":
                self._validate_lora(part)
        if self.objective not in OBJECTIVES:
            raise UsageError(f"{where}: objective={self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        if self.objective == "contrastive":
            self._validate_contrastive()
        elif all(self.train[p] == "frozen" for p in PARTS):
            raise UsageError(f"{where}: every part is frozen, nothing would train")
        if self.mixture not in mixtures:
            raise UsageError(
                f"{where}: mixture '{self.mixture}' is not in data.mixtures ({', '.join(mixtures) or 'none'}); "
                "name one of them or add it to the data config"
            )
        if self.max_steps <= 0 and self.max_epochs <= 0:
            raise UsageError(f"{where}: set max_steps or max_epochs to a positive number")
        for field in ("batch_size", "micro_batch_size"):
            if getattr(self, field) < 1:
                raise UsageError(f"{where}: {field} must be at least 1 sample, got {getattr(self, field)}")
        for part, lr in self.lr.items():
            if lr is not None and not 0 < lr < float("inf"):
                raise UsageError(f"{where}: lr.{part} must be a positive learning rate, got {lr}")
        if self.weight_decay < 0:
            raise UsageError(f"{where}: weight_decay must be >= 0, got {self.weight_decay}")
        if self.gradient_clip_val is not None and self.gradient_clip_val < 0:
            raise UsageError(f"{where}: gradient_clip_val must be >= 0 (null: none), got {self.gradient_clip_val}")
        if str(self.precision) not in PRECISIONS:
            raise UsageError(f"{where}: precision={self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.batch_size % self.micro_batch_size:
            raise UsageError(
                f"{where}: batch_size={self.batch_size} is not a multiple of micro_batch_size={self.micro_batch_size}"
            )
        if self.loss not in LOSSES:
            raise UsageError(f"{where}: loss={self.loss!r} is not one of {', '.join(LOSSES)}")
        if self.loss_chunk_size <= 0:
            raise UsageError(
                f"{where}: loss_chunk_size must be a positive number of positions, got {self.loss_chunk_size}"
            )
        if not 0 <= self.warmup_ratio < 1:
            raise UsageError(f"{where}: warmup_ratio must be in [0, 1), got {self.warmup_ratio}")

    def _validate_contrastive(self) -> None:
        where = f"curriculum stage '{self.name}' (objective: contrastive)"
        if self.contrastive_loss not in CONTRASTIVE_LOSSES:
            raise UsageError(f"{where}: contrastive_loss={self.contrastive_loss!r} is not one of siglip, clip")
        unused = [p for p in ("connector", "llm") if self.train[p] != "frozen"]
        if unused:
            raise UsageError(
                f"{where}: the {' and '.join(unused)} take no part in the contrastive loss; "
                f"set train.{unused[0]}=frozen"
            )
        if not self.lr.get("text"):
            raise UsageError(f"{where}: the text tower and projection heads train: set lr.text")
        if self.contrastive_dim <= 0:
            raise UsageError(f"{where}: contrastive_dim must be positive, got {self.contrastive_dim}")

    def _validate_lora(self, part: str) -> None:
        where = f"curriculum stage '{self.name}'"
        if part not in LORA_PARTS:
            raise UsageError(f"{where}: train.{part}=lora is not supported (only {', '.join(LORA_PARTS)}); use full")
        missing = [k for k in ("r", "alpha", "dropout") if (self.lora or {}).get(k) is None]
        if missing:
            raise UsageError(f"{where}: train.{part}=lora needs lora.{', lora.'.join(missing)} (see conf/stage/)")
        if not (self.lora.get("target_modules") or {}).get(part):
            raise UsageError(f"{where}: train.{part}=lora needs lora.target_modules.{part}: module names or all-linear")

    def accumulation(self, world_size: int) -> int:
        """Gradient accumulation steps that make `batch_size` the global batch on `world_size` processes."""
        per_step = self.micro_batch_size * world_size
        if self.batch_size % per_step:
            raise UsageError(
                f"stage '{self.name}': global batch_size={self.batch_size} is not divisible by "
                f"micro_batch_size={self.micro_batch_size} x {world_size} processes"
            )
        return self.batch_size // per_step


def stage_specs(cfg: DictConfig) -> list[StageSpec]:
    """Every stage of `cfg.curriculum.stages`, in order, checked against the data config's mixtures."""
    mixtures = cfg.data.get("mixtures")
    mixtures = {} if mixtures is None else OmegaConf.to_container(mixtures, resolve=True)
    stages = cfg.curriculum.stages
    if not stages:
        raise UsageError("curriculum.stages is empty: choose a curriculum (e.g. curriculum=llava) or add a stage")
    return [StageSpec.from_config(name, stage, mixtures) for name, stage in stages.items()]


def mixture_weights(cfg: DictConfig, stage: StageSpec) -> dict[str, float]:
    """The stage's data mixture: source -> weight."""
    return OmegaConf.to_container(cfg.data.mixtures[stage.mixture], resolve=True)
