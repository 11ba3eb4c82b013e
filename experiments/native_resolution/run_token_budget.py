"""Issue 31's study: receipts answered at a visual-token budget per image, spent three ways, on 3 seeds.

    .venv/bin/python experiments/native_resolution/run_token_budget.py --budgets 16 36 --streams 2

Each run is one `vlmlab-train` command (its own process, one torch thread), written to
outputs/token_budget/<method>-<budget>-seed<N>; a run whose folder already holds test_metrics.json is skipped, so the
study can be resumed or extended a budget at a time. `--streams` runs go side by side. The methods:

- native: `experiment=token_budget model.encoder.max_tokens=<budget>`: each receipt at its own shape;
- resize: the same with `model.encoder.keep_aspect_ratio=false`: stretched to the budget's square, same tower;
- anyres: `experiment=token_budget_anyres data.anyres.max_tiles=<(budget - 9) // 9>`: 84 px tiles of 9 tokens beside
  the base tile (at a budget under 18 none fits: `data.image_resize=resize`, the base tile alone).

A seed N is `seed=N data.synthetic.seed=N` (training and receipts); each seed's receipts are written once, before
any run, so that runs side by side never write the same folder. `--dry-run` prints the commands.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

from vlmlab.data.synthetic import SynthConfig, write_synthetic_dataset
from vlmlab.testing import compose_train

METHODS = ("native", "resize", "anyres")
BIN = Path(sys.executable).parent


def command(method: str, budget: int, seed: int, out: Path) -> list[str]:
    name = f"{method}-{budget}-seed{seed}"
    args = [str(BIN / "vlmlab-train"), f"seed={seed}", f"data.synthetic.seed={seed}"]
    if method == "anyres":  # 9 tokens a tile, the base tile's included; none fits beside it under 18
        tiles = (budget - 9) // 9
        args += ["experiment=token_budget_anyres"]
        args += [f"data.anyres.max_tiles={tiles}"] if tiles else ["data.image_resize=resize"]
    else:
        args += ["experiment=token_budget", f"model.encoder.max_tokens={budget}"]
        args += ["model.encoder.keep_aspect_ratio=false"] if method == "resize" else []
    return [*args, f"run_name={name}", f"hydra.run.dir={out / name}", "~callbacks.progress_bar"]


def write_receipts(seed: int) -> None:
    """The seed's receipts where `vlmlab-train` looks for them (the preset's data.root under data/)."""
    data = compose_train(["experiment=token_budget", f"data.synthetic.seed={seed}", "paths.root_dir=."]).data
    write_synthetic_dataset(data.root, SynthConfig.demo(**data.synthetic))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[16, 36, 64, 144])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--streams", type=int, default=1, help="runs side by side, one torch thread each")
    parser.add_argument("--out", type=Path, default=Path("outputs/token_budget"))
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    # budget by budget; within one, seed by seed, so that a stopped study leaves whole comparisons
    runs = [
        (m, b, s)
        for b, s, m in itertools.product(args.budgets, args.seeds, args.methods)
        if not (args.out / f"{m}-{b}-seed{s}" / "test_metrics.json").is_file()
    ]
    if args.dry_run:
        for run in runs:
            print(" ".join(command(*run, args.out)))
        return
    for seed in sorted({s for _, _, s in runs}):
        write_receipts(seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    waiting, running = list(runs), []
    args.out.mkdir(parents=True, exist_ok=True)
    while waiting or running:
        while waiting and len(running) < args.streams:
            method, budget, seed = run = waiting.pop(0)
            log = open(args.out / f"{method}-{budget}-seed{seed}.log", "w")  # noqa: SIM115 (closed when it ends)
            running.append((run, subprocess.Popen(command(*run, args.out), stdout=log, stderr=log, env=env), log))
            print(f"{time.strftime('%H:%M:%S')} started {run}", flush=True)
        time.sleep(5)
        for item in [r for r in running if r[1].poll() is not None]:
            running.remove(item)
            item[2].close()
            print(f"{time.strftime('%H:%M:%S')} ended {item[0]}: exit {item[1].returncode}", flush=True)


if __name__ == "__main__":
    main()
