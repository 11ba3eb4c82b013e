"""POPE (Li et al., 2023: polling-based object probing, "Is there a <object> in the image?"): hallucination as the
yes/no answers' accuracy, precision, recall, F1 and the share of "yes", as torchmetrics `Metric`s.

Two scorers, because published numbers come from both and they differ on the same answers:
- `pope` (`POPE(variant="official")`): the official evaluation, `evaluate.py` of RUCAIBox/POPE at main, commit
  3df3ba1 (2023-11). An answer keeps its first sentence (up to the first "."), loses its commas and is split on
  spaces; it is "no" if a word is exactly `No`, `no` or `not`, else "yes" (so "NO", "Nope", "I don't know" and ""
  count as yes). A label is negative if it is exactly "no". The yes ratio is the share of answers parsed as yes.
  LLaVA's `llava/eval/eval_pope.py` parses the same way. Where a denominator is 0 (no positive answer: precision;
  no positive label: recall) the official script stops with ZeroDivisionError; here the value is NaN.
- `pope_lmms_eval` (`variant="lmms_eval"`): lmms-eval's `tasks/pope/utils.py` (EvolvingLMMs-Lab/lmms-eval at
  main, commit 75571cf, 2026-08). An answer counts only if, lower-cased and stripped, it is exactly "yes" or
  "no": accuracy is the share of exact matches, and an answer that is neither is no true or false positive or
  negative; an empty denominator gives 0; and its "yes ratio" is the share of *labels* that are yes (0.5 on the
  balanced splits, whatever the model answers).

Each metric gives `<name>_accuracy`, `_precision`, `_recall`, `_f1`, `_yes_ratio`; per question `_correct` and `_yes`.
The states are counts, so they add up across processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torchmetrics import Metric

Variant = Literal["official", "lmms_eval"]
COUNTS = ("questions", "correct", "true_positive", "false_positive", "false_negative", "predicted_yes", "labelled_yes")


def official_says_yes(answer: str) -> bool:
    """The official POPE parse of a free-form answer: yes unless its first sentence has the word No, no or not."""
    if "." in answer:
        answer = answer.split(".")[0]
    words = answer.replace(",", "").split(" ")
    return not ("No" in words or "not" in words or "no" in words)


def question_counts(answer: str, label: str, variant: Variant) -> dict[str, int]:
    """One question's contribution to each count, parsed as `variant` parses it."""
    if variant == "official":
        yes, positive = official_says_yes(answer), label != "no"
        said_no = not yes
        correct = yes == positive
    else:
        parsed, gold = answer.lower().strip(), label.lower().strip()
        if gold not in ("yes", "no"):
            raise ValueError(f"a POPE label is yes or no, got {label!r}")
        yes, said_no, positive, correct = parsed == "yes", parsed == "no", gold == "yes", parsed == gold
    return {
        "questions": 1,
        "correct": int(correct),
        "true_positive": int(yes and positive),
        "false_positive": int(yes and not positive),
        "false_negative": int(said_no and positive),
        "predicted_yes": int(yes),
        "labelled_yes": int(positive),
    }


def ratio(numerator: torch.Tensor, denominator: torch.Tensor, empty: float) -> torch.Tensor:
    value = numerator.double() / denominator.double()
    return value if denominator > 0 else torch.tensor(empty, dtype=torch.float64)


class POPE(Metric):
    """POPE's scores of yes/no answers (module docstring); `update(answers, references)` takes each question's
    reference list, whose first entry is its label."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, variant: Variant = "official", **kwargs: Any) -> None:
        """`kwargs`: torchmetrics' `Metric` options (e.g. `sync_on_compute`)."""
        super().__init__(**kwargs)
        if variant not in ("official", "lmms_eval"):
            raise ValueError(f"POPE variant must be official or lmms_eval, got {variant!r}")
        self.variant = variant
        for name in COUNTS:
            self.add_state(name, default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("per_question", default=[], dist_reduce_fx="cat")  # (correct, yes) rows

    def update(self, answers: Sequence[str], references: Sequence[Sequence[str]]) -> None:
        if len(answers) != len(references):
            raise ValueError(f"{len(answers)} answers but {len(references)} reference lists")
        rows, totals = [], dict.fromkeys(COUNTS, 0)
        for answer, labels in zip(answers, references):
            if not labels:
                raise ValueError("a POPE question needs its label (yes or no) as its reference answer; got none")
            counts = question_counts(answer, labels[0], self.variant)
            totals = {name: totals[name] + counts[name] for name in COUNTS}
            rows.append((counts["correct"], counts["predicted_yes"]))
        for name in COUNTS:  # the states once a batch, not once a question
            setattr(self, name, getattr(self, name) + totals[name])
        self.per_question.append(torch.tensor(rows, dtype=torch.float64, device=self.device).view(-1, 2))

    def compute(self) -> dict[str, torch.Tensor]:
        empty = float("nan") if self.variant == "official" else 0.0
        tp = self.true_positive
        precision = ratio(tp, tp + self.false_positive, empty)
        recall = ratio(tp, tp + self.false_negative, empty)
        total = precision + recall  # NaN when either is (official), 0 when both are
        f1 = 2 * precision * recall / total if total > 0 else torch.tensor(empty, dtype=torch.float64)
        yes = self.predicted_yes if self.variant == "official" else self.labelled_yes
        return {
            "accuracy": ratio(self.correct, self.questions, float("nan")),
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "yes_ratio": ratio(yes, self.questions, float("nan")),
        }

    def compute_per_sample(self) -> list[dict[str, torch.Tensor]]:
        """Each question's `correct` and `yes` (1 or 0), in the order they were added."""
        with self.sync_context(should_sync=self.sync_on_compute, should_unsync=True):
            rows = self.per_question
            if isinstance(rows, list):
                rows = torch.cat(rows) if rows else torch.zeros(0, 2, dtype=torch.float64, device=self.device)
            return [{"correct": row[0], "yes": row[1]} for row in rows.view(-1, 2)]


class LmmsEvalPOPE(POPE):
    """lmms-eval's POPE scores (module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(variant="lmms_eval", **kwargs)
