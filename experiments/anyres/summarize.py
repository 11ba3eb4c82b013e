"""Summarise anyres_docs runs: test ANLS / exact match with the blind baseline, ANLS and image tokens
per receipt shape, image tokens per image (p50 / p99), steps and wall time per stage.

    .venv/bin/python experiments/anyres/summarize.py outputs/2026-12-01/20-00-00 outputs/...

Reads each run folder (test_metrics.json, predictions/hires_doc_test_scores.jsonl, train.log,
.hydra/config.yaml) and the test records it was scored on; prints one markdown table per view.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf
from PIL import Image

from vlmlab.data.tiling import Tiling
from vlmlab.models.image_layout import ImageTokenLayout

TOKENS_PER_TILE = 9  # tiny_vit: 96 px images, 32 px patches
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+\]")


def image_tokens(cfg, size: tuple[int, int]) -> int:
    """Tokens of an image of `size` (height, width) under the run's image handling."""
    layout = ImageTokenLayout(TOKENS_PER_TILE, bool(cfg.model.image_newline))
    if cfg.data.image_resize != "anyres":
        return layout.count((0, 0, *size))
    tiling = Tiling(tuple(tuple(g) for g in cfg.data.anyres.grid_pinpoints), 96, cfg.data.anyres.max_tiles)
    return layout.count((*tiling.grid(size), *size))


def percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def stage_times(log: Path) -> dict[str, float]:
    """Seconds from each stage's start to the next line that starts something else, and the whole run."""
    stamps = []
    for line in log.read_text().splitlines():
        match = STAMP.match(line)
        if match:
            stamps.append((datetime.fromisoformat(match.group(1)), line))
    times, current = {}, None
    for when, line in stamps:
        found = re.search(r"stage '(\w+)': train", line)
        if found or "test hires_doc:" in line:
            if current:
                times[current[0]] = (when - current[1]).total_seconds()
            current = (found.group(1), when) if found else ("test", when)
    if current:
        times[current[0]] = (stamps[-1][0] - current[1]).total_seconds()
    times["all"] = (stamps[-1][0] - stamps[0][0]).total_seconds()
    return times


def summarize(run: Path) -> dict:
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    # The run's Hydra paths do not resolve outside the run: ${paths.data_dir} is data/ of the checkout.
    raw_root = OmegaConf.to_container(cfg.data)["root"].replace("${paths.data_dir}", "data")
    root = Path(raw_root.replace("${data.synthetic.seed}", str(cfg.data.synthetic.seed)))
    records = {r["id"]: r for r in json.loads((root / "hires_doc" / "test.json").read_text())}
    sizes = {}
    for record_id, record in records.items():
        with Image.open(root / record["image"]) as image:
            sizes[record_id] = (image.height, image.width)
    by_shape: dict[tuple[int, int], list[float]] = defaultdict(list)
    by_question: dict[str, list[float]] = defaultdict(list)
    for line in (run / "predictions" / "hires_doc_test_scores.jsonl").read_text().splitlines():
        row = json.loads(line)
        by_shape[sizes[row["id"]]].append(row["scores"]["anls"])
        question = "total" if "total" in records[row["id"]]["conversations"][0]["value"] else "items"
        by_question[question].append(row["scores"]["anls"])
    tokens = [image_tokens(cfg, s) for s in sizes.values()]
    metrics = json.loads((run / "test_metrics.json").read_text())
    return {
        "mode": cfg.data.image_resize,
        "seed": f"{cfg.seed} / {cfg.data.synthetic.seed}",
        "metrics": {k.split("/")[-1]: v for k, v in metrics.items()},
        "shapes": {s: (statistics.mean(v), len(v), image_tokens(cfg, s)) for s, v in sorted(by_shape.items())},
        "questions": {q: statistics.mean(v) for q, v in by_question.items()},
        "instruct_samples": cfg.curriculum.stages.instruct.max_steps * cfg.curriculum.stages.instruct.batch_size,
        "tokens": (percentile(tokens, 0.5), percentile(tokens, 0.99)),
        "times": stage_times(run / "train.log"),
    }


def main(runs: list[str]) -> None:
    rows = [(run, summarize(Path(run))) for run in runs]
    columns = (
        "seed (training / data)",
        "image handling",
        "ANLS (blind)",
        "exact match (blind)",
        "image tokens p50 / p99",
    )
    print(f"| run | {' | '.join(columns)} | ANLS total / items | wall |")
    print("|---|---|---|---|---|---|---|---|")
    for run, s in rows:
        m = s["metrics"]
        wall = s["times"]["all"]
        print(
            f"| {Path(run).name} | {s['seed']} | {s['mode']} | {m['anls']:.3f} ({m['blind_anls']:.3f}) | "
            f"{m['exact_match']:.3f} ({m['blind_exact_match']:.3f}) | {s['tokens'][0]} / {s['tokens'][1]} | "
            f"{s['questions'].get('total', 0):.3f} / {s['questions'].get('items', 0):.3f} | "
            f"{int(wall // 60)}m{int(wall % 60):02d} |"
        )
    shapes = sorted({shape for _, s in rows for shape in s["shapes"]})
    header = " | ".join(f"{w}x{h} px" for h, w in shapes)
    print(f"\n| run | image handling | ANLS by receipt (width x height): {header} |")
    print("|---|---|" + "---|" * len(shapes))
    for run, s in rows:
        cells = " | ".join(f"{anls:.3f} (n={n}, {tokens} tokens)" for anls, n, tokens in map(s["shapes"].get, shapes))
        print(f"| {Path(run).name} | {s['mode']} | {cells} |")
    parts = ("pretrain", "align", "instruct", "test")
    print(f"\n| run | image handling | {' | '.join(parts)} (seconds) | instruct samples/s |")
    print("|---|---|---|---|---|---|---|")
    for run, s in rows:
        seconds = " | ".join(f"{s['times'].get(k, 0):.0f}" for k in parts)
        rate = s["instruct_samples"] / s["times"]["instruct"]
        print(f"| {Path(run).name} | {s['mode']} | {seconds} | {rate:.1f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
