"""Stages in MLflow as a researcher uses them, on a real sqlite store: each stage run's data as dataset inputs, its
model logged and registered with the run's metrics linked, the experiment marked as model training; a registered
model answers through `mlflow.pyfunc` and `vlmlab-generate checkpoint=models:/...` as the stage folder does; a real
`mlflow server` on the store shows all of it through its REST API (what the UI reads)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from tests.cli_in_process import BIN, InProcess
from tests.mlflow_server import Server
from vlmlab.cli.generate import main as generate_main
from vlmlab.data.formats import read_split
from vlmlab.errors import UsageError
from vlmlab.inference.answer import Assistant, GenerationOptions, Request, answer_batches
from vlmlab.inference.loading import load_model
from vlmlab.presets import config_dir
from vlmlab.testing import TINY_OVERRIDES, compose_train
from vlmlab.tracking.datasets import records_digest
from vlmlab.tracking.mlflow_runs import EXPERIMENT_KIND_TAG, MODEL_TRAINING, check_registration
from vlmlab.tracking.registry import PREDICT_PARAMS, using_store
from vlmlab.training.curriculum import run_curriculum

EXPERIMENT, MODEL = "registry", "tiny-vlm"


@pytest.fixture(scope="module")
def mlflow_server(mlflow_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    MlflowClient(mlflow_uri).search_experiments()  # the store's tables exist before two processes open it
    server = Server(mlflow_uri, tmp_path_factory.mktemp("server") / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def trained(
    mlflow_server: Server, tmp_path_factory: pytest.TempPathFactory, synth_root: Path, mlflow_uri: str
) -> DictConfig:
    """The two-stage curriculum, each stage's model registered (the server starts meanwhile)."""
    folder = tmp_path_factory.mktemp("registered")
    cfg = compose_train(
        [
            *TINY_OVERRIDES,
            f"paths.root_dir={folder}",
            f"paths.output_dir={folder / 'run'}",
            f"paths.mlflow_uri={mlflow_uri}",
            f"paths.mlflow_artifacts={folder / 'artifacts'}",
            f"data.root={synth_root}",
            "eval.enabled=false",
            "~callbacks.generation_validation",
            f"experiment_name={EXPERIMENT}",
            "logger.register_model=every_stage",
            f"logger.registered_model_name={MODEL}",
        ]
    )
    run_curriculum(cfg)
    return cfg


def stage_runs(client: MlflowClient) -> dict[str, Any]:
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    return {r.data.tags["stage"]: r for r in runs if "stage" in r.data.tags}


def test_stage_runs_hold_their_data_and_their_registered_models(trained: DictConfig, mlflow_uri: str) -> None:
    client = MlflowClient(mlflow_uri)
    assert client.get_experiment_by_name(EXPERIMENT).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING
    runs = stage_runs(client)

    def inputs(stage: str) -> dict[str, tuple[str, int, str]]:
        found = {}
        for item in runs[stage].inputs.dataset_inputs:
            context = next(t.value for t in item.tags if t.key == "mlflow.data.context")
            found[item.dataset.name] = (context, json.loads(item.dataset.profile)["num_rows"], item.dataset.digest)
        return found

    sources = OmegaConf.to_container(trained.data.sources, resolve=True)
    train, val = (read_split("caption", sources["caption"], split) for split in ("train", "val"))
    assert inputs("align") == {
        "caption/train": ("training", len(train), records_digest(train)),
        "caption/val": ("validation", len(val), records_digest(val)),
    }
    instruct = inputs("instruct")  # its mixture: vqa, doc and caption
    assert set(instruct) == {f"{s}/{split}" for s in ("vqa", "doc", "caption") for split in ("train", "val")}
    assert instruct["caption/train"] == inputs("align")["caption/train"]  # the same records, the same digest
    assert len({digest for _, _, digest in instruct.values()}) == 6
    source = json.loads(runs["align"].inputs.dataset_inputs[0].dataset.source)["uri"]
    assert source.startswith(trained.data.root) and Path(source).is_file()
    parent = client.get_run(runs["instruct"].data.tags["mlflow.parentRunId"])  # its row shows all the data
    assert {d.dataset.name for d in parent.inputs.dataset_inputs} == set(instruct) | set(inputs("align"))

    versions = {v.tags["stage"]: v for v in client.search_model_versions(f"name='{MODEL}'")}
    assert sorted(int(v.version) for v in versions.values()) == [1, 2]
    for stage, version in versions.items():  # each from its stage's run, with that run's metrics linked
        assert version.run_id == runs[stage].info.run_id
        logged = client.get_logged_model(version.source.removeprefix("models:/"))  # (sqlite keeps no model_id)
        assert {m.key: m.value for m in logged.metrics} == runs[stage].data.metrics
        assert logged.source_run_id == runs[stage].info.run_id
    # The final model is an output of the curriculum's run too.
    assert [f"models:/{o.model_id}" for o in parent.outputs.model_outputs] == [versions["instruct"].source]


def test_a_registered_model_answers_as_vlmlab_generate_on_its_stage_folder(
    trained: DictConfig, mlflow_uri: str, synth_root: Path, tmp_path: Path, in_process: InProcess
) -> None:
    images = sorted((synth_root / "images" / "caption" / "test").glob("*.png"))[:2]
    prompts = ["Describe the image.", "<image> or <image>: which is brighter?", "Say something."]
    requests = pd.DataFrame({"prompt": prompts, "image": [images[0].read_bytes(), [str(p) for p in images], None]})
    with using_store(mlflow_uri):
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}/1")  # the align stage: it answers with text
    answers = model.predict(requests, params={"max_new_tokens": 6})

    # vlmlab-generate's own code on the stage folder (tests/test_generate.py holds the command to it)
    stage = load_model(Path(trained.paths.output_dir) / "stages" / "align", trained.model, model_source="groups")
    assistant = Assistant(stage.model, stage.image_resize)
    own = [Request(prompts[0], images[:1]), Request(prompts[1], images), Request(prompts[2])]
    assert answers == next(answer_batches(assistant, own, GenerationOptions(max_new_tokens=6), batch_size=8))
    assert answers[0]  # text, so the comparisons can fail

    lines = [{"image": str(images[0]), "prompt": prompts[0]}, {"image": [str(p) for p in images], "prompt": prompts[1]}]
    (tmp_path / "requests.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = in_process(  # in this process (its process: tests/test_generate.py)
        generate_main,
        [
            str(BIN / "vlmlab-generate"),
            f"checkpoint=models:/{MODEL}/1",
            f"mlflow_uri={mlflow_uri}",
            "requests=requests.jsonl",
            "output=answers.jsonl",
            "max_new_tokens=6",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(row) for row in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert [row["answer"] for row in rows] == answers[:2]

    missing = rf"checkpoint=models:/{MODEL}/9: .*looked up in the MLflow store {mlflow_uri}\)$"
    with pytest.raises(ValueError, match=missing):
        load_model(f"models:/{MODEL}/9", tracking_uri=mlflow_uri)


def test_the_mlflow_server_shows_stage_data_models_and_the_experiment_kind(
    mlflow_server: Server, trained: DictConfig
) -> None:
    experiment = mlflow_server.get("/api/2.0/mlflow/experiments/get-by-name", experiment_name=EXPERIMENT)["experiment"]
    assert {"key": EXPERIMENT_KIND_TAG, "value": MODEL_TRAINING} in experiment["tags"]
    runs = mlflow_server.post("/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    stages = {}
    for run in runs:
        tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        if "stage" in tags:
            stages[tags["stage"]] = run
    datasets = {
        stage: {
            (d["dataset"]["name"], d["tags"][0]["value"], json.loads(d["dataset"]["profile"])["num_rows"])
            for d in run["inputs"]["dataset_inputs"]
        }
        for stage, run in stages.items()
    }
    assert datasets["align"] == {("caption/train", "training", 48), ("caption/val", "validation", 8)}
    assert ("vqa/train", "training", 48) in datasets["instruct"]
    for run in stages.values():
        (output,) = run["outputs"]["model_outputs"]
        model = mlflow_server.get(f"/api/2.0/mlflow/logged-models/{output['model_id']}")["model"]
        assert {m["key"] for m in model["data"]["metrics"]} >= {"train/loss", "val/loss"}
    versions = mlflow_server.get("/api/2.0/mlflow/model-versions/search", filter=f"name='{MODEL}'")["model_versions"]
    assert sorted(v["version"] for v in versions) == ["1", "2"]


def test_registration_options_and_predict_defaults() -> None:
    check_registration(None, None)
    check_registration("final", "my-model")
    with pytest.raises(UsageError, match="logger.register_model='last' is not one of null, final, every_stage"):
        check_registration("last", "my-model")
    with pytest.raises(UsageError, match="needs logger.registered_model_name"):
        check_registration("every_stage", None)
    generate = OmegaConf.load(config_dir() / "generate.yaml")  # predict's defaults are vlmlab-generate's
    for name, (_, default) in PREDICT_PARAMS.items():
        assert OmegaConf.to_container(generate)[name] == default, name
