"""The curriculum's hand-off, freeze policies, LoRA stages, NaN handling and the global batch."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from peft import PeftModel
from safetensors.torch import load_file

from tests.scripts.record_stage import RecordStage
from vlmlab.data.datamodule import VLMDataModule
from vlmlab.errors import UsageError
from vlmlab.models.builder import build_vlm
from vlmlab.training.curriculum import run_curriculum
from vlmlab.training.module import VLMTrainingModule
from vlmlab.training.run_record import find_run_to_resume
from vlmlab.training.stage import mixture_weights, stage_specs
from vlmlab.training.stage_runner import build_trainer

NO_EVAL = ["eval.enabled=false", "~callbacks.generation_validation"]
RECORD = ["+callbacks.record._target_=tests.scripts.record_stage.RecordStage"]


def child_runs(mlflow_uri: str, experiment: str, parent_name: str) -> dict[str, object]:
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parent = next(r for r in runs if r.info.run_name == parent_name)
    return {r.data.tags["stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}


def test_each_stage_starts_from_the_previous_stages_saved_weights(compose_config, mlflow_uri: str) -> None:
    cfg = compose_config([*NO_EVAL, *RECORD, "experiment_name=handoff", "run_name=full"])
    run_curriculum(cfg)
    run_dir = Path(cfg.paths.output_dir)
    state = json.loads((run_dir / "curriculum_state.json").read_text())
    align_weights = run_dir / state["stages"]["align"]["weights"]  # recorded relative to the run folder
    align = load_file(align_weights)
    start = RecordStage.weights_at_start
    # The hand-off: instruct starts from exactly the weights align saved (tied embeddings are saved once).
    assert start["instruct"].keys() >= align.keys()
    assert all(torch.equal(start["instruct"][k], align[k]) for k in align)
    # LLaVA's align stage trains only the connector: frozen parts get no gradient and do not change.
    assert RecordStage.with_gradient["align"] == {n for n in align if n.startswith("connector.")}
    for key in align:
        assert torch.equal(start["align"][key], align[key]) != key.startswith("connector."), key
    assert not any(n.startswith("encoder.") for n in RecordStage.with_gradient["instruct"])
    children = child_runs(mlflow_uri, "handoff", "full")
    assert children["align"].data.tags["init_from"] == "config"
    assert children["instruct"].data.tags["init_from"] == str(align_weights)

    # A later stage alone, from any checkpoint: start_stage + init_from (a stage folder).
    stage_dir = str(align_weights.parent)
    later = compose_config(
        [*NO_EVAL, *RECORD, "experiment_name=handoff", "run_name=later", "curriculum.start_stage=instruct"]
        + [f"init_from={stage_dir}", f"paths.output_dir={Path(cfg.paths.output_dir).parent / 'later'}"]
    )
    RecordStage.weights_at_start.clear()
    run_curriculum(later)
    assert list(RecordStage.weights_at_start) == ["instruct"]
    assert all(torch.equal(RecordStage.weights_at_start["instruct"][k], align[k]) for k in align)
    assert (
        child_runs(mlflow_uri, "handoff", "later")["instruct"]
        .data.tags["init_from"]
        .endswith("stages/align/model.safetensors")
    )
    with pytest.raises(ValueError, match="start_stage=instruct skips earlier stages: say which weights"):
        run_curriculum(compose_config([*NO_EVAL, "curriculum.start_stage=instruct"]))
    with pytest.raises(ValueError, match="start_stage='caption' is not a stage of this curriculum"):
        run_curriculum(compose_config([*NO_EVAL, "curriculum.start_stage=caption"]))


LORA = [
    "curriculum.stages.instruct.train.llm=lora",
    "curriculum.stages.instruct.lr.llm=1e-2",
    "curriculum.stages.instruct.lora.r=4",
    "curriculum.stages.instruct.lora.alpha=8",
]


def test_lora_trains_only_adapters_and_merges_to_the_same_outputs(compose_config, tmp_path: Path) -> None:
    cfg = compose_config(LORA)
    L.seed_everything(0)
    model = build_vlm(cfg.model)
    spec = stage_specs(cfg)[1]
    datamodule = VLMDataModule.from_config(cfg.data, model, cfg.seed, mixture_weights(cfg, spec), spec.micro_batch_size)
    datamodule.prepare_data()
    batch = next(iter(datamodule.train_dataloader()))
    base_llm = {k: v.clone() for k, v in model.llm.state_dict().items()}
    module = VLMTrainingModule(model, spec)
    trainable = {n for n, p in model.llm.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    trainer = L.Trainer(
        max_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0
    )
    trainer.fit(module, datamodule=datamodule)
    llm = model.llm.state_dict()
    for name, before in base_llm.items():  # base weights now sit under the adapters' base_layer
        adapted = name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(before, llm[adapted] if adapted in llm else llm[name]), name
    assert any(llm[n].abs().sum() > 0 for n in llm if ".lora_B." in n)  # B starts at zero: it trained

    module.eval()
    with torch.no_grad():
        adapted_logits = module.model(**{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}).logits
        module.save_and_merge_adapters(tmp_path / "adapters")
        merged_logits = module.model(**{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}).logits
    torch.testing.assert_close(merged_logits, adapted_logits, atol=1e-5, rtol=1e-5)
    assert model.llm.state_dict().keys() == base_llm.keys()  # merged: a plain model again
    assert any(not torch.equal(base_llm[k], v) for k, v in model.llm.state_dict().items())

    # The saved adapters are peft's format: PeftModel.from_pretrained on the base LLM gives the merged model.
    fresh = build_vlm(cfg.model).llm.model
    fresh.load_state_dict(base_llm_hf := {k.removeprefix("model."): v for k, v in base_llm.items()})
    assert base_llm_hf
    peft_llm = PeftModel.from_pretrained(fresh, str(tmp_path / "adapters" / "llm")).eval()
    ids = batch["input_ids"].clamp(max=fresh.get_input_embeddings().num_embeddings - 1)
    with torch.no_grad():
        torch.testing.assert_close(
            peft_llm(input_ids=ids).logits, model.llm.model(input_ids=ids).logits, atol=1e-5, rtol=1e-5
        )


def test_a_lora_curriculum_saves_adapters_and_merged_weights(compose_config) -> None:
    cfg = compose_config([*NO_EVAL, *LORA])
    run_curriculum(cfg)
    stage_dir = Path(cfg.paths.output_dir) / "stages" / "instruct"
    assert {p.name for p in (stage_dir / "adapters" / "llm").iterdir()} >= {
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    weights = load_file(stage_dir / "model.safetensors")
    assert not any("lora_" in k or "base_layer" in k for k in weights)
    checkpoint = torch.load(stage_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["state_dict"] and all(
        k.startswith("model.connector.") or ".lora_" in k for k in checkpoint["state_dict"]
    )


def test_nan_loss_stops_naming_the_step_or_is_skipped(compose_config) -> None:
    nan_lr = ["curriculum.stages.align.lr.connector=1e30", "curriculum.stages.align.gradient_clip_val=null"]
    with pytest.raises(FloatingPointError, match=r"stage 'align': loss is (nan|inf) at step \d+; the last good"):
        run_curriculum(compose_config([*NO_EVAL, *nan_lr, "curriculum.stages.align.max_steps=6"]))
    cfg = compose_config([*NO_EVAL, *nan_lr, "nan_policy=skip", "experiment_name=nan-skip"])
    run_curriculum(cfg)
    client = MlflowClient(cfg.paths.mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("nan-skip").experiment_id])
    align = next(r for r in runs if r.data.tags.get("stage") == "align")
    assert align.data.metrics["train/nan_skipped"] >= 1


@pytest.mark.parametrize(("devices", "accumulation"), [(1, 2), (2, 1)])
def test_the_global_batch_is_kept_when_devices_change(compose_config, devices: int, accumulation: int) -> None:
    cfg = compose_config([f"trainer.devices={devices}", "trainer.accelerator=cpu", "strategy=ddp"])
    spec = stage_specs(cfg)[1]  # global batch 8 of micro-batches of 4
    trainer = build_trainer(cfg, spec, Path(cfg.paths.output_dir), logger=None, model=build_vlm(cfg.model))
    assert trainer.accumulate_grad_batches == accumulation
    assert spec.micro_batch_size * trainer.world_size * trainer.accumulate_grad_batches == spec.batch_size == 8
    with pytest.raises(ValueError, match="batch_size=8 is not divisible by micro_batch_size=4 x 3 processes"):
        spec.accumulation(3)


def test_resume_finds_the_run_or_says_what_is_wrong(compose_config, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="resume=true: no unfinished run of experiment 'vlmlab' / run 'llava'"):
        run_curriculum(compose_config(["resume=true"]))
    with pytest.raises(UsageError, match="no curriculum_state.json there; give the run folder"):
        run_curriculum(compose_config([f"resume={tmp_path}"]))

    # A run folder whose config differs from this command's (another seed) is refused before training.
    run_dir = tmp_path / "outputs" / "interrupted"
    (run_dir / ".hydra").mkdir(parents=True)
    cfg = compose_config(["resume=true"])
    OmegaConf.save(OmegaConf.merge(cfg, {"seed": 7}), run_dir / ".hydra" / "config.yaml", resolve=False)
    state = {"experiment_name": "vlmlab", "run_name": "llava", "finished": False, "stages": {}}
    (run_dir / "curriculum_state.json").write_text(json.dumps(state))
    assert find_run_to_resume(cfg) == run_dir
    with pytest.raises(ValueError, match="this command's seed config differs from the run in .*interrupted"):
        run_curriculum(cfg)
