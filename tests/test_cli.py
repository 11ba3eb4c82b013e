"""The console scripts, run as a user runs them: `vlmlab-train` and `vlmlab-data` in subprocesses."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.cli_in_process import BIN, InProcess
from tests.conftest import MODEL_OVERRIDES
from tests.published_formats import bad_llava_dataset, write_docvqa
from vlmlab.cli.data import main as data_main
from vlmlab.cli.evaluate import main as eval_main
from vlmlab.testing import TINY_OVERRIDES, run_command

SYNTHETIC_METRICS = {  # what the synthetic sources are scored with, and their blind baselines
    "caption": ["cider", *(f"bleu_{n}" for n in range(1, 5))],
    "vqa": ["vqa_accuracy", "exact_match"],
    "doc": ["anls", "exact_match"],
}
SYNTHETIC_METRICS = {s: names + [f"blind_{n}" for n in names] for s, names in SYNTHETIC_METRICS.items()}


def test_train_cli_runs_the_curriculum(tmp_path: Path, synth_root: Path, in_process: InProcess) -> None:
    result = run_command(
        [
            str(BIN / "vlmlab-train"),
            *TINY_OVERRIDES,
            f"data.root={synth_root}",
            "experiment_name=cli",
            "hydra.run.dir=run",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test split" in result.stdout and "blind baseline" in result.stdout
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert set(metrics) == {f"test/{source}/{m}" for source, names in SYNTHETIC_METRICS.items() for m in names}
    # The default store: mlflow.db in the working directory, as `mlflow ui` expects.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cli").experiment_id])
    names = sorted(r.info.run_name for r in runs)  # the parent run: the curriculum and what the command changed
    assert names[:2] == ["align", "instruct"] and names[2].startswith("llava · config.hidden_size=32 "), names
    weights = tmp_path / "run" / "stages" / "instruct" / "model.safetensors"
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(weights.stat().st_mode) == 0o666 & ~umask  # readable by colleagues, as the user's files are
    assert (tmp_path / "run" / "stages" / "align" / "checkpoints" / "last.ckpt").is_file()
    log = (tmp_path / "run" / "train.log").read_text()  # the whole run, up to the final scores
    assert "stage 'instruct': train" in log and "test vqa vqa_accuracy: " in log and "test doc anls: " in log
    assert "`Trainer.fit` stopped: `max_steps=3` reached." in log  # Lightning's own messages too

    # vlmlab-eval on the stage folder, which describes its model: the same scores, submission files, an MLflow run.
    evaluate = [str(BIN / "vlmlab-eval"), "checkpoint=run/stages/instruct"]  # the run's data: its data options
    result = run_command([*evaluate, "hydra.run.dir=eval", "sources=[vqa,doc]"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert scores == {k: v for k, v in metrics.items() if k.split("/")[1] in ("vqa", "doc")}
    vqa = json.loads((tmp_path / "eval" / "predictions" / "vqa_test.json").read_text())
    assert len(vqa) == 8 and set(vqa[0]) == {"id", "answer"}  # LLaVA-format source: generic fields
    rows = [json.loads(line) for line in (tmp_path / "eval" / "predictions" / "doc_test_scores.jsonl").open()]
    assert [row["prediction"] for row in rows] == [
        row["answer"] for row in json.loads((tmp_path / "eval" / "predictions" / "doc_test.json").read_text())
    ]
    per_sample = [row["scores"]["anls"] for row in rows]  # each question's score; their mean is the corpus score
    assert sum(per_sample) / len(per_sample) == pytest.approx(scores["test/doc/anls"], rel=1e-12)
    eval_runs = client.search_runs([client.get_experiment_by_name("vlmlab-eval").experiment_id])
    assert eval_runs[0].data.metrics["test/vqa/vqa_accuracy"] == scores["test/vqa/vqa_accuracy"]
    assert eval_runs[0].data.tags["checkpoint"].endswith("stages/instruct/model.safetensors")

    # its mistakes, in this process (the command's process is the smoke test above)
    retyped = in_process(
        eval_main, [*evaluate, "hydra.run.dir=eval2", "model.llm.config.num_hidden_layers=2"], tmp_path
    )
    assert retyped.returncode != 0 and "already says which model" in retyped.stderr  # not silently ignored
    model = [o for o in TINY_OVERRIDES if o.startswith("model.")]
    wrong = [*evaluate, *model, "model_source=groups", "hydra.run.dir=eval3", "model.llm.config.num_hidden_layers=2"]
    wrong = in_process(eval_main, wrong, tmp_path)
    assert wrong.returncode != 0
    assert "does not fit the model built from this config (missing: llm.model.model.layers.1." in wrong.stderr
    assert "Use the model/* choices and overrides of the run that wrote it" in wrong.stderr


def test_data_cli_writes_the_synthetic_dataset(tmp_path: Path, in_process: InProcess) -> None:
    """In this process (vlmlab-data's process: the check below)."""
    result = in_process(
        data_main,
        [
            str(BIN / "vlmlab-data"),
            "synth",
            "--out",
            "synth",
            "--image-size",
            "32",
            "--num-train",
            "4",
            "--num-val",
            "2",
            "--num-test",
            "2",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert len(json.loads((tmp_path / "synth" / "doc" / "train.json").read_text())) == 4


def test_data_check_reports_problems_or_stops_at_the_first(tmp_path: Path, in_process: InProcess) -> None:
    """The report through the command's process; the stop, the JSON report and the usage errors in this process."""
    bad_llava_dataset(tmp_path)
    check = [str(BIN / "vlmlab-data"), "check", *MODEL_OVERRIDES, "data=llava", f"data.root={tmp_path}"]
    report = run_command([*check, "data.on_bad_record=skip", "data.max_length=96", "data.num_workers=2"], cwd=tmp_path)
    assert report.returncode == 1, report.stderr[-3000:]
    row = next(line for line in report.stdout.splitlines() if "instruct" in line)
    assert re.search(r"│ +8 │ +8/9 │", row)  # 8 records; 8 of their 9 images are on disk (nowhere.png is not)
    for problem in ("missing_image: 1 (e.g. gone)", "bad_image: 1 (e.g. corrupt)", "image_count: 1 (e.g. two-images)"):
        assert problem in report.stdout
    assert (
        "answer_truncated: 1 (e.g. late)" in report.stdout and "image_truncated: 1 (e.g. image-late)" in report.stdout
    )

    # data.on_bad_record=raise is the default of check
    stop = in_process(data_main, [*check, "data.num_workers=2"], tmp_path)
    assert stop.returncode == 3  # stopped at a bad record
    records_file = tmp_path / "llava_v1_5_mix665k.json"
    assert stop.stderr.startswith(f"error: source 'instruct' ({records_file}), record 'gone': image ")
    assert "nowhere.png does not exist; check the split's image folder" in stop.stderr
    assert "Traceback" not in stop.stderr

    # One source, machine-readable: every problem id by reason.
    report = in_process(
        data_main, [*check, "data.on_bad_record=skip", "data.max_length=96", "--source", "instruct", "--json"], tmp_path
    )
    assert report.returncode == 1, report.stderr[-3000:]
    splits = json.loads(report.stdout)["splits"]
    assert [(s["source"], s["split"]) for s in splits] == [("instruct", "train")]
    assert splits[0]["problems"]["image_count"] == ["two-images"] and splits[0]["records"] == 8
    assert set(splits[0]["token_length_percentiles"]) == {"p50", "p90", "p99", "p100"}

    unknown = in_process(data_main, [*check, "--source", "instruct2"], tmp_path)
    assert unknown.returncode == 2
    assert (
        unknown.stderr.strip()
        == "vlmlab-data check: --source instruct2: not a source of this data config (pretrain, instruct)"
    )
    records_file.unlink()
    missing = in_process(data_main, check, tmp_path)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().startswith(
        f"vlmlab-data check: data files not found: instruct.train.file={records_file}"
    )


def test_data_check_names_the_file_and_field_of_a_malformed_record(tmp_path: Path, in_process: InProcess) -> None:
    write_docvqa(tmp_path)
    annotations = tmp_path / "docvqa" / "train" / "train_v1.0.json"
    content = json.loads(annotations.read_text())
    del content["data"][1]["question"]
    annotations.write_text(json.dumps(content))
    check = [str(BIN / "vlmlab-data"), "check", *MODEL_OVERRIDES, "data=docvqa", f"data.root={tmp_path}"]
    stop = in_process(data_main, [*check, "data.num_workers=0", "--split", "train"], tmp_path)
    assert stop.returncode == 3, stop.stderr[-3000:]
    assert stop.stderr.startswith(
        f"error: source 'docvqa' ({annotations}), record 9001: the DocVQA entry has no 'question' (a string is needed)"
    )
    bad_command = in_process(data_main, [*check, "data.max_length=long"], tmp_path)
    assert bad_command.returncode == 2 and bad_command.stderr.strip().startswith("vlmlab-data check: data.max_length:")
