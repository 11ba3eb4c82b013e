"""What a `vlmlab-train` run scored its model on, so that `vlmlab-eval checkpoint=<run>/stages/<stage>` scores the
same by default: the run's data config, its seed and its `eval` settings (limit, generation budget), resolved when
the run started (`<run>/.hydra/scoring.yaml`), so that paths hold wherever the evaluation is started from."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

SCORING_FILE = Path(".hydra") / "scoring.yaml"


def write_run_scoring(run_dir: Path, cfg: DictConfig) -> Path:
    """Save `cfg`'s data, seed and eval settings, resolved, in `run_dir`."""
    scoring = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("data", "eval")}
    path = run_dir / SCORING_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml({**scoring, "seed": cfg.seed}))
    return path


def run_scoring_file(checkpoint: str | Path) -> Path | None:
    """The scoring record of the run that a stage folder, its weights or its checkpoints belong to (None for a
    model that no vlmlab-train run wrote: a model folder, a Hugging Face folder, a models:/ URI)."""
    path = Path(checkpoint)
    for folder in [path, *path.parents][:5]:  # <run>/stages/<stage>/checkpoints/last.ckpt at most
        if (folder / SCORING_FILE).is_file():
            return folder / SCORING_FILE
    return None
