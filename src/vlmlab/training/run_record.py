"""The run record (`curriculum_state.json` in the run folder) and resuming from it.

The record names each stage's status, MLflow run and saved weights, and the parent MLflow run. It is
replaced atomically, so a run killed at any point leaves a readable record; a resumed run reads it to
skip finished stages and continue the interrupted one. Paths inside the run folder are recorded relative
to it, so a copied or moved run folder resumes (`record_path` / `resolve_record_path`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vlmlab.data.shards import read_from_shards
from vlmlab.errors import UsageError
from vlmlab.training.run_naming import name_run
from vlmlab.training.stage import StageSpec

log = logging.getLogger(__name__)

STATE_FILE = "curriculum_state.json"
RESUME_MUST_MATCH = ("model", "data", "curriculum", "seed")


def find_run_to_resume(cfg: DictConfig) -> Path:
    """The run folder that `resume` names: a folder holding curriculum_state.json, or (`resume=true`) the
    latest unfinished run of this experiment_name and run_name under the working directory's outputs/."""
    name_run(cfg)
    if cfg.resume is not True:
        run_dir = Path(str(cfg.resume))
        if not (run_dir / STATE_FILE).is_file():
            raise UsageError(f"resume={cfg.resume}: no {STATE_FILE} there; give the run folder to resume")
        return run_dir
    candidates = []
    for state_file in (Path(cfg.paths.root_dir) / "outputs").glob(f"**/{STATE_FILE}"):
        state = json.loads(state_file.read_text())
        same = state.get("experiment_name") == cfg.experiment_name and state.get("run_name") == cfg.run_name
        if same and not state.get("finished"):
            candidates.append(state_file)
    if not candidates:
        raise UsageError(
            f"resume=true: no unfinished run of experiment '{cfg.experiment_name}' / run '{cfg.run_name}' under "
            f"{Path(cfg.paths.root_dir) / 'outputs'}; give the run folder: resume=outputs/<date>/<time>"
        )
    return max(candidates, key=lambda f: f.stat().st_mtime).parent


def record_path(path: str | Path, run_dir: Path) -> str:
    """`path` as the record stores it: relative to the run folder when inside it, else as given."""
    try:
        return str(Path(path).resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path)


def resolve_record_path(value: str, run_dir: Path) -> str:
    """A recorded path as a usable one: relative ones are inside the run folder, wherever it now is."""
    return value if Path(value).is_absolute() else str(run_dir / value)


def write_state(state_file: Path, state: dict[str, Any]) -> None:
    """Replace the state file atomically: a run killed while writing it keeps the previous record."""
    partial = state_file.with_suffix(".json.partial")
    partial.write_text(json.dumps(state, indent=2))
    os.replace(partial, state_file)


def check_resumed_config(cfg: DictConfig, run_dir: Path) -> None:
    """A resumed run must train what the interrupted one trained: its model, data, curriculum and seed
    (from the run's `.hydra/config.yaml`) must equal this command's."""
    saved_file = run_dir / ".hydra" / "config.yaml"
    if not saved_file.is_file():
        return
    saved = OmegaConf.load(saved_file)
    read_from_shards(saved)  # as validation rewrote this command's sources (the saved config is Hydra's, before)
    differ = []
    for key in RESUME_MUST_MATCH:
        before, now = saved.get(key), cfg.get(key)
        if isinstance(now, DictConfig):
            before = OmegaConf.to_container(before, resolve=False) if before is not None else None
            now = OmegaConf.to_container(now, resolve=False)
        if before != now:
            differ.append(key)
    if differ:
        overrides = run_dir / ".hydra" / "overrides.yaml"
        raise UsageError(
            f"resume: this command's {', '.join(differ)} config differs from the run in {run_dir}; resume with "
            f"the overrides it was started with (listed in {overrides}) plus resume=..."
        )


def load_state(cfg: DictConfig) -> tuple[Path, dict[str, Any]]:
    """The run folder and its recorded state: a new one, or the one being resumed."""
    if cfg.get("resume"):
        run_dir = find_run_to_resume(cfg)
        check_resumed_config(cfg, run_dir)
        log.info("resuming the curriculum in %s", run_dir)
        return run_dir, json.loads((run_dir / STATE_FILE).read_text())
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, {"experiment_name": cfg.experiment_name, "run_name": cfg.run_name, "finished": False, "stages": {}}


def stages_to_run(cfg: DictConfig, specs: list[StageSpec]) -> list[StageSpec]:
    """The stages from `curriculum.start_stage` on (all of them by default)."""
    start = cfg.curriculum.get("start_stage")
    names = [s.name for s in specs]
    if start is None:
        return specs
    if start not in names:
        raise UsageError(f"curriculum.start_stage={start!r} is not a stage of this curriculum ({', '.join(names)})")
    if names.index(start) > 0 and not cfg.get("init_from"):
        raise UsageError(
            f"curriculum.start_stage={start} skips earlier stages: say which weights to start from with "
            "init_from=<run>/stages/<stage> (or a model.safetensors)"
        )
    return specs[names.index(start) :]
