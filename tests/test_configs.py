"""Every preset composes, every tiny preset builds, and bad choices fail early with the valid ones listed."""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy
from omegaconf import DictConfig, OmegaConf
from transformers import LlavaNextImageProcessor

from vlmlab.config import group_options, validate_config
from vlmlab.data import schema
from vlmlab.data.synthetic import SynthConfig
from vlmlab.errors import UsageError
from vlmlab.models.builder import build_vlm
from vlmlab.presets import config_dir, preset_values
from vlmlab.testing import compose_train
from vlmlab.training.distributed import build_strategy, shard_units
from vlmlab.training.stage import StageSpec, stage_specs

GROUPS = [
    "model/encoder",
    "model/connector",
    "model/llm",
    "data",
    "stage",
    "curriculum",
    "trainer",
    "strategy",
    "launcher",
    "hparams_search",
    "logger",
    "callbacks",
    "paths",
    "experiment",
]


def test_every_group_has_presets() -> None:
    for group in GROUPS:
        assert group_options(group), f"conf/{group} has no presets"


EVALUATION_ONLY = {"pope"}  # data presets of test splits only (scored with vlmlab-eval)


@pytest.mark.parametrize(
    "override",
    [f"{group}={option}" for group in GROUPS if group != "stage" for option in group_options(group)],
)
def test_every_preset_composes_and_validates(compose_config, override: str) -> None:
    cfg = compose_config([override], fast=False)
    missing = OmegaConf.missing_keys(cfg)
    if missing:  # a preset for the user's own files leaves their paths to fill in (???), nothing else
        assert all(key.startswith(("data.sources.", "model.llm.pretrained")) for key in missing), missing
        return
    validate_config(cfg)  # raises on a preset that composes but cannot work
    if override.removeprefix("data=") in EVALUATION_ONLY:  # nothing to train on: said by name
        with pytest.raises(UsageError, match="mixture 'align' is not in data.mixtures \\(none\\)"):
            stage_specs(cfg)
        return
    stage_specs(cfg)


@pytest.mark.parametrize("stage", [o for o in group_options("stage") if o != "base"])  # base: shared defaults
def test_every_stage_preset_validates(compose_config, stage: str) -> None:
    cfg = compose_config([f"stage@curriculum.stages.align={stage}"], fast=False)
    assert [s.name for s in stage_specs(cfg)] == ["align", "instruct"]


@pytest.mark.parametrize("data", [d for d in group_options("data") if d not in EVALUATION_ONLY])
def test_every_data_preset_validates_with_both_stage_mixtures(compose_config, data: str) -> None:
    required = ["data.sources.hf.train.path=/datasets/table"] if data == "hf" else []
    cfg = compose_config([f"data={data}", "data.root=/datasets", *required], fast=False)
    validate_config(cfg)  # every split of every source fits its format
    assert {"align", "instruct"} <= set(cfg.data.mixtures)  # synthetic also has `pretrain` (curriculum=demo)
    assert [s.mixture for s in stage_specs(cfg)] == ["align", "instruct"]


@pytest.mark.parametrize("encoder", [o for o in group_options("model/encoder") if o.startswith("tiny_")])
def test_every_tiny_encoder_builds_into_a_model(compose_config, encoder: str) -> None:
    cfg = compose_config([f"model/encoder={encoder}"])
    validate_config(cfg)
    model = build_vlm(cfg.model)
    assert model.connector.in_dim == model.encoder.output_dim
    assert model.connector.out_dim == model.llm.hidden_size
    # the patches of an image (a native-resolution encoder's: the most tokens an image gives)
    tokens = model.encoder.token_layout.max_tokens if model.native_resolution else model.encoder.num_patches
    assert model.connector.num_in_tokens == tokens


@pytest.mark.parametrize("connector", group_options("model/connector"))
def test_every_connector_preset_builds(compose_config, connector: str) -> None:
    width = ["model.llm.config.hidden_size=128"] if connector == "identity" else []  # the ViT's: nothing projects
    cfg = compose_config([f"model/connector={connector}", "model.encoder.model_kwargs.patch_size=8", *width])
    model = build_vlm(cfg.model)
    assert model.encoder.num_patches == 144
    tokens = model.connector.num_out_tokens  # what the connector says it gives, which the data pipeline uses
    assert model.num_image_tokens == tokens and 0 < tokens <= 144
    images = model.encode_images(torch.randn(2, 3, 96, 96))
    assert images.shape == (2, tokens, model.llm.hidden_size)


def test_demo_experiment_composes_with_its_curriculum(compose_config) -> None:
    cfg = compose_config(["experiment=demo"], fast=False)
    specs = stage_specs(cfg)
    assert [s.name for s in specs] == ["pretrain", "align", "instruct"]
    pretrain, align, instruct = specs
    assert pretrain.objective == "contrastive" and pretrain.mixture == "pretrain"
    assert pretrain.train == {"encoder": "full", "connector": "frozen", "llm": "frozen"}
    assert align.train == {"encoder": "frozen", "connector": "full", "llm": "full"}
    assert instruct.train == {"encoder": "full", "connector": "full", "llm": "full"}
    assert cfg.experiment_name == "vlmlab-demo"
    assert cfg.data.mixtures.instruct == {"vqa": 1.0, "doc": 0.5, "caption": 0.2, "doc_text": 0.2}


def test_unknown_preset_lists_the_valid_choices(compose_config) -> None:
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["model/connector=mlp3x"])
    message = str(err.value.__cause__ or err.value)
    assert "mlp3x" in message and "linear" in message and "mlp2x_gelu" in message


def test_dot_instead_of_slash_is_caught(compose_config) -> None:
    cfg = compose_config(["model.connector=mlp2x_gelu"])
    with pytest.raises(
        ValueError,
        match="write model/connector=NAME \\(with a slash\\).*Presets: avgpool, c_abstractor, identity, linear, mlp2x",
    ):
        validate_config(cfg)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("curriculum.stages.align.train.llm=frozn", "train.llm='frozn' is not one of frozen, full, lora"),
        (
            "curriculum.stages.align.train.connector=lora",
            "train.connector=lora is not supported \\(only encoder, llm\\)",
        ),
        ("curriculum.stages.align.lora=null", "train.encoder=lora needs lora.r, lora.alpha, lora.dropout"),
        ("curriculum.stages.align.lora.target_modules.encoder=null", "needs lora.target_modules.encoder"),
        (
            "curriculum.stages.align.mixture=captions",
            "mixture 'captions' is not in data.mixtures \\(pretrain, align, instruct\\)",
        ),
        ("curriculum.stages.instruct.batch_size=10", "batch_size=10 is not a multiple of micro_batch_size=4"),
        ("+curriculum.stages.align.learning_rate=0.1", "unknown field\\(s\\) \\['learning_rate'\\]"),
        ("curriculum.stages.align.lr.encoder=null", "encoder trains \\(full\\) but lr.encoder is not set"),
    ],
)
def test_bad_stage_values_fail_before_building(compose_config, override: str, message: str) -> None:
    encoder = "lora" if "lora" in override else "full"  # the demo's align freezes it
    trained = [f"curriculum.stages.align.train.encoder={encoder}", "curriculum.stages.align.lr.encoder=1e-3"]
    cfg = compose_config(["curriculum=demo", *trained, override])
    with pytest.raises(ValueError, match=message):
        stage_specs(cfg)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "+data.mixtures.instruct.charts=1.0",
            "data.mixtures.instruct names source 'charts'; the data config has caption, vqa, doc",
        ),
        ("data.mixtures.align.caption=0", "data.mixtures.align.caption must be > 0, got 0"),
        ("data.image_resize=pad", "data.image_resize='pad' is not one of resize, letterbox, resize_crop"),
    ],
)
def test_bad_data_values_are_caught(compose_config, override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_config(compose_config([override]))


def test_bad_anyres_grids_are_caught(compose_config) -> None:
    cfg = compose_config(["data.image_resize=anyres", "data.anyres.grid_pinpoints=[[0,2]]"])
    with pytest.raises(ValueError, match=r"grid_pinpoints=\[\[0, 2\]\] needs \[rows, cols\] pairs >= 1"):
        validate_config(cfg)
    cfg = compose_config(["data.image_resize=anyres", "data.anyres.max_tiles=1"])
    with pytest.raises(ValueError, match="max_tiles=1 leaves none of the grids"):
        validate_config(cfg)


def test_config_dir_is_the_checkout_conf() -> None:
    assert (config_dir() / "train.yaml").is_file()


def _stages(compose_config, experiment: str) -> dict:
    cfg = compose_config([f"experiment={experiment}", "data.root=/datasets/llava"], fast=False)
    validate_config(cfg)
    return cfg, {s.name: s for s in stage_specs(cfg)}


def test_llava15_preset_is_the_published_recipe(compose_config) -> None:
    cfg, stages = _stages(compose_config, "llava15")
    assert (cfg.model.llm.pretrained, cfg.data.image_resize) == ("lmsys/vicuna-7b-v1.5", "letterbox")
    align, instruct = stages["align"], stages["instruct"]
    assert cfg.data.sources[next(iter(cfg.data.mixtures[align.mixture]))].train.file.endswith(
        "blip_laion_cc_sbu_558k.json"
    )
    assert cfg.data.sources[next(iter(cfg.data.mixtures[instruct.mixture]))].train.file.endswith(
        "llava_v1_5_mix665k.json"
    )
    assert align.train == {"encoder": "frozen", "connector": "full", "llm": "frozen"}
    assert (align.lr["connector"], align.batch_size, align.weight_decay) == (1e-3, 256, 0.0)
    assert instruct.train == {"encoder": "frozen", "connector": "full", "llm": "full"}
    assert (instruct.lr["connector"], instruct.lr["llm"], instruct.batch_size) == (2e-5, 2e-5, 128)
    for stage in stages.values():
        assert (stage.max_steps, stage.max_epochs, stage.warmup_ratio) == (-1, 1, 0.03)
        assert (stage.precision, stage.gradient_checkpointing) == ("bf16-mixed", True)


def test_llava_next_preset_is_llava15_with_llava_nexts_tiles(compose_config) -> None:
    """The grids at 336 px are transformers' LLaVA-NeXT defaults (image_grid_pinpoints, in pixels)."""
    cfg, stages = _stages(compose_config, "llava_next")
    assert (cfg.data.image_resize, cfg.model.image_newline, cfg.data.max_length) == ("anyres", True, 4096)
    grids = [[r * 336, c * 336] for r, c in cfg.data.anyres.grid_pinpoints]
    assert grids == LlavaNextImageProcessor.image_grid_pinpoints
    instruct = stages["instruct"]
    assert instruct.train == {"encoder": "full", "connector": "full", "llm": "full"}
    assert (instruct.lr["encoder"], instruct.lr["llm"]) == (2e-6, 2e-5)
    assert cfg.model.llm.pretrained == "lmsys/vicuna-7b-v1.5"


def test_llava15_lora_and_prismatic_one_stage_presets(compose_config) -> None:
    _, stages = _stages(compose_config, "llava15_lora")
    instruct = stages["instruct"]
    assert instruct.train["llm"] == "lora" and (instruct.lr["llm"], instruct.lr["connector"]) == (2e-4, 2e-5)
    assert (instruct.lora["r"], instruct.lora["alpha"]) == (128, 256)
    _, stages = _stages(compose_config, "prismatic_one_stage")
    assert list(stages) == ["instruct"]
    assert (stages["instruct"].weight_decay, stages["instruct"].lr["llm"], stages["instruct"].batch_size) == (
        0.1,
        2e-5,
        128,
    )


@pytest.mark.parametrize("strategy", group_options("strategy"))
def test_every_strategy_preset_builds(compose_config, strategy: str) -> None:
    cfg = compose_config([f"strategy={strategy}"])
    built = build_strategy(OmegaConf.to_container(cfg.strategy), build_vlm(cfg.model), world_size=2)
    expected = {
        "ddp": DDPStrategy,
        "fsdp": FSDPStrategy,  # constructed on the CPU; it trains only on GPUs
        "fsdp2": ModelParallelStrategy,  # vlmlab's: its sharded checkpoints swapped in whole
    }
    assert built == "auto" if strategy == "auto" else isinstance(built, expected[strategy])
    # The units FSDP and FSDP2 shard: decoder layers, vision blocks, the connector.
    units = {c.__name__ for c in shard_units(build_vlm(cfg.model))}
    assert units == {"LlamaDecoderLayer", "Block", "MLPConnector"}


def test_slurm_launcher_takes_nodes_and_tasks_from_the_trainer() -> None:
    overrides = ["launcher=slurm", "trainer.num_nodes=2", "trainer.devices=8", "hydra.launcher.partition=gpu"]
    cfg = compose_train(overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 8, 8)
    assert launcher.partition == "gpu"


SCHEMAS = [StageSpec, SynthConfig, *(getattr(schema, name) for name in dir(schema) if name.endswith("Schema"))]


@pytest.mark.parametrize("checked", SCHEMAS, ids=lambda c: c.__name__)
def test_the_dataclasses_that_check_configs_hold_no_default(checked: type) -> None:
    """A default is written once, in conf/: a dataclass default would be a second copy that drifts (as
    StageSpec's batch 32 did from conf/stage/base.yaml's 128)."""
    with_default = [
        f.name for f in dataclasses.fields(checked) if f.default is not MISSING or f.default_factory is not MISSING
    ]
    assert not with_default, f"{checked.__name__} gives {with_default} a default; write it in conf/ instead"


def preset_redundancies(path: Path, base: DictConfig) -> list[str]:
    """Keys of the preset at `path` set to the value that `base` (what it starts from) already gives."""
    preset = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    given = OmegaConf.to_container(base, resolve=False)
    return [f"{path.relative_to(config_dir())}: {k}" for k, v in preset.items() if k in given and given[k] == v]


def test_presets_write_only_what_differs_from_what_they_start_from() -> None:
    """Stage presets start from conf/stage/base.yaml, data presets from conf/data/loading/default.yaml: a value
    copied from there is a second place to change it."""
    stage_base, loading = preset_values("stage/base"), preset_values("data/loading/default")
    repeated = [
        r
        for p in (config_dir() / "stage").glob("*.yaml")
        if p.stem != "base"
        for r in preset_redundancies(p, stage_base)
    ]
    repeated += [r for p in (config_dir() / "data").glob("*.yaml") for r in preset_redundancies(p, loading)]
    assert not repeated, repeated
    # and the check sees a copy: base.yaml itself restates every value of base.yaml
    assert len(preset_redundancies(config_dir() / "stage" / "base.yaml", stage_base)) == len(stage_base)
