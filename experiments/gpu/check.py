"""The GPU check (issue 21): what has never run on a GPU, run once within minutes, the way users run it.

    experiments/gpu/check.sh [--dry-run] [--budget SECONDS] [--work DIR] [OUT_DIR]     # README.md here

check.sh looks for a CUDA device (exit 3 without one), installs what is missing, then starts this driver,
which runs `vlmlab-train` in subprocesses:

1. one Hydra sweep (`vlmlab-train -m`: one process, so imports and CUDA start-up are paid once) of the
   cases below, each a config file written into the work folder: the two-stage curriculum under FSDP (v1)
   and FSDP2 with the chunked loss, then the instruct stage alone (from the FSDP2 run's align weights) with
   the full loss, with packed batches (sdpa_varlen, flash_attention_2) and with torch.compile;
2. that instruct stage once more, SIGKILLed after a checkpoint, then resumed with `resume=`;

and reads every figure from what the runs wrote (the MLflow store, the run records, the stage weights) into
OUT_DIR/gpu_check.json and gpu_check.md. Everything fits in the time budget, the installs included: the
sweep is stopped in time for the resume, and a case that could not run says why.

`--dry-run` runs the same on the CPU at the tests' tiny size; `substitutions` in the JSON lists what differs.
Exit codes: 0 every check passed, 1 a check failed (the JSON says which), 3 no CUDA device (without --dry-run).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
NO_CUDA = 3
REFERENCE = "fsdp2_chunked"  # the run the others are compared with; its align weights start the instruct-only cases
RESUMED = "resumed"
REPORT_RESERVE_S = 20  # seconds kept for reading the runs and writing the report
GIB = 2**30
# Dense bf16 peaks from NVIDIA's datasheets (SXM parts). Lightning's table gives the H200 its sparse 1979
# TFLOP/s and does not recognise the plain name 'NVIDIA H200', so its own `train/device/mfu` is not used.
DENSE_BF16_FLOPS = {"H100 PCIe": 756e12, "H100": 989.4e12, "H200": 989.4e12}


@dataclass(frozen=True)
class Size:
    """How big the runs are and how long each stage trains."""

    overrides: tuple[str, ...]  # model, data and curriculum choices on the command line
    steps: int  # optimizer steps per stage
    batch: int  # samples per step, one micro-batch (one device, no accumulation)
    warmup: int  # first steps left out of the throughput figures (compilation, allocator, loader start-up)
    checkpoint_every: int  # the killed run's checkpoint interval ...
    kill_at: int  # ... and the step it is killed at
    align_lr: float  # the connector's learning rate in align, and ...
    lr: float  # ... connector's and LLM's in instruct: high enough for the loss to fall within `steps`
    resume_reserve_s: float  # seconds the sweep leaves for the kill and resume runs


GPU = Size(
    overrides=(
        "experiment=scaling_so400m_qwen05b",  # SigLIP-so400m + Qwen2.5-0.5B shapes, random weights, 384 px data
        "curriculum=llava",  # the preset trains one stage; the check trains align then instruct
        "data.num_workers=8",
        "data.synthetic.num_train=500",  # enough for `steps` x `batch` samples of align (captions only)
    ),
    steps=30,
    batch=16,
    warmup=10,
    checkpoint_every=15,
    kill_at=20,
    align_lr=1e-3,  # LLaVA-1.5's
    lr=1e-4,
    resume_reserve_s=120,
)
# The tests' FAST_OVERRIDES (tests/conftest.py): a one-layer, 32-wide LLM and 48 px images.
CPU = Size(
    overrides=(
        "model.llm.config.hidden_size=32",
        "model.llm.config.intermediate_size=64",
        "model.llm.config.num_hidden_layers=1",
        "model.llm.tokenizer.vocab_size=300",
        "model.llm.tokenizer.corpus.num_samples=200",
        "data.num_workers=0",
        "data.eval_batch_size=8",
        "data.synthetic.image_size=48",
        "data.synthetic.num_train=48",
        "data.synthetic.num_val=8",
        "data.synthetic.num_test=8",
        "data.synthetic.train_turns=2",
    ),
    steps=4,
    batch=4,
    warmup=1,
    checkpoint_every=2,
    kill_at=3,
    align_lr=1e-2,
    lr=1e-3,
    resume_reserve_s=60,
)
DRY_RUN_SUBSTITUTIONS = [
    "size: the tests' tiny model and 48 px data (tests/conftest.py FAST_OVERRIDES) instead of "
    "experiment=scaling_so400m_qwen05b; 4 steps per stage instead of 30",
    "strategy=fsdp -> strategy=ddp (one process, gloo): FSDP (v1) refuses the CPU; strategy=fsdp2 runs as is (gloo)",
    "torch.compile: the aot_eager backend (TORCH_COMPILE_OVERRIDE_BACKENDS) instead of Inductor, whose C++ build "
    "of the block takes 1-2 minutes on 2 cores; Dynamo and AOTAutograd still trace each block",
    "packing with flash_attention_2: not run (no flash-attn on the CPU)",
    "MFU: against the CPU's measured fp32 matmul rate (no datasheet peak); peak memory: the process's peak RSS",
    "installs: `make install` only (a no-op on an installed .venv); no flash-attn",
]


@dataclass(frozen=True)
class Case:
    """One run of the sweep: a strategy and what its config changes from the common one."""

    strategy: str  # a conf/strategy option
    what: str  # one line for the summary
    both_stages: bool = False  # the whole curriculum; else the instruct stage from the reference's align weights
    config: dict[str, Any] = field(default_factory=dict)


def cases(flash: bool) -> dict[str, Case]:
    """The sweep's cases, in the order they run: what matters most first, torch.compile (the slowest) last.
    The instruct-only ones write no checkpoint and skip validation: their figures are from training."""
    quick = {"callbacks": {"checkpoint": None}, "trainer": {"limit_val_batches": 0}}
    full_loss = merged(quick, instruct(loss="full"))
    runs = {
        # No checkpoint: the killed-and-resumed run writes and reads FSDP2's sharded ones, and it saves minutes.
        REFERENCE: Case("fsdp2", "curriculum, chunked loss (the reference)", True, {"callbacks": {"checkpoint": None}}),
        "fsdp_chunked": Case("fsdp", "curriculum, chunked loss; sharded checkpoints", True),
        "fsdp2_full": Case("fsdp2", "instruct, full loss", config=full_loss),
        "fsdp_full": Case("fsdp", "instruct, full loss", config=full_loss),
        "packed_sdpa_varlen": Case("fsdp2", "instruct, packed, sdpa_varlen", config=packed(quick, "sdpa_varlen")),
        "packed_flash_attention_2": Case(
            "fsdp2", "instruct, packed, flash_attention_2", config=packed(quick, "flash_attention_2")
        ),
        "compiled": Case("fsdp2", "instruct, torch.compile", config=merged(quick, instruct(compile=True))),
    }
    if not flash:
        del runs["packed_flash_attention_2"]
    return runs


def instruct(**fields: Any) -> dict[str, Any]:
    return {"curriculum": {"stages": {"instruct": fields}}}


def packed(config: dict[str, Any], attention: str) -> dict[str, Any]:
    """Each micro-batch as one row, no padding (`data.pack_length: null`), attention within each sample."""
    return merged(
        config, {"data": {"packing": True, "pack_length": None}, "model": {"llm": {"attn_implementation": attention}}}
    )


def common_config(size: Size) -> dict[str, Any]:
    """What every run shares: both stages' length, batch and precision, and how they report."""
    stage = {
        "max_steps": size.steps,
        "batch_size": size.batch,
        "micro_batch_size": size.batch,
        "precision": "bf16-mixed",
        "gradient_checkpointing": True,
        "val_check_interval": size.steps,
    }
    per_batch = {"_target_": "vlmlab.training.throughput.batch_size", "_partial_": True}
    tokens = {"_target_": "vlmlab.training.throughput.tokens", "_partial_": True}
    return {
        "experiment_name": "gpu_check",
        "eval": {"enabled": False},
        "trainer": {"log_every_n_steps": 1, "enable_model_summary": False},
        "curriculum": {
            "stages": {
                "align": {**stage, "lr": {"connector": size.align_lr}},
                "instruct": {**stage, "lr": {"connector": size.lr, "llm": size.lr}},
            }
        },
        "callbacks": {
            "progress_bar": None,
            "generation_validation": None,
            "throughput": {  # its rolling figures at the last step cover the steps after warm-up
                "_target_": "lightning.pytorch.callbacks.ThroughputMonitor",
                "window_size": size.steps - size.warmup,
                "batch_size_fn": per_batch,
                "length_fn": tokens,
            },
            "peak_memory": {"_target_": "experiments.gpu.callbacks.PeakMemory"},
        },
    }


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class Check:
    """The runs of one check and where they live: `work/runs/<case>`, `work/mlflow.db`, `work/logs/`."""

    def __init__(self, work: Path, dry_run: bool, deadline: float) -> None:
        self.work, self.dry_run, self.deadline = work, dry_run, deadline
        self.size = CPU if dry_run else GPU
        self.runs, self.logs, self.configs = work / "runs", work / "logs", work / "configs" / "gpu_check"
        for folder in (self.runs, self.logs, self.configs):
            folder.mkdir(parents=True, exist_ok=True)
        self.notes: dict[str, str] = {}  # case -> why it did not run
        self.reference_align = self.runs / REFERENCE / "stages" / "align"

    def time_left(self) -> float:
        return self.deadline - time.time()

    def write_config(self, name: str, case: Case, extra: dict[str, Any] | None = None) -> None:
        """`configs/gpu_check/<name>.yaml`, selected with `+gpu_check=<name>`."""
        import yaml

        config = merged(common_config(self.size), case.config)
        if not case.both_stages:
            config = merged(config, {"curriculum": {"start_stage": "instruct"}, "init_from": str(self.reference_align)})
        config = merged(config, extra or {})
        header = f"# @package _global_\n# {case.what}\ndefaults:\n  - override /strategy: {self.strategy(case)}\n"
        (self.configs / f"{name}.yaml").write_text(header + yaml.safe_dump(config, sort_keys=False))

    def strategy(self, case: Case) -> str:
        return "ddp" if self.dry_run and case.strategy == "fsdp" else case.strategy  # FSDP (v1) refuses the CPU

    def train_command(self, *flags: str) -> list[str]:
        """`vlmlab-train` (`python -m vlmlab.cli.train` where the console script is not installed) with `flags`
        (e.g. `-m`) and the overrides every run shares."""
        script = Path(sys.executable).parent / "vlmlab-train"
        command = [str(script)] if script.exists() else [sys.executable, "-m", "vlmlab.cli.train"]
        return [
            *command,
            *flags,
            *self.size.overrides,
            f"hydra.searchpath=[file://{self.configs.parent}]",
            f"paths.root_dir={self.work}",  # data, the MLflow store and its artifacts
        ]

    def run(self, command: list[str], log: str, timeout: float) -> int | None:
        """Run `command` in its own process group (a kill callback may end the group), output in logs/<log>;
        None when stopped at `timeout` seconds."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        env["PYTHONUNBUFFERED"] = "1"
        if self.dry_run:
            env["TORCH_COMPILE_OVERRIDE_BACKENDS"] = ">=0:aot_eager"
        with (self.logs / log).open("a") as out:
            out.write(f"$ {' '.join(command)}\n")
            out.flush()
            process = subprocess.Popen(
                command, cwd=self.work, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            try:
                return process.wait(timeout=max(1.0, timeout))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return None

    def sweep(self, plan: dict[str, Case]) -> None:
        """Run the cases as one `vlmlab-train -m` sweep, started again for the cases a crash left unstarted."""
        for name, case in plan.items():
            self.write_config(name, case)
        pending = list(plan)
        while pending:
            if not self.reference_align.exists() and (self.runs / REFERENCE).exists():
                for name in [n for n in pending if not plan[n].both_stages]:
                    self.notes[name] = f"not run: {REFERENCE} left no align weights to start from"
                    pending.remove(name)
            budget = self.time_left() - self.size.resume_reserve_s - REPORT_RESERVE_S
            if not pending or budget < 30:
                break
            command = [
                *self.train_command("-m"),
                f"+gpu_check={','.join(pending)}",
                f"hydra.sweep.dir={self.runs}",
                "hydra.sweep.subdir=${hydra.runtime.choices.gpu_check}",
                "+hydra.callbacks.gpu_check._target_=experiments.gpu.callbacks.JobEnd",
                f"+hydra.callbacks.gpu_check.keep=[{REFERENCE}]",
            ]
            returncode = self.run(command, "sweep.log", budget)
            started = [n for n in pending if (self.runs / n).exists()]
            pending = [n for n in pending if n not in started]
            if returncode is None:
                self.notes.update({started[-1]: "stopped at the time budget"} if started else {})
                break
            if not started:
                break
        self.notes.update({n: "not run: time budget or an earlier crash (logs/sweep.log)" for n in pending})

    def kill_and_resume(self) -> dict[str, Any]:
        """The reference's instruct stage again, SIGKILLed after a checkpoint, then resumed with `resume=`."""
        size, killed = self.size, self.runs / RESUMED
        if not (self.runs / REFERENCE / "stages" / "instruct" / "model.safetensors").exists():
            return {"ok": False, "status": f"not run: {REFERENCE} did not finish"}
        case = Case("fsdp2", "instruct, killed after a checkpoint, then resumed")
        self.write_config(RESUMED, case, {"callbacks": {"checkpoint": {"every_n_train_steps": size.checkpoint_every}}})
        command = [*self.train_command(), f"+gpu_check={RESUMED}"]
        kill = ["+callbacks.kill._target_=tests.scripts.kill_at_step.KillAtStep", "+callbacks.kill.stage=instruct"]
        kill.append(f"+callbacks.kill.step={size.kill_at}")
        reserve = REPORT_RESERVE_S
        killed_code = self.run([*command, *kill, f"hydra.run.dir={killed}"], "resume.log", self.time_left() - reserve)
        resumed_code = None
        if killed_code == -signal.SIGKILL:
            resume = [*command, f"resume={killed}", f"hydra.run.dir={self.runs / 'resumed-resume'}"]
            resumed_code = self.run(resume, "resume.log", self.time_left() - reserve)
        return {
            "checkpoint_every": size.checkpoint_every,
            "killed_at_step": size.kill_at,
            "killed_returncode": killed_code,
            "resumed_returncode": resumed_code,
        }


# --- reading what the runs wrote ---------------------------------------------------------------------------


def case_status(run_dir: Path, note: str | None) -> tuple[str, str]:
    """(done | failed | broken | not run, the error or the log's end)."""
    from callbacks import ERROR_FILE

    if note:
        return ("not run" if note.startswith("not run") else "broken"), note
    if (run_dir / ERROR_FILE).exists():
        return "failed", (run_dir / ERROR_FILE).read_text()[-2000:]
    state = run_dir / "curriculum_state.json"
    if state.exists() and json.loads(state.read_text()).get("finished"):
        return "done", ""
    if run_dir.exists():
        log = run_dir / "train.log"
        return "broken", log.read_text()[-2000:] if log.exists() else ""
    return "not run", ""


def stage_runs(run_dir: Path) -> dict[str, str]:
    state = run_dir / "curriculum_state.json"
    if not state.exists():
        return {}
    return {name: s["run_id"] for name, s in json.loads(state.read_text())["stages"].items() if "run_id" in s}


def metrics(store: Path, run_id: str) -> dict[str, list[float]]:
    """An MLflow run's metrics, each as one value per step (the last logged) in step order, read straight from
    the sqlite store (the MLflow client would add seconds of imports and a query per metric)."""
    query = "SELECT key, step, value, is_nan FROM metrics WHERE run_uuid = ? ORDER BY key, step, timestamp"
    per_step: dict[str, dict[int, float]] = {}
    with closing(sqlite3.connect(store)) as db:
        for key, step, value, is_nan in db.execute(query, (run_id,)):
            per_step.setdefault(key, {})[step] = math.nan if is_nan else value
    return {key: list(values.values()) for key, values in per_step.items()}


def stage_figures(run: dict[str, list[float]], peak_flops: float) -> dict[str, Any]:
    """A stage's figures from its MLflow run's metrics: the ThroughputMonitor's rolling values at the last step
    (the steps after warm-up), the peak memory, and the loss curve."""
    last = {key: values[-1] for key, values in run.items()}
    loss = run.get("train/loss", [])
    k = max(1, len(loss) // 3)
    figures: dict[str, Any] = {"steps": len(loss)}
    if "train/device/items_per_sec" in last:
        figures["tokens_per_s"] = last["train/device/items_per_sec"]
    if "train/device/batches_per_sec" in last:
        figures["step_s"] = 1 / last["train/device/batches_per_sec"]
    if "train/device/flops_per_sec" in last:
        figures["tflops_per_s"] = last["train/device/flops_per_sec"] / 1e12
        figures["mfu"] = last["train/device/flops_per_sec"] / peak_flops
    if "train/device/mfu" in last:
        figures["lightning_mfu"] = last["train/device/mfu"]
    for key in ("gpu_check/peak_memory_gib", "gpu_check/peak_reserved_gib", "gpu_check/start_memory_gib"):
        if key in last:
            figures[key.split("/")[1]] = last[key]
    if loss:
        first, final = sum(loss[:k]) / k, sum(loss[-k:]) / k
        figures["loss"] = {"first_step": loss[0], "first": first, "last": final}
        figures["loss_finite"] = all(math.isfinite(v) for v in loss)
        figures["loss_falling"] = final < first
    if "val/loss" in last:
        figures["val_loss"] = last["val/loss"]
    return figures


def measured(figures: dict[str, Any], falling: bool = True) -> bool:
    """Throughput, MFU and memory were logged and are finite, and the loss is finite (and falls, if `falling`)."""
    keys = ("tokens_per_s", "step_s", "mfu", "peak_memory_gib")
    return (
        all(isinstance(figures.get(k), float) and math.isfinite(figures[k]) for k in keys)
        and figures.get("loss_finite") is True
        and (figures.get("loss_falling") is True or not falling)
    )


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


def compare_weights(straight: Path, resumed: Path, start: Path) -> dict[str, Any]:
    """How far the resumed run's weights are from the uninterrupted run's, against how far the stage moved them."""
    import torch
    from safetensors.torch import load_file

    a, b, s = load_file(straight), load_file(resumed), load_file(start)
    trained = [k for k in a if not torch.equal(a[k], s[k])]
    diff = sum(float((b[k].double() - a[k].double()).pow(2).sum()) for k in trained) ** 0.5
    moved = sum(float((a[k].double() - s[k].double()).pow(2).sum()) for k in trained) ** 0.5
    return {
        "tensors_trained": len(trained),
        "bitwise_equal": all(torch.equal(a[k], b[k]) for k in a),
        "max_abs_diff": max((float((b[k] - a[k]).abs().max()) for k in trained), default=0.0),
        "relative_l2_diff": diff / moved if moved else 0.0,  # |resumed - straight| / |straight - stage start|
    }


def resume_section(check: Check, store: Path, runs: dict[str, Any], outcome: dict[str, Any]) -> dict[str, Any]:
    """Exact resume: the killed-and-resumed instruct stage against the reference's, weights and loss curve."""
    if "status" in outcome:
        return outcome
    killed = check.runs / RESUMED
    status, error = case_status(killed, None)
    section = {**outcome, "status": status}
    if status != "done":
        return {**section, "ok": False, "error": error or (check.logs / "resume.log").read_text()[-2000:]}
    reference = check.runs / REFERENCE / "stages"
    section["weights"] = compare_weights(
        reference / "instruct" / "model.safetensors",
        killed / "stages" / "instruct" / "model.safetensors",
        reference / "align" / "model.safetensors",
    )
    straight = metrics(store, runs[REFERENCE]["run_ids"]["instruct"]).get("train/loss", [])
    again = metrics(store, stage_runs(killed)["instruct"]).get("train/loss", [])
    section["loss_steps_compared"] = min(len(straight), len(again))
    section["loss_max_abs_diff"] = max((abs(x - y) for x, y in zip(straight, again)), default=math.inf)
    if check.dry_run:  # CPU arithmetic repeats exactly (as tests/test_resume.py holds it)
        section["tolerance"] = "CPU: max |dw| <= 1e-6 and loss curves within 1e-6"
        ok = section["weights"]["max_abs_diff"] <= 1e-6 and section["loss_max_abs_diff"] <= 1e-6
    else:
        section["tolerance"] = (
            "GPU bf16: |w_resumed - w_straight| <= 1% of |w_straight - w_stage_start| (L2 over the trained "
            "tensors) and loss curves within 1e-2; bitwise equality is not expected: some CUDA kernels (the "
            "flash and memory-efficient attention backward) accumulate with atomics, so two uninterrupted runs "
            "differ too. A lost optimizer state or data position moves the weights by far more than 1%"
        )
        ok = section["weights"]["relative_l2_diff"] <= 0.01 and section["loss_max_abs_diff"] <= 1e-2
    killed_then_resumed = outcome["killed_returncode"] == -signal.SIGKILL and outcome["resumed_returncode"] == 0
    return {**section, "ok": ok and killed_then_resumed}


def peak_flops(dry_run: bool) -> tuple[float, str, float]:
    """(the peak MFU is taken against, where it comes from, the measured matmul rate in FLOP/s)."""
    import torch

    n, dtype, device = (1024, torch.float32, "cpu") if dry_run else (8192, torch.bfloat16, "cuda")
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    sync()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    sync()
    rate = 10 * 2 * n**3 / (time.perf_counter() - start)
    if dry_run:
        return rate, "measured fp32 matmul rate of this CPU (no datasheet peak)", rate
    name = torch.cuda.get_device_name()
    for key, flops in DENSE_BF16_FLOPS.items():
        if all(word in name for word in key.split()):
            return flops, f"{key} datasheet, dense bf16", rate
    return rate, f"measured bf16 matmul rate ({name} is not in DENSE_BF16_FLOPS)", rate


def describe_machine(dry_run: bool) -> dict[str, Any]:
    import torch

    machine = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "commit": os.environ.get("VLMLAB_GIT_COMMIT") or git_commit(),
    }
    if not dry_run:
        props = torch.cuda.get_device_properties(0)
        machine.update(
            device=torch.cuda.get_device_name(),
            memory_gib=props.total_memory / GIB,
            capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
        )
    return machine


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def read_installs(path: Path | None) -> dict[str, Any]:
    """check.sh's install steps, one `what<TAB>exit code<TAB>seconds<TAB>log` line each in `path`, whose
    temporary folder is then removed."""
    steps = []
    for line in path.read_text().splitlines() if path and path.exists() else []:
        what, code, seconds, log = line.split("\t")
        tail = Path(log).read_text()[-600:] if code != "0" and Path(log).exists() else ""
        steps.append({"what": what, "ok": code == "0", "seconds": float(seconds), **({"log": tail} if tail else {})})
    if path and path.parent.name.startswith("vlmlab-gpu-check-installs."):
        shutil.rmtree(path.parent)
    required = [s for s in steps if not s["what"].startswith("optional")]
    return {"seconds": sum(s["seconds"] for s in steps), "steps": steps, "ok": all(s["ok"] for s in required)}


def report(check: Check, plan: dict[str, Case], outcome: dict[str, Any], peak: float) -> dict[str, Any]:
    """The runs and every check's section of gpu_check.json, from the MLflow store and the run folders."""
    store = check.work / "mlflow.db"
    runs: dict[str, Any] = {}
    for name, case in plan.items():
        status, error = case_status(check.runs / name, check.notes.get(name))
        ids = stage_runs(check.runs / name) if status == "done" else {}
        stages = {stage: stage_figures(metrics(store, run_id), peak) for stage, run_id in ids.items()}
        runs[name] = {"strategy": check.strategy(case), "what": case.what, "status": status, "run_ids": ids}
        runs[name]["stages"] = stages
        if error:
            runs[name]["error"] = error
        heavy = check.runs / name / "heavy_files.json"
        if heavy.exists():  # the checkpoint files the run wrote, before they were deleted
            written = json.loads(heavy.read_text())
            runs[name]["checkpoint_files"] = sorted(p for p in written if "/checkpoints/" in p)

    def instruct_of(name: str) -> dict[str, Any]:
        return runs.get(name, {}).get("stages", {}).get("instruct", {})

    def first_loss_diff(name: str, other: str = REFERENCE) -> float | None:
        a, b = instruct_of(name).get("loss", {}), instruct_of(other).get("loss", {})
        return abs(a["first_step"] - b["first_step"]) if a and b else None

    # Align trains the connector alone into a frozen LLM with random weights, whose answers barely depend on its
    # input: its loss must be finite but need not fall. Instruct trains the LLM: its loss must fall.
    curriculum: dict[str, Any] = {"align_loss_must_fall": False}
    for strategy in ("fsdp", "fsdp2"):
        run = runs[f"{strategy}_chunked"]
        stages = run["stages"]
        ok = run["status"] == "done" and set(stages) == {"align", "instruct"}
        ok = ok and measured(stages["align"], falling=False) and measured(stages["instruct"])
        curriculum[strategy] = {"status": run["status"], "stages": stages, "ok": ok}
    curriculum["ok"] = curriculum["fsdp"]["ok"] and curriculum["fsdp2"]["ok"]

    loss = {}
    for strategy in ("fsdp", "fsdp2"):
        full, chunked = instruct_of(f"{strategy}_full"), instruct_of(f"{strategy}_chunked")
        loss[strategy] = {
            "chunked": chunked,
            "full": full,
            "peak_memory_full_over_chunked": ratio(full.get("peak_memory_gib"), chunked.get("peak_memory_gib")),
            "tokens_per_s_full_over_chunked": ratio(full.get("tokens_per_s"), chunked.get("tokens_per_s")),
            "ok": runs[f"{strategy}_full"]["status"] == "done" and measured(full),
        }
    loss["fsdp2"]["first_step_loss_diff_full_vs_chunked"] = first_loss_diff("fsdp2_full")
    loss["first_step_loss_diff_fsdp_vs_fsdp2_full"] = first_loss_diff("fsdp_full", "fsdp2_full")
    loss["ok"] = loss["fsdp"]["ok"] and loss["fsdp2"]["ok"]

    padded = instruct_of(REFERENCE)
    packing: dict[str, Any] = {"padded": padded}
    for kernel in ("sdpa_varlen", "flash_attention_2"):
        name = f"packed_{kernel}"
        if name not in runs:
            packing[kernel] = {"skipped": "flash-attn is not installed"}
            continue
        packed = instruct_of(name)
        packing[kernel] = {
            **packed,
            "status": runs[name]["status"],
            "tokens_per_s_packed_over_padded": ratio(packed.get("tokens_per_s"), padded.get("tokens_per_s")),
            "first_step_loss_diff_vs_padded": first_loss_diff(name),
            "ok": runs[name]["status"] == "done" and measured(packed),
        }
    packing["ok"] = all(v["ok"] for k, v in packing.items() if k != "padded" and "skipped" not in v)

    compiled = instruct_of("compiled")
    compile_section = {
        "off": padded,
        "on": compiled,
        "speedup": ratio(padded.get("step_s"), compiled.get("step_s")),  # step time off / on, after warm-up
        "first_step_loss_diff": first_loss_diff("compiled"),
        "ok": runs["compiled"]["status"] == "done" and measured(compiled),
    }
    sections = {
        "curriculum": curriculum,
        "loss": loss,
        "resume": resume_section(check, store, runs, outcome),
        "packing": packing,
        "compile": compile_section,
    }
    return {
        "runs": runs,
        **sections,
        "checks": {name: section["ok"] for name, section in sections.items()},
    }


# --- the summary --------------------------------------------------------------------------------------------


def fmt(value: Any, spec: str = ".3g") -> str:
    return "–" if value is None else format(value, spec) if isinstance(value, float) else str(value)


def summary(result: dict[str, Any]) -> str:
    """gpu_check.md: the runs in a table, then a line per check, then the errors."""
    machine, peak, checks = result["machine"], result["peak"], result["checks"]
    lines = [
        f"# vlmlab GPU check: {'passed' if result['ok'] else 'FAILED'}",
        "",
        f"{result['date']}, {machine.get('device', 'CPU (dry run)')}, torch {machine['torch']}, commit "
        f"{machine['commit'] or 'unknown'}: {result['elapsed_s']:.0f} s of a {result['budget_s']:.0f} s budget, "
        f"installs {result['installs']['seconds']:.0f} s. MFU against {peak['flops'] / 1e12:.3g} TFLOP/s "
        f"({peak['source']}); a matmul measured {peak['matmul_flops_measured'] / 1e12:.3g} TFLOP/s.",
        "",
    ]
    if result["substitutions"]:
        lines += ["Dry run on the CPU, with these substitutions:", *[f"- {s}" for s in result["substitutions"]], ""]
    lines += [
        "| run | strategy | what | status | stage | tokens/s | step (s) | MFU | peak memory (GiB) | loss first→last |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in result["runs"].items():
        for stage, f in run["stages"].items() or [("–", {})]:
            loss = f.get("loss", {})
            lines.append(
                f"| {name} | {run['strategy']} | {run['what']} | {run['status']} | {stage} | "
                f"{fmt(f.get('tokens_per_s'), '.0f')} | {fmt(f.get('step_s'))} | {fmt(f.get('mfu'), '.1%')} | "
                f"{fmt(f.get('peak_memory_gib'), '.1f')} | {fmt(loss.get('first'))} → {fmt(loss.get('last'))} |"
            )
    loss, resume, packing = result["loss"], result["resume"], result["packing"]
    weights = resume.get("weights", {})
    memory = {s: fmt(loss[s]["peak_memory_full_over_chunked"]) for s in ("fsdp", "fsdp2")}
    speed = {k: fmt(packing[k].get("tokens_per_s_packed_over_padded")) for k in ("sdpa_varlen", "flash_attention_2")}
    installs = ", ".join(
        f"{s['what']}: {'ok' if s['ok'] else 'failed'}, {s['seconds']:.0f} s" for s in result["installs"]["steps"]
    )
    lines += [
        "",
        "| check | passed | figures |",
        "|---|---|---|",
        f"| curriculum | {checks['curriculum']} | FSDP and FSDP2, both stages: loss finite (falling in instruct); "
        "tokens/s, MFU and peak memory logged |",
        f"| full vs chunked loss | {checks['loss']} | peak memory full / chunked: FSDP {memory['fsdp']}, FSDP2 "
        f"{memory['fsdp2']}; first-step loss difference {fmt(loss['fsdp2']['first_step_loss_diff_full_vs_chunked'])} |",
        f"| exact resume (FSDP2) | {checks['resume']} | {resume.get('status')}: max abs Δw "
        f"{fmt(weights.get('max_abs_diff'))}, relative L2 {fmt(weights.get('relative_l2_diff'))}, bitwise equal "
        f"{weights.get('bitwise_equal', '–')}; loss curves max Δ {fmt(resume.get('loss_max_abs_diff'))} |",
        f"| packing | {checks['packing']} | effective tokens/s packed / padded: sdpa_varlen {speed['sdpa_varlen']}, "
        f"flash_attention_2 {speed['flash_attention_2']} {packing['flash_attention_2'].get('skipped', '')} |",
        f"| torch.compile | {checks['compile']} | step time off / on after warm-up: "
        f"{fmt(result['compile']['speedup'])} |",
        f"| installs | {checks['installs']} | {installs} |",
    ]
    errors = {name: run["error"] for name, run in result["runs"].items() if run.get("error")}
    if "error" in resume:
        errors[RESUMED] = resume["error"]
    for name, error in errors.items():
        lines += ["", f"## {name}", "", "```", error.strip()[-1500:], "```"]
    return "\n".join(lines) + "\n"


# --- main -----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "out", nargs="?", type=Path, help="for gpu_check.json and .md (default $OUT or outputs/gpu_check)"
    )
    parser.add_argument("--dry-run", action="store_true", help="the same on the CPU at the tests' tiny size")
    parser.add_argument("--budget", type=float, default=480, help="seconds for everything, installs included")
    parser.add_argument("--work", type=Path, help="runs, logs and the MLflow store (default outputs/gpu_check/work)")
    parser.add_argument("--started", type=float, help="when check.sh started (its installs count)")
    parser.add_argument("--installs", type=Path, help="check.sh's install record")
    args = parser.parse_args(argv)
    started = args.started or time.time()
    out = args.out or Path(os.environ.get("OUT") or REPO / "outputs" / "gpu_check")
    work = (args.work or REPO / "outputs" / "gpu_check" / "work").resolve()

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("check.py: torch sees no CUDA device; run on a GPU machine, or with --dry-run", file=sys.stderr)
        return NO_CUDA
    if work.exists():  # a fresh MLflow store and run folders: figures from an earlier check cannot mix in
        shutil.rmtree(work)
    check = Check(work, args.dry_run, started + args.budget)
    peak, source, matmul = peak_flops(args.dry_run)  # before the runs, on an idle device
    plan = cases(flash=not args.dry_run and importlib.util.find_spec("flash_attn") is not None)
    check.sweep(plan)
    outcome = check.kill_and_resume()
    result: dict[str, Any] = {
        "check": "vlmlab GPU check (experiments/gpu)",
        "mode": "dry-run" if args.dry_run else "gpu",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": describe_machine(args.dry_run),
        "budget_s": args.budget,
        "substitutions": DRY_RUN_SUBSTITUTIONS if args.dry_run else [],
        "settings": {
            "overrides": list(check.size.overrides),
            **{k: v for k, v in vars(check.size).items() if k != "overrides"},
            "throughput_window": check.size.steps - check.size.warmup,
            "precision": "bf16-mixed",
            "work": str(work),
        },
        "peak": {"flops": peak, "source": source, "matmul_flops_measured": matmul},
        **report(check, plan, outcome, peak),
        "installs": read_installs(args.installs),
    }
    result["checks"]["installs"] = result["installs"]["ok"]
    result["ok"] = all(result["checks"].values())
    result["elapsed_s"] = time.time() - started
    for heavy in [*work.glob("runs/*/stages/*/model.safetensors"), *work.glob("runs/*/stages/*/checkpoints")]:
        shutil.rmtree(heavy) if heavy.is_dir() else heavy.unlink()  # GBs each at the realistic shape
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1, allow_nan=True))
    (out / "gpu_check.md").write_text(summary(result))
    print(f"check.py: {'passed' if result['ok'] else 'FAILED'} in {result['elapsed_s']:.0f} s; {out / 'gpu_check.md'}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
