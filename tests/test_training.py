"""Training: a real Trainer.fit whose loss falls, freeze policy, and a whole curriculum tracked in MLflow."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_model

from vlmlab.data.chat_format import SampleError
from vlmlab.data.datamodule import VLMDataModule
from vlmlab.eval.answer_metrics import vqa_accuracy
from vlmlab.models.builder import build_vlm
from vlmlab.tracking.mlflow_runs import git_commit
from vlmlab.training.curriculum import run_curriculum
from vlmlab.training.module import VLMTrainingModule, warmup_cosine
from vlmlab.training.stage import mixture_weights, stage_specs


def test_warmup_cosine_schedule() -> None:
    assert warmup_cosine(0, 10, 100) == 0.1
    assert warmup_cosine(9, 10, 100) == 1.0
    assert abs(warmup_cosine(55, 10, 100) - 0.5) < 1e-9
    assert warmup_cosine(100, 10, 100) == 0.0


def test_fit_lowers_the_loss_and_respects_the_freeze_policy(compose_config) -> None:
    stage = "curriculum.stages.align"
    cfg = compose_config([f"{stage}.train.llm=full", f"{stage}.lr.llm=3e-3", f"{stage}.lr.connector=3e-3"])
    L.seed_everything(0)
    model = build_vlm(cfg.model)
    spec = stage_specs(cfg)[0]  # encoder frozen; connector and LLM train
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    connector_before = {k: v.clone() for k, v in model.connector.state_dict().items()}
    datamodule = VLMDataModule.from_config(cfg.data, model, cfg.seed, mixture_weights(cfg, spec), spec.micro_batch_size)
    datamodule.prepare_data()
    fixed_batch = next(iter(datamodule.train_dataloader()))
    module = VLMTrainingModule(model, spec)
    with torch.no_grad():
        before = module.batch_loss(fixed_batch).item()
    trainer = L.Trainer(
        max_steps=40,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=datamodule)
    module.eval()
    with torch.no_grad():
        after = module.batch_loss(fixed_batch).item()
    assert after < 0.8 * before, (before, after)
    assert all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in encoder_before.items())
    assert any(not torch.equal(v, model.connector.state_dict()[k]) for k, v in connector_before.items())
    assert not model.encoder.training  # frozen parts stay in eval mode


def test_curriculum_is_tracked_in_mlflow(compose_config, mlflow_uri: str) -> None:
    cfg = compose_config(["experiment_name=curriculum-test", "run_name=two-stages"])
    metrics = run_curriculum(cfg).metrics
    run_dir = Path(cfg.paths.output_dir)
    saved = json.loads((run_dir / "test_metrics.json").read_text())
    for source, metric in (("caption", "cider"), ("vqa", "vqa_accuracy"), ("doc", "anls")):
        for key in (f"test/{source}/{metric}", f"test/{source}/blind_{metric}"):
            assert metrics[key] == saved[key], key  # returned (for sweeps) as written
        rows = [json.loads(line) for line in (run_dir / "predictions" / f"{source}_test_scores.jsonl").open()]
        per_sample = [row["scores"][metric] for row in rows]  # each sample's own score: they average to the corpus
        assert sum(per_sample) / len(per_sample) == pytest.approx(metrics[f"test/{source}/{metric}"])
    state = json.loads((run_dir / "curriculum_state.json").read_text())
    assert list(state["stages"]) == ["align", "instruct"]
    assert all(s["status"] == "done" and s["global_step"] == 3 for s in state["stages"].values())
    # Paths inside the run folder are recorded relative to it (a moved run folder still resumes).
    assert state["stages"]["instruct"]["weights"] == "stages/instruct/model.safetensors"
    assert state["stages"]["instruct"]["init_from"] == "stages/align/model.safetensors"

    # The final weights on disk are the trained model's.
    model = build_vlm(cfg.model)
    load_model(model, run_dir / state["stages"]["instruct"]["weights"])

    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("curriculum-test")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.info.run_name == "two-stages")
    children = {r.data.tags["stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"align", "instruct"}
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["test/vqa/vqa_accuracy"] == metrics["test/vqa/vqa_accuracy"]
    parent_data = {(d.dataset.name, d.tags[0].value) for d in parent.inputs.dataset_inputs}
    assert {("vqa/test", "testing"), ("caption/train", "training"), ("doc/val", "validation")} <= parent_data
    assert parent.data.params["model.connector._target_"] == "vlmlab.models.connectors.MLPConnector"
    assert children["instruct"].data.tags["init_from"] == str(run_dir / state["stages"]["align"]["weights"])
    assert children["align"].data.tags["init_from"] == "config"
    assert "train/loss" in children["align"].data.metrics and "val/loss" in children["instruct"].data.metrics
    # Generation-based validation: each source the stage trains on, scored with its metrics, and a sample table.
    assert "val/caption/cider" in children["align"].data.metrics
    assert {"val/vqa/vqa_accuracy", "val/doc/anls", "val/caption/bleu_4"} <= set(children["instruct"].data.metrics)
    table_path = client.download_artifacts(children["instruct"].info.run_id, "val_samples/vqa/step_0000003.json")
    table = json.loads(Path(table_path).read_text())
    columns = ["id", "image", "question", "prediction", "references", "exact_match", "vqa_accuracy"]
    assert table["columns"] == columns and len(table["data"]) == 8
    for row in table["data"]:  # each sample's own score: the official accuracy of its prediction
        assert row[6] == vqa_accuracy(row[3], row[4].split(" | "))
    references = table["data"][0][4].split(" | ")
    assert len(references) == 10 and len(set(references)) == 1  # the ten (agreeing) synthetic answers
    assert table["data"][0][2].endswith("?") and "<image>" not in table["data"][0][2]
    assert children["align"].data.params["curriculum.stages.align.lr.connector"] == "0.001"
    artifacts = {a.path for a in client.list_artifacts(children["align"].info.run_id)}
    assert "config.yaml" in artifacts
    config_text = Path(client.download_artifacts(parent.info.run_id, "config.yaml")).read_text()
    assert "mlp2x_gelu" in config_text or "MLPConnector" in config_text
    assert parent.data.tags["mlflow.source.git.commit"] == git_commit()  # the tests run inside a git checkout
    assert len(git_commit()) == 40


def test_bad_records_are_skipped_counted_and_logged(
    compose_config, synth_root: Path, tmp_path: Path, mlflow_uri: str
) -> None:
    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    captions = json.loads((data / "caption" / "train.json").read_text())
    for record in captions[::2]:  # half of the align stage's images are gone
        (data / record["image"]).unlink()
    val_captions = json.loads((data / "caption" / "val.json").read_text())
    (data / val_captions[0]["image"]).unlink()  # and one validation image
    cfg = compose_config([f"data.root={data}", "experiment_name=skips", "eval.enabled=false"])
    run_curriculum(cfg)
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("skips").experiment_id])
    align = next(r for r in runs if r.data.tags.get("stage") == "align")
    assert align.data.metrics["data/skipped/missing_image"] >= 1
    assert align.data.metrics["val/skipped/missing_image"] == 1  # per validation pass, not a running total
    assert align.data.metrics["train/loss"] > 0

    with pytest.raises(
        SampleError, match="record 'caption-train-[0-9]+'.*does not exist; check the split's image folder"
    ):
        run_curriculum(compose_config([f"data.root={data}", "data.on_bad_record=raise", "experiment_name=raises"]))
