"""Every metric computed in a 2-process run (gloo, uneven shards) equals the single-process result, per sample too."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.official_answer_cases import ANLS_CASES, POPE_CASES, VQA_CASES
from vlmlab.eval.metrics import METRICS, build_metrics, metric_values, per_sample_values
from vlmlab.testing import free_port

WORDS = "a man dog red blue car street sitting on the with two small large people riding".split()


def caption_cases(n: int = 24, seed: int = 0) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)

    def sentence() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10)))

    return [(sentence(), [sentence() for _ in range(rng.randint(1, 5))]) for _ in range(n)]


def cases_for(name: str) -> list[tuple[str, list[str]]]:
    if name in ("cider", "bleu"):
        return caption_cases()
    if name == "anls":
        return [(p, a) for p, a, _ in ANLS_CASES]
    if name.startswith("pope"):
        return [(answer, [label]) for answer, label in POPE_CASES]
    return [(p, a) for p, a, _ in VQA_CASES]


def scores(rank: int = 0, world_size: int = 1) -> dict[str, float | list[float]]:
    """Each metric over its cases, and its per-sample scores; process `rank` takes its share (rank 0 the larger
    one, so that the gathered order is the single process's)."""
    values: dict[str, float | list[float]] = {}
    for name, metric in build_metrics(list(METRICS)).items():
        cases = cases_for(name)
        cut = (len(cases) * 3) // 5
        share = cases if world_size == 1 else cases[:cut] if rank == 0 else cases[cut:]
        metric.update([p for p, _ in share], [a for _, a in share])
        values.update(metric_values(name, metric))
        values[f"{name}/per_sample"] = [v for sample in per_sample_values(name, metric) for v in sample.values()]
    return values


def _worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        result = scores(rank, 2)
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_two_processes_give_the_single_process_scores(tmp_path: Path) -> None:
    single = scores()
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        distributed = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert distributed.keys() == single.keys()
        for key, value in single.items():
            assert distributed[key] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), key
    assert len(single["vqa_accuracy/per_sample"]) == len(VQA_CASES) and len(single["cider/per_sample"]) == 24
    assert single["cider"] > 0 and 0 < single["bleu_1"] < 1 and 0 < single["vqa_accuracy"] < 1
