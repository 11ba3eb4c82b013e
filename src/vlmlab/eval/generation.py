"""Generation-based evaluation: greedy answers to each prompt, scored with each source's metrics."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from rich.progress import track
from torch.utils.data import DataLoader

from vlmlab.eval.metrics import score_predictions
from vlmlab.models.vlm import VisionLanguageModel

log = logging.getLogger(__name__)


@torch.no_grad()
def generate_answers(
    model: VisionLanguageModel,
    loader: DataLoader,
    max_new_tokens: int,
    description: str = "generating",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """One dict per sample: id, task, dataset index, prediction and references (batched, KV cache)."""
    tokenizer = model.llm.tokenizer
    was_training = model.training
    model.eval()
    rows = []
    if progress:
        log.info("%s: %d prompts", description, len(loader.dataset))
    for batch in track(loader, description=description, transient=True, disable=not progress):
        if "input_ids" not in batch:  # every record of the batch was skipped (and logged)
            continue
        new_tokens = model.generate_from_batch(batch, max_new_tokens=max_new_tokens)
        predictions = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        for sample_id, task, index, prediction, answers in zip(
            batch["ids"], batch["tasks"], batch["indices"], predictions, batch["answers"]
        ):
            rows.append(
                {"id": sample_id, "task": task, "index": index, "prediction": prediction.strip(), "answers": answers}
            )
    model.train(was_training)
    return rows


def score_rows(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> dict[str, float]:
    """The corpus scores of `rows`; each row gets its own scores as `row["scores"]` ({} without references)."""
    values, per_sample = score_predictions([r["prediction"] for r in rows], [r["answers"] for r in rows], metrics)
    for row, scores in zip(rows, per_sample):
        row["scores"] = scores
    return values


def evaluate_with_blind_baseline(
    model: VisionLanguageModel,
    loaders: dict[str, tuple[DataLoader, DataLoader | None]],
    metrics: dict[str, Sequence[str]],
    max_new_tokens: int,
    prefix: str = "test",
) -> tuple[dict[str, float], dict[str, list[dict[str, Any]]]]:
    """For each source: its metrics with the real images and, given a second loader, with every image
    blanked (the blind baseline: what the LLM answers from the text alone).

    Returns metrics named `<prefix>/<source>/<metric>` and `<prefix>/<source>/blind_<metric>` (absent
    for a source without reference answers, whose predictions are still returned), and the rows with
    images, each with its own scores (`scores`).
    """
    values: dict[str, float] = {}
    predictions: dict[str, list[dict[str, Any]]] = {}
    for source, (with_images, blind) in loaders.items():
        rows = generate_answers(model, with_images, max_new_tokens, f"{prefix} {source}")
        values.update({f"{prefix}/{source}/{k}": v for k, v in score_rows(rows, metrics[source]).items()})
        if blind is not None:
            blind_rows = generate_answers(model, blind, max_new_tokens, f"{prefix} {source} (blind)")
            values.update(
                {f"{prefix}/{source}/blind_{k}": v for k, v in score_rows(blind_rows, metrics[source]).items()}
            )
        predictions[source] = rows
    return values, predictions
