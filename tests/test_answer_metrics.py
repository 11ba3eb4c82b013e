"""VQAv2 accuracy and ANLS equal the official scorers on the cases of tests/official_answer_cases.py (whose
docstring says where each expected value came from)."""

from __future__ import annotations

import pytest
import torch

from tests.official_answer_cases import ANLS_CASES, VQA_CASES, VQA_OFFICIAL_OVERALL
from vlmlab.eval.answer_metrics import ANLS, ExactMatchAccuracy, VQAAccuracy, anls, levenshtein, vqa_accuracy
from vlmlab.eval.submission import submission


@pytest.mark.parametrize(("prediction", "answers", "expected"), VQA_CASES)
def test_vqa_accuracy_matches_the_official_scorer(prediction: str, answers: list[str], expected: float) -> None:
    assert vqa_accuracy(prediction, answers) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("prediction", "answers", "expected"), ANLS_CASES)
def test_anls_matches_the_official_scorer(prediction: str, answers: list[str], expected: float) -> None:
    assert anls(prediction, answers) == pytest.approx(expected, abs=1e-12)


def test_metrics_average_questions_across_batches() -> None:
    metric = VQAAccuracy()
    for prediction, answers, _ in VQA_CASES:
        metric.update([prediction], [answers])
    assert 100 * float(metric.compute()) == pytest.approx(VQA_OFFICIAL_OVERALL, abs=5e-3)
    assert metric.compute_per_sample().tolist() == pytest.approx([c[2] for c in VQA_CASES], abs=1e-12)
    metric.reset()
    metric.update([c[0] for c in ANLS_CASES[:2]], [["$12.50"], ["12.50"]])
    assert float(metric.compute()) == pytest.approx(0.0)
    score = ANLS()
    score.update([c[0] for c in ANLS_CASES], [c[1] for c in ANLS_CASES])
    assert float(score.compute()) == pytest.approx(sum(c[2] for c in ANLS_CASES) / len(ANLS_CASES))
    exact = ExactMatchAccuracy()
    exact.update(["Red.", "blue"], [["red"], ["green"]])
    assert float(exact.compute()) == 0.5 and exact.compute().dtype == torch.float64


def test_questions_without_references_are_refused() -> None:
    with pytest.raises(ValueError, match="needs the human answers"):
        vqa_accuracy("yes", [])
    with pytest.raises(ValueError, match="needs the question's reference answers"):
        anls("yes", [])
    with pytest.raises(ValueError, match="2 predictions but 1 reference lists"):
        ANLS().update(["a", "b"], [["a"]])


def test_levenshtein() -> None:
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == levenshtein("abc", "") == 3
    assert levenshtein("flaw", "lawn") == 2


def test_submission_files_use_each_benchmarks_fields() -> None:
    rows = [{"id": 7, "prediction": "red", "answers": []}]
    assert submission("vqav2", rows) == [{"question_id": 7, "answer": "red"}]
    assert submission("docvqa", rows) == [{"questionId": 7, "answer": "red"}]
    assert submission("coco_captions", rows) == [{"image_id": 7, "caption": "red"}]
    assert submission("llava", rows) == [{"id": 7, "answer": "red"}]
