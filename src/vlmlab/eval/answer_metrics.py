"""Short-answer metrics as torchmetrics `Metric`s: exact match, VQAv2 accuracy and DocVQA's ANLS.

Each is the mean of a per-question score; the states are a sum and a count, so they add up across
processes. VQA accuracy and ANLS follow the official scorers line by line in behaviour, quirks
included (see each function), so the numbers can be compared with published ones:
- VQAv2: `vqaEval.py` of GT-Vision-Lab/VQA (PythonEvaluationTools) at master, commit a013f00
  (2021-03-11). Older copies of that file, and many re-implementations, normalise the prediction
  always and the human answers only for punctuation; their numbers differ from master's.
- DocVQA: the Robust Reading Competition's evaluation script for DocVQA task 1.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric

# --- VQAv2 answer processing (vqaEval.py) ----------------------------------------------------------

VQA_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
VQA_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
VQA_ARTICLES = {"a", "an", "the"}
VQA_PUNCTUATION = [
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
]
# The official pattern means "a full stop not followed by a digit": its `(?!<=\d)` is a lookahead for
# the text "<=digit", a typo for a lookbehind, and is kept because it decides which stops go.
_VQA_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_VQA_COMMA_NUMBER = re.compile(r"(\d)(,)(\d)")
# The official call is `periodStrip.sub("", text, re.UNICODE)`: re.UNICODE lands in `count`, so at
# most 32 full stops are removed.
_VQA_PERIOD_COUNT = int(re.UNICODE)


def vqa_process_punctuation(text: str) -> str:
    """vqaEval's processPunctuation: a mark next to a space (or anywhere in text holding a digit-comma-digit
    group) is deleted, otherwise it becomes a space; then full stops not followed by a digit go."""
    out = text
    for mark in VQA_PUNCTUATION:
        if mark + " " in text or " " + mark in text or _VQA_COMMA_NUMBER.search(text) is not None:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _VQA_PERIOD.sub("", out, count=_VQA_PERIOD_COUNT)


def vqa_process_digits_articles(text: str) -> str:
    """vqaEval's processDigitArticle: lower case, number words to digits, articles dropped, and
    apostrophe-less contractions restored ("dont" -> "don't")."""
    words = [VQA_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(VQA_CONTRACTIONS.get(word, word) for word in words if word not in VQA_ARTICLES)


def vqa_normalize(text: str) -> str:
    """vqaEval's normalisation of one answer: processPunctuation, then processDigitArticle."""
    return vqa_process_digits_articles(vqa_process_punctuation(text))


def _vqa_strip(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """One question's VQAv2 accuracy: the mean, over each human answer left out in turn, of
    min(1, matches among the other answers / 3); with 10 humans, one match scores 0.3.

    As in vqaEval.py at GT-Vision-Lab/VQA master (commit a013f00, "Fixed processing answers bug"):
    the prediction and the human answers are stripped (newlines and tabs become spaces); only when
    the stripped human answers are not all identical are both the humans and the prediction
    normalised (`vqa_normalize`). When all humans agree the raw strings are compared, so "Yes"
    against ten "yes" scores 0.
    """
    if not answers:
        raise ValueError("VQA accuracy needs the human answers of the question; got none")
    predicted = _vqa_strip(prediction)
    humans = [_vqa_strip(answer) for answer in answers]
    if len(set(humans)) > 1:
        humans = [vqa_normalize(human) for human in humans]
        predicted = vqa_normalize(predicted)
    matches = sum(human == predicted for human in humans)
    return sum(min(1.0, (matches - (human == predicted)) / 3) for human in humans) / len(humans)


# --- DocVQA ANLS (RRC script) ----------------------------------------------------------------------

ANLS_THRESHOLD = 0.5


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions), in O(len(a) * len(b)) time and O(len) memory."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def anls(prediction: str, answers: Sequence[str], threshold: float = ANLS_THRESHOLD) -> float:
    """One question's normalised Levenshtein similarity to its closest answer, 0 below `threshold`.

    As in the RRC script: the distance is taken between lower-cased, whitespace-collapsed strings,
    but divided by the longer of the *raw* strings' upper-cased lengths; a similarity exactly at
    the threshold is kept.
    """
    if not answers:
        raise ValueError("ANLS needs the question's reference answers; got none")
    predicted = " ".join(prediction.strip().lower().split())
    distances = []
    for answer in answers:
        length = max(len(answer.upper()), len(prediction.upper()))
        reference = " ".join(answer.strip().lower().split())
        distances.append(0.0 if length == 0 else levenshtein(reference, predicted) / length)
    similarity = 1 - min(distances)
    return 0.0 if similarity < threshold else similarity


# --- exact match -----------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """Lower case, collapsed whitespace, no trailing full stop: "Red." and " red" both match "red"."""
    return " ".join(text.lower().split()).rstrip(".").strip()


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    return float(normalize_answer(prediction) in {normalize_answer(a) for a in answers})


# --- the metrics -----------------------------------------------------------------------------------


class MeanAnswerScore(Metric):
    """Mean over questions of a per-question score of (prediction, reference answers)."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        """`kwargs`: torchmetrics' `Metric` options (e.g. `sync_on_compute`)."""
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("scores", default=[], dist_reduce_fx="cat")

    def score(self, prediction: str, answers: Sequence[str]) -> float:
        raise NotImplementedError

    def update(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
        scores = [self.score(prediction, answers) for prediction, answers in zip(predictions, references)]
        self.scores.append(torch.tensor(scores, dtype=torch.float64, device=self.device))
        self.total += sum(scores)
        self.count += len(predictions)

    def compute(self) -> torch.Tensor:
        return self.total / self.count.clamp(min=1)

    def compute_per_sample(self) -> torch.Tensor:
        """Each question's score, in the order they were added (process by process after a distributed sync)."""
        with self.sync_context(should_sync=self.sync_on_compute, should_unsync=True):
            scores = self.scores
            if isinstance(scores, list):
                scores = torch.cat(scores) if scores else torch.zeros(0, dtype=torch.float64, device=self.device)
            return scores.to(torch.float64)


class ExactMatchAccuracy(MeanAnswerScore):
    """Fraction of predictions equal (after `normalize_answer`) to any of their reference answers."""

    def score(self, prediction: str, answers: Sequence[str]) -> float:
        return exact_match(prediction, answers)


class VQAAccuracy(MeanAnswerScore):
    """VQAv2's accuracy (see `vqa_accuracy`), averaged over questions."""

    def score(self, prediction: str, answers: Sequence[str]) -> float:
        return vqa_accuracy(prediction, answers)


class ANLS(MeanAnswerScore):
    """DocVQA's Average Normalized Levenshtein Similarity (see `anls`)."""

    def __init__(self, threshold: float = ANLS_THRESHOLD, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold

    def score(self, prediction: str, answers: Sequence[str]) -> float:
        return anls(prediction, answers, self.threshold)
