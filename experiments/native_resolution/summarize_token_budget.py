"""Tables and the plot of the token-budget study (run_token_budget.py): test ANLS against image tokens and against
training time, per method, budget and seed.

    .venv/bin/python experiments/native_resolution/summarize_token_budget.py outputs/token_budget \
        --plot experiments/native_resolution/token_budget.png

Reads each finished run folder (<method>-<budget>-seed<N>: test_metrics.json, .hydra/config.yaml, train.log) and
the test receipts it was scored on; image tokens per receipt are computed by the run's own image processor and
layout, as training expanded them. Prints one markdown table per run and one per method and budget (mean, min-max
over seeds, the blind baseline), then draws the plot.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf
from PIL import Image

from vlmlab.data.image_processing import encoder_image_processor
from vlmlab.models.builder import build_vlm

NAME = re.compile(r"^(native|resize|anyres)-(\d+)-seed(\d+)$")
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+\]")
METHODS = ("resize", "anyres", "native")


def train_seconds(log: Path) -> float:
    """From the first stage's start to the test split's (pretrain, align and instruct), from the run's log."""
    start = end = None
    for line in log.read_text().splitlines():
        match = STAMP.match(line)
        if not match:
            continue
        when = datetime.fromisoformat(match.group(1))
        if start is None and "stage '" in line:
            start = when
        if end is None and "test hires_doc: " in line:
            end = when
    return (end - start).total_seconds() if start and end else float("nan")


def image_tokens(run: Path, cfg) -> list[int]:
    """Each test receipt's image tokens under the run's image processor and layout."""
    model = build_vlm(cfg.model)
    images = encoder_image_processor(model.encoder, cfg.data.image_resize, cfg.data.get("anyres"))
    root = Path(str(cfg.data.root))
    records = json.loads((root / "hires_doc" / "test.json").read_text())
    tokens = []
    for record in records:
        with Image.open(root / record["image"]) as image:
            tokens.append(model.image_layout.count(images(image.convert("RGB")).grid))
    return tokens


def summarize(run: Path) -> dict:
    method, budget, seed = NAME.match(run.name).groups()
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    cfg.paths.root_dir = str(run.resolve().parents[2])  # the checkout the run was started from
    metrics = {k.split("/")[-1]: v for k, v in json.loads((run / "test_metrics.json").read_text()).items()}
    tokens = image_tokens(run, cfg)
    return {
        "method": method,
        "budget": int(budget),
        "seed": int(seed),
        "anls": metrics["anls"],
        "blind_anls": metrics["blind_anls"],
        "exact_match": metrics["exact_match"],
        "tokens_mean": statistics.mean(tokens),
        "tokens_max": max(tokens),
        "seconds": train_seconds(run / "train.log"),
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colours = {"resize": "tab:blue", "anyres": "tab:orange", "native": "tab:green"}
    for method in METHODS:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        for axis, key in zip(axes, ("tokens_mean", "seconds")):
            axis.scatter([r[key] for r in mine], [r["anls"] for r in mine], color=colours[method], alpha=0.5, s=18)
            means = []
            for budget in sorted({r["budget"] for r in mine}):
                at = [r for r in mine if r["budget"] == budget]
                means.append((statistics.mean(r[key] for r in at), statistics.mean(r["anls"] for r in at)))
            axis.plot(*zip(*means), color=colours[method], label=method, marker="o")
    blind = statistics.mean(r["blind_anls"] for r in rows)
    for axis in axes:
        axis.axhline(blind, color="grey", linestyle=":", label="blind (mean)")
    axes[0].set_xlabel("image tokens per receipt (test mean)")
    axes[1].set_xlabel("training seconds (pretrain + align + instruct, one thread)")
    axes[0].set_ylabel("test ANLS (300 receipts)")
    axes[0].legend()
    figure.suptitle("Receipts at a visual-token budget of 16 / 36 / 64 / 144: dots = seeds, lines = means")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    runs = sorted(p for p in args.folder.iterdir() if NAME.match(p.name) and (p / "test_metrics.json").is_file())
    rows = [summarize(run) for run in runs]
    print("| run | budget | method | seed | ANLS (blind) | exact match | image tokens mean (max) | training s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["budget"], METHODS.index(r["method"]), r["seed"])):
        print(
            f"| {r['method']}-{r['budget']}-seed{r['seed']} | {r['budget']} | {r['method']} | {r['seed']} | "
            f"{r['anls']:.3f} ({r['blind_anls']:.3f}) | {r['exact_match']:.3f} | {r['tokens_mean']:.1f} "
            f"({r['tokens_max']}) | {r['seconds']:.0f} |"
        )
    groups: dict[tuple[int, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[r["budget"], r["method"]].append(r)
    print("\n| budget | method | seeds | ANLS mean (min-max) | blind mean | image tokens mean | training s mean |")
    print("|---|---|---|---|---|---|---|")
    for (budget, method), group in sorted(groups.items(), key=lambda g: (g[0][0], METHODS.index(g[0][1]))):
        anls = [r["anls"] for r in group]
        print(
            f"| {budget} | {method} | {len(group)} | {statistics.mean(anls):.3f} ({min(anls):.3f}-{max(anls):.3f}) | "
            f"{statistics.mean(r['blind_anls'] for r in group):.3f} | "
            f"{statistics.mean(r['tokens_mean'] for r in group):.1f} | "
            f"{statistics.mean(r['seconds'] for r in group):.0f} |"
        )
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
