"""Values of the right type that cannot work are refused before anything loads, each in one line that names the
field, what this machine has and the fix; data files that cannot be read as they are say so; a stage that would
train on nothing stops instead of finishing."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from tests.cli_in_process import one_line, run_main
from tests.published_formats import write_image, write_json
from vlmlab.cli.data import main as data_main
from vlmlab.cli.train import main as train_main
from vlmlab.errors import UsageError
from vlmlab.preflight import check_before_training
from vlmlab.testing import TINY_OVERRIDES

CPUS = os.cpu_count() or 1
STAGE = "curriculum.stages.instruct"
BAD_VALUES = {
    "negative-lr": ([f"{STAGE}.lr.llm=-1"], "curriculum stage 'instruct': lr.llm must be a positive learning rate"),
    "zero-batch": ([f"{STAGE}.batch_size=0"], "batch_size must be at least 1 sample, got 0"),
    "zero-micro-batch": ([f"{STAGE}.micro_batch_size=0"], "micro_batch_size must be at least 1 sample, got 0"),
    "negative-decay": ([f"{STAGE}.weight_decay=-0.1"], "weight_decay must be >= 0, got -0.1"),
    "precision": ([f"{STAGE}.precision=fp9"], "precision='fp9' is not one of 32-true, 16-mixed, bf16-mixed"),
    "seed": (["seed=1.5"], "seed=1.5 must be a whole number"),
    "workers": (["data.num_workers=100000"], f"data.num_workers=100000: this machine has {CPUS} CPUs; give 0 to"),
    "devices": (
        [f"trainer.devices={CPUS + 1}", "trainer.accelerator=cpu"],
        f"trainer.devices={CPUS + 1}, but this machine has {CPUS} CPUs (trainer.accelerator=cpu); give at most {CPUS}",
    ),
    "max-length": (["data.max_length=0"], "data.max_length=0 must be a positive number of tokens"),
    "synthetic-root": (
        ["data.root=/nonexistent-vlmlab-data"],
        "data.root=/nonexistent-vlmlab-data does not exist and lies outside the working directory: create it first",
    ),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_each_bad_value_is_refused_before_anything_loads(compose_config: Callable[..., DictConfig], case: str) -> None:
    overrides, fragment = BAD_VALUES[case]
    with pytest.raises(UsageError) as caught:
        check_before_training(compose_config(overrides))
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_bad_values_through_the_cli_leave_nothing_behind(
    tmp_path: Path, synth_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    for case in ("negative-lr", "devices"):
        overrides, fragment = BAD_VALUES[case]
        args = [*TINY_OVERRIDES, f"data.root={synth_root}", *overrides]
        code, stderr = run_main(train_main, "vlmlab-train", args, tmp_path, monkeypatch, capsys)
        assert code == 2 and fragment in one_line(stderr, "vlmlab-train")
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").iterdir())
    assert not (tmp_path / "mlflow.db").exists()


def test_a_stage_that_would_train_on_no_sample_stops(
    tmp_path: Path, synth_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """max_length below an image's tokens: every record is skipped, and the stage says so instead of finishing."""
    args = [*TINY_OVERRIDES, f"data.root={synth_root}", "data.max_length=8", "~logger", "eval.enabled=false"]
    code, stderr = run_main(train_main, "vlmlab-train", args, tmp_path, monkeypatch, capsys)
    assert code == 2
    line = one_line(stderr, "vlmlab-train")
    assert "stage 'align' trained on no sample: every record it drew was skipped (skipped by reason: " in line
    assert "image_truncated: " in line and "(data.max_length=8)" in line


def check_report(root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    args = ["check", *[o for o in TINY_OVERRIDES if o.startswith("model.")], "data=llava", f"data.root={root}"]
    args += ["data.on_bad_record=skip", "data.num_workers=0", "--json"]
    monkeypatch.chdir(root)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        data_main(args)
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def test_data_files_that_cannot_be_read_as_they_are_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    write_image(tmp_path / "images" / "ok.png", "red")
    ask = [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "rouge café"}]
    records = [{"id": k, "image": "ok.png", "conversations": ask} for k in ("a", "b", "a", "c", "b")]
    write_json(tmp_path / "LLaVA-Pretrain" / "blip_laion_cc_sbu_558k.json", [])  # an empty split
    mix = tmp_path / "llava_v1_5_mix665k.json"
    mix.write_bytes(json.dumps(records, ensure_ascii=False).encode("latin-1"))  # not UTF-8: é is one byte
    code, _, stderr = check_report(tmp_path, monkeypatch, capsys)
    assert code == 2 and "Traceback" not in stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(f"vlmlab-data check: LLaVA-format file {mix} is not UTF-8 text (byte ")
    assert "re-encode it (e.g. iconv -f <its encoding> -t utf-8)" in line

    write_json(mix, records)
    code, out, _ = check_report(tmp_path, monkeypatch, capsys)
    assert code == 1  # problems found
    problems = {(s["source"], s["split"]): s["problems"] for s in json.loads(out)["splits"]}
    assert problems[("pretrain", "train")] == {"empty": ["pretrain/train"]}
    assert problems[("instruct", "train")] == {"duplicate_id": ["a", "b"]}
