"""CIDEr-D and BLEU equal pycocoevalcap's (1.2, PyPI) scorers: corpus and per-image scores on the same PTB tokens,
and, where java runs, the whole pipeline from raw text with pycocoevalcap's own Java tokenizer. Every expected value
is computed by pycocoevalcap in the test itself."""

from __future__ import annotations

import random

import pytest
import torch
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from tests.java_tokenizer import can_run_java_tokenizer
from vlmlab.eval.caption_metrics import BLEU, CIDErD
from vlmlab.eval.ptb_tokenizer import ptb_tokenize_lines

Cases = list[tuple[str, list[str]]]  # (predicted caption, reference captions) per image

VOCABULARY = "a the man dog cat red sitting on".split()  # small, so that 3- and 4-grams match too


def random_set(images: int = 30, seed: int = 0) -> Cases:
    rng = random.Random(seed)

    def caption(min_words: int) -> str:
        return " ".join(rng.choice(VOCABULARY) for _ in range(rng.randint(min_words, 14)))

    return [(caption(0), [caption(1) for _ in range(rng.randint(1, 5))]) for _ in range(images)]


CASE_SETS: dict[str, Cases] = {
    "multiple_references": [
        ("A man riding a horse on a beach.", ["A man rides a horse.", "A person on a horse at the beach near water."]),
        (
            "Two dogs play on grass.",  # 5 words: the references of 4 and 6 words tie for BLEU's closest length
            ["Two dogs are playing.", "Dogs play together in the grass.", "A dog."],
        ),
        ("A plate of food", ["A plate with food on it.", "Food on a white plate on a wooden table."]),
    ],
    "clipping": [
        ("a dog a dog a dog a dog a dog", ["A dog runs on the grass.", "The dog is brown."]),
        ("the the the the cat", ["The cat sits on the mat.", "A cat."]),
        ("A cat on a mat.", ["A cat is sitting on a mat.", "The cat on the mat."]),
    ],
    "short_and_long": [
        ("Dog.", ["A brown dog runs across a green field.", "A dog running in the grass."]),
        (
            "A man in a red shirt and blue jeans is standing next to a woman in a yellow dress while two children "
            "play with a small white dog on the grass near a large old tree in a park on a sunny day.",
            ["A family in a park with a dog.", "People and a dog on the grass in a park."],
        ),
        ("A woman holding an umbrella.", ["A woman holds an umbrella in the rain.", "A lady with an umbrella."]),
    ],
    "empty_prediction": [
        ("", ["A bus on the street.", "A city bus parked by the road."]),
        ("...", ["A cat sleeping on a couch.", "A cat on a sofa."]),
        ("A bus on a street.", ["A red bus on a city street.", "A bus drives down the road."]),
    ],
    "one_image": [("A dog on a couch.", ["A dog lying on a couch.", "A brown dog on the sofa."])],
    "unicode": [  # words outside ASCII must stay whole for the n-grams to match
        ("A café with crème brûlée.", ["The café serves crème brûlée.", "A café with a crème brûlée on a table."]),
        ("Ελληνικά γράμματα σε πινακίδα", ["Ελληνικά γράμματα σε μια πινακίδα.", "Μια πινακίδα με γράμματα."]),
        ("Кошка на диване.", ["Кошка спит на диване.", "Серая кошка на диване."]),
        ("The Straße at night", ["A Straße at night with lights.", "The Straße at night."]),
    ],
    "web_text": [  # e-mail, URL, hashtag and handle tokens stay whole
        ("A sign with info@cafe.fr on it", ["A sign showing info@cafe.fr.", "The e-mail info@cafe.fr on a sign."]),
        ("#sunset at the beach", ["A #sunset at the beach.", "The beach at #sunset with @john_doe."]),
        ("A screen showing www.foo.org", ["www.foo.org on a screen.", "A laptop screen with www.foo.org open."]),
        ("'Tis a dog (brown)", ["'Twas a brown dog.", "A brown dog <sitting> on a mat."]),
    ],
    "random": random_set(),
}


def tokenised(cases: Cases) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """pycocoevalcap's scorer inputs: each set of captions tokenised in one call, as COCOEvalCap does."""
    references = ptb_tokenize_lines([ref for _, refs in cases for ref in refs])
    predictions = ptb_tokenize_lines([prediction for prediction, _ in cases])
    gts, start = {}, 0
    for i, (_, refs) in enumerate(cases):
        gts[i] = [" ".join(tokens) for tokens in references[start : start + len(refs)]]
        start += len(refs)
    return gts, {i: [" ".join(tokens)] for i, tokens in enumerate(predictions)}


def reference_cider(cases: Cases) -> float:
    return float(Cider().compute_score(*tokenised(cases))[0])


def reference_bleu(cases: Cases) -> list[float]:
    return Bleu(4).compute_score(*tokenised(cases), verbose=0)[0]


def metric_value(metric_class: type[CIDErD] | type[BLEU], cases: Cases) -> torch.Tensor:
    metric = metric_class()
    metric.update([prediction for prediction, _ in cases], [refs for _, refs in cases])
    return metric.compute()


@pytest.mark.parametrize("name", CASE_SETS)
def test_cider_d_equals_pycocoevalcap(name: str) -> None:
    cases = CASE_SETS[name]
    assert metric_value(CIDErD, cases).item() == pytest.approx(reference_cider(cases), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", CASE_SETS)
def test_bleu_equals_pycocoevalcap(name: str) -> None:
    cases = CASE_SETS[name]
    assert metric_value(BLEU, cases).tolist() == pytest.approx(reference_bleu(cases), rel=1e-9, abs=1e-12)


def test_the_sets_exercise_what_they_are_named_after() -> None:
    assert reference_cider(CASE_SETS["one_image"]) == 0.0  # one image: log(1) - log(df) = 0, every tf-idf weight is 0
    assert reference_cider(CASE_SETS["random"]) > 0 and reference_bleu(CASE_SETS["random"])[3] > 0.01  # 4-grams match
    clipped = reference_bleu(CASE_SETS["clipping"][:1])[0]  # "a dog" x5 against references with one "a dog"
    assert clipped == pytest.approx(0.2, rel=1e-6)  # 2 of 10 unigrams match after clipping; no brevity penalty
    short = reference_bleu(CASE_SETS["short_and_long"][:1])[0]
    assert short < 0.01  # one word, closest reference 6 words: the brevity penalty is exp(1 - 6)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_an_empty_set_scores_zero() -> None:
    assert CIDErD().compute().item() == 0.0
    assert BLEU().compute().tolist() == reference_bleu([]) == [0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("metric_class", [CIDErD, BLEU])
def test_batched_updates_equal_one_update(metric_class: type[CIDErD] | type[BLEU]) -> None:
    cases = CASE_SETS["random"]
    batched = metric_class()
    for start in range(0, len(cases), 7):
        batch = cases[start : start + 7]
        batched.update([prediction for prediction, _ in batch], [refs for _, refs in batch])
    torch.testing.assert_close(batched.compute(), metric_value(metric_class, cases), rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
@pytest.mark.parametrize("metric_class", [CIDErD, BLEU])
def test_reset_clears_the_state(metric_class: type[CIDErD] | type[BLEU]) -> None:
    metric = metric_class()
    metric.update(["a cat on a mat"], [["a dog on a rug"]])
    metric.reset()
    torch.testing.assert_close(metric.compute(), metric_class().compute(), rtol=0, atol=0)
    cases = CASE_SETS["multiple_references"]
    metric.update([prediction for prediction, _ in cases], [refs for _, refs in cases])
    torch.testing.assert_close(metric.compute(), metric_value(metric_class, cases), rtol=0, atol=0)


@pytest.mark.parametrize("metric_class", [CIDErD, BLEU])
def test_malformed_inputs_are_rejected(metric_class: type[CIDErD] | type[BLEU]) -> None:
    with pytest.raises(ValueError, match="2 predictions but 1"):
        metric_class().update(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="at least one reference"):
        metric_class().update(["a"], [[]])
    with pytest.raises(TypeError):
        metric_class().update(["a"], ["a dog"])


@pytest.mark.parametrize("name", CASE_SETS)
def test_per_image_scores_equal_pycocoevalcap(name: str) -> None:
    cases = CASE_SETS[name]
    predictions, references = [p for p, _ in cases], [r for _, r in cases]
    cider, bleu = CIDErD(), BLEU()
    for metric in (cider, bleu):
        metric.update(predictions[:2], references[:2])  # per-image scores keep the order of the updates
        metric.update(predictions[2:], references[2:])
    expected_cider = Cider().compute_score(*tokenised(cases))[1]
    expected_bleu = Bleu(4).compute_score(*tokenised(cases), verbose=0)[1]  # [n][image]
    assert cider.compute_per_sample().tolist() == pytest.approx(list(expected_cider), rel=1e-9, abs=1e-12)
    per_image = bleu.compute_per_sample()
    assert per_image.shape == (len(cases), 4)
    assert per_image.T.tolist() == [pytest.approx(scores, rel=1e-9, abs=1e-12) for scores in expected_bleu]
    assert float(cider.compute_per_sample().mean()) == pytest.approx(cider.compute().item(), rel=1e-12)


@pytest.mark.parametrize("metric_class", [CIDErD, BLEU])
def test_tokenised_text_is_scored_as_given(metric_class: type[CIDErD] | type[BLEU]) -> None:
    # tokens as given: no lower-casing, punctuation tokens kept, nothing re-tokenised
    cases = [
        ("a Dog , brown , on a mat", ["a brown Dog , puppy , on a mat", "a dog on a mat"]),
        ("two cats", ["two cats on a sofa", "a pair of cats"]),
        ("a red bus", ["a red bus on the street", "the bus is red"]),
    ]
    gts = {i: refs for i, (_, refs) in enumerate(cases)}
    res = {i: [prediction] for i, (prediction, _) in enumerate(cases)}
    metric = metric_class(tokenize=False)
    metric.update([p for p, _ in cases], [r for _, r in cases])
    if metric_class is CIDErD:
        expected = [Cider().compute_score(gts, res)[0]]
        assert metric.compute().item() == pytest.approx(expected[0], rel=1e-9)
        assert metric.compute().item() != pytest.approx(metric_value(CIDErD, cases).item(), rel=1e-3)
    else:
        expected = Bleu(4).compute_score(gts, res, verbose=0)[0]
        assert metric.compute().tolist() == pytest.approx(expected, rel=1e-9)


@pytest.mark.skipif(not can_run_java_tokenizer(), reason="needs java (and a writable pycocoevalcap directory)")
@pytest.mark.parametrize("name", ["unicode", "web_text", "multiple_references"])
def test_raw_text_scores_equal_pycocoevalcap_with_its_java_tokenizer(name: str) -> None:
    cases = CASE_SETS[name]
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": ref} for ref in refs] for i, (_, refs) in enumerate(cases)})
    res = tokenizer.tokenize({i: [{"caption": prediction}] for i, (prediction, _) in enumerate(cases)})
    cider_score, cider_images = Cider().compute_score(gts, res)
    bleu_score, bleu_images = Bleu(4).compute_score(gts, res, verbose=0)
    cider, bleu = CIDErD(), BLEU()
    for metric in (cider, bleu):
        metric.update([p for p, _ in cases], [r for _, r in cases])
    assert cider.compute().item() == pytest.approx(cider_score, rel=1e-9)
    assert cider.compute_per_sample().tolist() == pytest.approx(list(cider_images), rel=1e-9, abs=1e-12)
    assert bleu.compute().tolist() == pytest.approx(bleu_score, rel=1e-9)
    assert bleu.compute_per_sample().T.tolist() == [pytest.approx(s, rel=1e-9, abs=1e-12) for s in bleu_images]
