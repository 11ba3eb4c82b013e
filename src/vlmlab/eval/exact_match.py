"""Exact-match accuracy of generated answers, as a torchmetrics `Metric` (summed across processes)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric


def normalize_answer(text: str) -> str:
    """Lower case, collapsed whitespace, no trailing full stop: "Red." and " red" both match "red"."""
    return " ".join(text.lower().split()).rstrip(".").strip()


class ExactMatchAccuracy(Metric):
    """Fraction of predictions equal (after `normalize_answer`) to any of their reference answers."""

    higher_is_better = True
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
        for prediction, answers in zip(predictions, references):
            self.correct += int(normalize_answer(prediction) in {normalize_answer(a) for a in answers})
        self.total += len(predictions)

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.total.clamp(min=1)
