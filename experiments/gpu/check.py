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
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from report import REFERENCE, REPO, RESUMED, describe_machine, peak_flops, read_installs, sections, summary

from vlmlab.testing import TINY_OVERRIDES

NO_CUDA = 3
REPORT_RESERVE_S = 20  # seconds kept for reading the runs and writing the report


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
    native_encoder: dict[str, Any]  # the native-resolution case's changes to model/encoder=tiny_qwen2_vl


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
    # Qwen2-VL-2B's tower (675 M) with random weights, at most 256 tokens an image (the 384 px images: 196)
    native_encoder={
        "config": {"depth": 32, "embed_dim": 1280, "hidden_size": 1536, "num_heads": 16, "mlp_ratio": 4},
        "max_tokens": 256,
    },
)
# The tests' tiny model and data (vlmlab.testing.TINY_OVERRIDES): a one-layer, 32-wide LLM and 48 px images.
CPU = Size(
    overrides=tuple(o for o in TINY_OVERRIDES if o.startswith(("model.", "data."))),
    steps=4,
    batch=4,
    warmup=1,
    checkpoint_every=2,
    kill_at=3,
    align_lr=1e-2,
    lr=1e-3,
    resume_reserve_s=60,
    native_encoder={},  # the preset's tiny tower
)
DRY_RUN_SUBSTITUTIONS = [
    "size: the tests' tiny model and 48 px data (vlmlab.testing.TINY_OVERRIDES) instead of "
    "experiment=scaling_so400m_qwen05b; 4 steps per stage instead of 30",
    "strategy=fsdp -> strategy=ddp (one process, gloo): FSDP (v1) refuses the CPU; strategy=fsdp2 runs as is (gloo)",
    "torch.compile: the aot_eager backend (TORCH_COMPILE_OVERRIDE_BACKENDS) instead of Inductor, whose C++ build "
    "of the block takes 1-2 minutes on 2 cores; Dynamo and AOTAutograd still trace each block",
    "packing with flash_attention_2: not run (no flash-attn on the CPU)",
    "MFU: against the CPU's measured fp32 matmul rate (no datasheet peak); peak memory: the process's peak RSS",
    "installs: `make install` is checked, not run (the .venv may be shared with runs beside this one); no flash-attn",
]


@dataclass(frozen=True)
class Case:
    """One run of the sweep: a strategy and what its config changes from the common one."""

    strategy: str  # a conf/strategy option
    what: str  # one line for the summary
    both_stages: bool = False  # the whole curriculum; else the instruct stage from the reference's align weights
    config: dict[str, Any] = field(default_factory=dict)
    encoder: str | None = None  # a model/encoder preset in place of the size's


def cases(flash: bool, size: Size) -> dict[str, Case]:
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
        "native_packed": Case(
            "fsdp2",
            "curriculum, a native-resolution tower (Qwen2-VL's, random weights), packed, sdpa_varlen",
            True,
            merged(packed(quick, "sdpa_varlen"), {"model": {"encoder": size.native_encoder}}),
            encoder="tiny_qwen2_vl",
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
        if case.encoder is not None:
            header += f"  - override /model/encoder: {case.encoder}\n"
        (self.configs / f"{name}.yaml").write_text(header + yaml.safe_dump(config, sort_keys=False))

    def strategy(self, case: Case) -> str:
        return "ddp" if self.dry_run and case.strategy == "fsdp" else case.strategy  # FSDP (v1) refuses the CPU

    def described(self, plan: dict[str, Case]) -> dict[str, dict[str, str]]:
        return {name: {"strategy": self.strategy(case), "what": case.what} for name, case in plan.items()}

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
            if REFERENCE not in pending and not self.reference_align.exists():
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
            if returncode is None:
                self.notes.update({started[-1]: "stopped at the time budget"} if started else {})
                pending = [n for n in pending if n not in started]
                break
            if not started:  # a usage error ends the whole sweep, and its job leaves no folder
                self.notes[pending[0]] = "not run: vlmlab-train refused it (logs/sweep.log says why)"
                started = pending[:1]
            pending = [n for n in pending if n not in started]
        self.notes.update({n: "not run: time budget" for n in pending})

    def kill_and_resume(self) -> dict[str, Any]:
        """The reference's instruct stage again, SIGKILLed after a checkpoint, then resumed with `resume=`."""
        size, killed = self.size, self.runs / RESUMED
        if not (self.runs / REFERENCE / "stages" / "instruct" / "model.safetensors").exists():
            return {"ok": False, "status": f"not run: {REFERENCE} did not finish"}
        case = Case("fsdp2", "instruct, killed after a checkpoint, then resumed")
        self.write_config(RESUMED, case, {"callbacks": {"checkpoint": {"every_n_train_steps": size.checkpoint_every}}})
        command = [*self.train_command(), f"+gpu_check={RESUMED}"]
        kill = ["+callbacks.kill._target_=vlmlab.testing.KillAtStep", "+callbacks.kill.stage=instruct"]
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
    plan = cases(not args.dry_run and importlib.util.find_spec("flash_attn") is not None, check.size)
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
        **sections(work, check.described(plan), check.notes, outcome, peak, args.dry_run),
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
