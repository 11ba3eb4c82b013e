"""The GPU check's report (experiments/gpu/check.py runs the check): each stage's figures from its MLflow run,
read straight from the sqlite store; the run records, kill-and-resume outcome and stage weights; one section per
check in gpu_check.json, and gpu_check.md to read."""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from callbacks import ERROR_FILE, HEAVY_FILES

REPO = Path(__file__).resolve().parents[2]
REFERENCE = "fsdp2_chunked"  # the run the others are compared with; its align weights start the instruct-only cases
RESUMED = "resumed"  # the run killed and resumed
GIB = 2**30
# Dense bf16 peaks from NVIDIA's datasheets (SXM parts). Lightning's table gives the H200 its sparse 1979
# TFLOP/s and does not recognise the plain name 'NVIDIA H200', so its own `train/device/mfu` is not used.
DENSE_BF16_FLOPS = {"H100 PCIe": 756e12, "H100": 989.4e12, "H200": 989.4e12}


def case_status(run_dir: Path, note: str | None) -> tuple[str, str]:
    """(done | failed | broken | not run, the error or the log's end); `note`: why the check did not run it."""
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


def resume_section(work: Path, runs: dict[str, Any], outcome: dict[str, Any], dry_run: bool) -> dict[str, Any]:
    """Exact resume: the killed-and-resumed instruct stage against the reference's, weights and loss curve."""
    if "status" in outcome:
        return outcome
    killed, store = work / "runs" / RESUMED, work / "mlflow.db"
    status, error = case_status(killed, None)
    section = {**outcome, "status": status}
    if status != "done":
        return {**section, "ok": False, "error": error or (work / "logs" / "resume.log").read_text()[-2000:]}
    reference = work / "runs" / REFERENCE / "stages"
    section["weights"] = compare_weights(
        reference / "instruct" / "model.safetensors",
        killed / "stages" / "instruct" / "model.safetensors",
        reference / "align" / "model.safetensors",
    )
    straight = metrics(store, runs[REFERENCE]["run_ids"]["instruct"]).get("train/loss", [])
    again = metrics(store, stage_runs(killed)["instruct"]).get("train/loss", [])
    section["loss_steps_compared"] = min(len(straight), len(again))
    section["loss_max_abs_diff"] = max((abs(x - y) for x, y in zip(straight, again)), default=math.inf)
    if dry_run:  # CPU arithmetic repeats exactly (as tests/test_resume.py holds it)
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


def sections(
    work: Path,
    plan: dict[str, dict[str, str]],
    notes: dict[str, str],
    outcome: dict[str, Any],
    peak: float,
    dry_run: bool,
) -> dict[str, Any]:
    """The runs and every check's section of gpu_check.json, from the run folders and the MLflow store in `work`.
    `plan`: each case's `strategy` and `what`; `notes`: why a case did not run; `outcome`: the kill and resume."""
    runs: dict[str, Any] = {}
    for name, case in plan.items():
        status, error = case_status(work / "runs" / name, notes.get(name))
        ids = stage_runs(work / "runs" / name) if status == "done" else {}
        stages = {stage: stage_figures(metrics(work / "mlflow.db", run_id), peak) for stage, run_id in ids.items()}
        runs[name] = {**case, "status": status, "run_ids": ids, "stages": stages}
        if error:
            runs[name]["error"] = error
        heavy = work / "runs" / name / HEAVY_FILES
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
    if "native_packed" in runs:  # a native-resolution tower, packed (the whole curriculum: its own first loss)
        native = instruct_of("native_packed")
        packing["native_resolution"] = {
            **native,
            "status": runs["native_packed"]["status"],
            "ok": runs["native_packed"]["status"] == "done" and measured(native),
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
    checks = {
        "curriculum": curriculum,
        "loss": loss,
        "resume": resume_section(work, runs, outcome, dry_run),
        "packing": packing,
        "compile": compile_section,
    }
    return {"runs": runs, **checks, "checks": {name: section["ok"] for name, section in checks.items()}}


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
        f"flash_attention_2 {speed['flash_attention_2']} {packing['flash_attention_2'].get('skipped', '')}; "
        f"native-resolution tower packed: {fmt(packing.get('native_resolution', {}).get('tokens_per_s'), '.0f')} "
        "tokens/s |",
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
