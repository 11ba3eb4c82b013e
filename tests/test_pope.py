"""POPE's scores equal the official evaluation's (RUCAIBox/POPE) and, as an option, lmms-eval's, on free-form
answers that the two parse differently (values from running each: tests/official_answer_cases.py)."""

from __future__ import annotations

import math

import pytest

from tests.official_answer_cases import POPE_CASES, POPE_LMMS_EVAL, POPE_OFFICIAL
from vlmlab.eval.metrics import build_metrics, metric_values, score_predictions
from vlmlab.eval.pope_metrics import official_says_yes

ANSWERS = [answer for answer, _ in POPE_CASES]
LABELS = [[label] for _, label in POPE_CASES]


@pytest.mark.parametrize(("name", "expected"), [("pope", POPE_OFFICIAL), ("pope_lmms_eval", POPE_LMMS_EVAL)])
def test_pope_equals_the_scorer_it_names(name: str, expected: dict[str, float]) -> None:
    values, per_sample = score_predictions(ANSWERS, LABELS, [name])
    assert values == pytest.approx({f"{name}_{key}": value for key, value in expected.items()}, rel=1e-12)
    correct = [sample[f"{name}_correct"] for sample in per_sample]
    assert sum(correct) / len(correct) == pytest.approx(expected["accuracy"])


def test_batches_add_up_to_the_whole() -> None:
    (metric,) = build_metrics(["pope"]).values()
    for start in range(0, len(POPE_CASES), 5):
        metric.update(ANSWERS[start : start + 5], LABELS[start : start + 5])
    assert metric_values("pope", metric) == pytest.approx({f"pope_{k}": v for k, v in POPE_OFFICIAL.items()})


def test_empty_denominators() -> None:
    """No answer parsed as yes: the official script divides by zero (NaN here), lmms-eval gives 0."""
    answers, labels = ["No.", "no"], [["yes"], ["no"]]
    official, _ = score_predictions(answers, labels, ["pope"])
    assert math.isnan(official["pope_precision"]) and math.isnan(official["pope_f1"])
    assert (official["pope_accuracy"], official["pope_recall"], official["pope_yes_ratio"]) == (0.5, 0.0, 0.0)
    lmms, _ = score_predictions(answers, labels, ["pope_lmms_eval"])
    assert (lmms["pope_lmms_eval_precision"], lmms["pope_lmms_eval_f1"]) == (0.0, 0.0)


def test_the_official_parse() -> None:
    assert official_says_yes("Yes, it is.") and official_says_yes("NO") and official_says_yes("")
    assert not official_says_yes("There is no cat.") and not official_says_yes("not, really")
    assert official_says_yes("no,really")  # the comma goes before the split: one word, "noreally"
    assert official_says_yes("Yes. There is no cat.")  # the first sentence only


def test_a_label_lmms_eval_cannot_read_is_refused() -> None:
    with pytest.raises(ValueError, match="a POPE label is yes or no, got 'maybe'"):
        score_predictions(["yes"], [["maybe"]], ["pope_lmms_eval"])
