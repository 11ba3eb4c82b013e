"""Captioning metrics as torchmetrics `Metric`s: CIDEr-D and BLEU-1..4, as the COCO caption toolkit computes them.

Published captioning numbers come from the COCO caption evaluation code (`pycocoevalcap`): captions are
tokenised with Stanford's PTBTokenizer (CoreNLP 3.4.1, run as `-preserveLines -lowerCase`) and a fixed list of
punctuation tokens is removed; then `Cider` and `Bleu(4)` score the tokenised text. This module reproduces that
pipeline without Java:
- `ptb_tokenize` gives the tokens the toolkit's tokenizer gives on ordinary captions (see its docstring).
- `CIDErD` computes `Cider().compute_score` on the same tokens: the corpus CIDEr-D (n = 4, sigma = 6, document
  frequencies over the references of the evaluated set, x10, mean over images).
- `BLEU` computes `Bleu(4).compute_score`'s corpus scores.
The test suite checks both against pycocoevalcap's scorers.

torchmetrics' own `BLEUScore` is not used for reported numbers, as it gives other values: its brevity penalty uses
another effective reference length (on a tie between the closest references it takes the first, pycocoevalcap the
shorter), it has no smoothing (an order without a match gives 0, where pycocoevalcap's tiny/small constants give a
small positive value) and it splits on whitespace instead of PTB-tokenising.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric

__all__ = ["BLEU", "CIDErD", "ptb_tokenize"]

# --- PTB tokenisation -----------------------------------------------------------------------------------------------
#
# pycocoevalcap lowercases and tokenises captions with Stanford's PTBTokenizer, then drops punctuation tokens. The
# conventions below are PTB's (Penn Treebank): clitics and "n't" split off, brackets named -lrb- ..., quotes and
# dashes normalised; they are what matters for ordinary captions. The tests compare this with the Java tokenizer.

_CHARACTERS = str.maketrans(
    {
        "\u2018": "`", "\u201b": "`", "\u2019": "'", "\u201c": '"', "\u201d": '"',  # curly quotes
        "\u2013": " -- ", "\u2014": " -- ", "\u2026": " ... ",  # dashes, ellipsis
        "\u00a3": " # ", "\u20ac": " $ ", "\u00a2": " cents ",  # PTB's currency names
        "\u00bd": " 1/2 ", "\u00bc": " 1/4 ", "\u00be": " 3/4 ",  # vulgar fractions
    }
)  # fmt: skip
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_ABBREVIATIONS = "mr|mrs|ms|dr|st|jr|sr|vs|etc|inc|ltd|co|mt|ft|no|jan|feb|aug|sept?|oct|nov|dec"
_TOKEN = re.compile(
    rf"""
    (?:[a-z]\.){{2,}}                                   # acronyms: u.s.
    | (?:{_ABBREVIATIONS})\.(?=[\s.]|$)                 # known abbreviations keep their period
    | [a-z]\.(?=\s*$)                                   # a one-letter word ending the caption: "plan b."
    | \d+(?:[.,:]\d+)*(?:[-/][a-z0-9]+)*               # numbers: 3.5, 1,000, 10:30, 3-year-old, 1/2
    | [a-z0-9]+(?:[-/][a-z0-9]+)*(?=n't)                 # the word before n't: "is" of isn't, "ca" of can't
    | n't
    | '(?:s|m|d|re|ve|ll)(?![a-z])                       # clitics: 's 'm 'd 're 've 'll
    | o'clock
    | [a-z0-9]+(?:[-/][a-z0-9]+)*                        # words, hyphenated and slashed ones included
    | \.\.\.|--|[?!]+|``|''|[^\sa-z0-9]               # punctuation, ?! sequences kept together
    """,
    re.VERBOSE,
)
_SPLIT_WORDS = {"cannot": ["can", "not"], "gonna": ["gon", "na"], "gotta": ["got", "ta"], "wanna": ["wan", "na"]}
_REMOVED_TOKENS = {"''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";", '"'}


def ptb_tokenize(text: str) -> list[str]:
    """A caption's tokens as pycocoevalcap's PTBTokenizer gives them, without Java.

    Lowercases; splits off punctuation; splits PTB contractions ("isn't" -> "is" "n't", "man's" -> "man" "'s",
    "can't" -> "ca" "n't", also 'm 'd 're 've 'll, "gonna" -> "gon" "na", "cannot" -> "can" "not"); keeps hyphenated
    and slashed words ("3-year-old", "black/white"), numbers ("3.5", "1,000", "10:30"), acronyms ("u.s.") and common
    abbreviations ("mr.", "st.", "etc.") whole; names brackets -lrb- -rrb- -lsb- -rsb- -lcb- -rcb- (pycocoevalcap's
    drop list spells them in upper case, so they stay); then drops the tokens pycocoevalcap drops (quotes and
    . ? ! , : ; - -- ...). Written for ordinary caption text: URLs, e-mail addresses, emoticons, rare abbreviations
    and non-Latin scripts may tokenise differently from the Java tokenizer.
    """
    tokens = []
    for token in _TOKEN.findall(text.lower().translate(_CHARACTERS)):
        tokens += _SPLIT_WORDS.get(token, [_BRACKETS.get(token, token)])
    return [token for token in tokens if token not in _REMOVED_TOKENS]


# --- the metrics ------------------------------------------------------------------------------------------------

_CIDER_MAX_N = 4
_CIDER_SIGMA = 6.0
_BLEU_MAX_N = 4
_BLEU_TINY = 1e-15  # pycocoevalcap's smoothing constants: added to the matches...
_BLEU_SMALL = 1e-9  # ...and to the n-gram counts (and likewise to the two corpus lengths)

_NGram = tuple[str, ...]


def _ngram_counts(tokens: Sequence[str], max_n: int) -> Counter[_NGram]:
    """Counts of the 1- to max_n-grams of `tokens`, in pycocoevalcap's order (by n, then by position)."""
    return Counter(tuple(tokens[i : i + n]) for n in range(1, max_n + 1) for i in range(len(tokens) - n + 1))


def _check_inputs(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if isinstance(predictions, str) or any(isinstance(refs, str) for refs in references):
        raise TypeError("predictions must be a sequence of strings and references a sequence of sequences of strings")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("every prediction needs at least one reference")


def _encode(texts: Sequence[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The UTF-8 bytes of `texts`, concatenated, and the byte length of each text."""
    encoded = [text.encode() for text in texts]
    data = torch.tensor([byte for text in encoded for byte in text], dtype=torch.uint8, device=device)
    return data, torch.tensor([len(text) for text in encoded], dtype=torch.long, device=device)


def _concatenated(state: list[torch.Tensor] | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A "cat" list state as one tensor (after a distributed sync it already is one). The cast undoes the float dtype
    of the empty placeholder that torchmetrics syncs when no process appended to the state."""
    if isinstance(state, list):
        state = torch.cat(state) if state else torch.zeros(0)
    return state.to(dtype)


def _decode(data: torch.Tensor, lengths: torch.Tensor) -> list[str]:
    raw = data.cpu().numpy().tobytes()
    ends = torch.cumsum(lengths.cpu(), 0).tolist()
    return [raw[start:end].decode() for start, end in zip([0, *ends[:-1]], ends)]


def _tfidf(
    tokens: Sequence[str], document_frequency: Counter[_NGram], log_images: float
) -> tuple[list[dict[_NGram, float]], list[float]]:
    """The tf-idf vectors of a caption's n-grams, one per n, and their norms."""
    vectors: list[dict[_NGram, float]] = [{} for _ in range(_CIDER_MAX_N)]
    for ngram, count in _ngram_counts(tokens, _CIDER_MAX_N).items():
        vectors[len(ngram) - 1][ngram] = count * (log_images - math.log(max(1.0, document_frequency[ngram])))
    return vectors, [math.sqrt(sum(weight * weight for weight in vector.values())) for vector in vectors]


def _cider_d(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]]) -> float:
    """CIDEr-D of tokenised captions: the mean over images of 10 x the mean over n of the reference-averaged cosine
    similarity of clipped tf-idf n-gram vectors, each times a Gaussian penalty on the length difference. The document
    frequencies count images whose references contain the n-gram; log(number of images) plays the reference length.

    pycocoevalcap measures lengths in bigrams (words - 1, 0 for an empty caption); that gives the same differences as
    word counts wherever the similarity is not 0 anyway (both captions non-empty), so words are used here.
    """
    if not predictions:
        return 0.0
    document_frequency: Counter[_NGram] = Counter()
    for refs in references:
        document_frequency.update({ngram for ref in refs for ngram in _ngram_counts(ref, _CIDER_MAX_N)})
    log_images = math.log(len(predictions))
    total = 0.0
    for prediction, refs in zip(predictions, references):
        hyp_vectors, hyp_norms = _tfidf(prediction, document_frequency, log_images)
        similarity = [0.0] * _CIDER_MAX_N
        for ref in refs:
            ref_vectors, ref_norms = _tfidf(ref, document_frequency, log_images)
            penalty = math.exp(-((len(prediction) - len(ref)) ** 2) / (2 * _CIDER_SIGMA**2))
            for n in range(_CIDER_MAX_N):
                dot = 0.0
                for ngram, weight in hyp_vectors[n].items():
                    ref_weight = ref_vectors[n].get(ngram, 0.0)
                    dot += min(weight, ref_weight) * ref_weight  # the hypothesis weight is clipped at the reference's
                if hyp_norms[n] != 0 and ref_norms[n] != 0:
                    dot /= hyp_norms[n] * ref_norms[n]
                similarity[n] += dot * penalty
        total += sum(similarity) / _CIDER_MAX_N / len(refs) * 10.0
    return total / len(predictions)


class CIDErD(Metric):
    """Corpus CIDEr-D, as pycocoevalcap's `Cider().compute_score` on PTB-tokenised captions.

    CIDEr's document frequencies come from the whole evaluated set, so the (tokenised) captions themselves are the
    state: their UTF-8 bytes and byte lengths, and each image's number of references, as list states that are
    concatenated across processes; `compute` rebuilds the set from them. An empty set gives 0. In a distributed run
    every process must call `update` before `compute`, if need be with empty lists: torchmetrics stands in a float
    tensor for a list state that was never appended to, which cannot be gathered with the other processes' integers.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        """`kwargs`: torchmetrics' `Metric` options (e.g. `sync_on_compute`)."""
        super().__init__(**kwargs)
        self.add_state("prediction_bytes", default=[], dist_reduce_fx="cat")
        self.add_state("prediction_lengths", default=[], dist_reduce_fx="cat")
        self.add_state("reference_bytes", default=[], dist_reduce_fx="cat")
        self.add_state("reference_lengths", default=[], dist_reduce_fx="cat")
        self.add_state("references_per_image", default=[], dist_reduce_fx="cat")

    def update(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
        """Add images: each a predicted caption and its reference captions, as raw text."""
        _check_inputs(predictions, references)
        prediction_bytes, prediction_lengths = _encode([" ".join(ptb_tokenize(p)) for p in predictions], self.device)
        reference_bytes, reference_lengths = _encode(
            [" ".join(ptb_tokenize(ref)) for refs in references for ref in refs], self.device
        )
        self.prediction_bytes.append(prediction_bytes)
        self.prediction_lengths.append(prediction_lengths)
        self.reference_bytes.append(reference_bytes)
        self.reference_lengths.append(reference_lengths)
        counts = torch.tensor([len(refs) for refs in references], dtype=torch.long, device=self.device)
        self.references_per_image.append(counts)

    def compute(self) -> torch.Tensor:
        predictions = _decode(
            _concatenated(self.prediction_bytes, torch.uint8), _concatenated(self.prediction_lengths, torch.long)
        )
        flat_references = _decode(
            _concatenated(self.reference_bytes, torch.uint8), _concatenated(self.reference_lengths, torch.long)
        )
        references = []
        start = 0
        for count in _concatenated(self.references_per_image, torch.long).tolist():
            references.append([ref.split() for ref in flat_references[start : start + count]])
            start += count
        score = _cider_d([prediction.split() for prediction in predictions], references)
        return torch.tensor(score, dtype=torch.float64, device=self.device)


class BLEU(Metric):
    """Corpus BLEU-1..4, as the first value returned by pycocoevalcap's `Bleu(4).compute_score`.

    Per caption: the clipped n-gram matches, the n-gram counts, the caption length and the reference length closest
    to it (the shorter one on a tie). Their sums over the corpus are the states, so the distributed reduction is a
    sum. `compute` returns the four scores, with pycocoevalcap's smoothing constants and brevity penalty.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        """`kwargs`: torchmetrics' `Metric` options (e.g. `sync_on_compute`)."""
        super().__init__(**kwargs)
        self.add_state("hypothesis_length", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("reference_length", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("guessed", default=torch.zeros(_BLEU_MAX_N, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("correct", default=torch.zeros(_BLEU_MAX_N, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
        """Add images: each a predicted caption and its reference captions, as raw text."""
        _check_inputs(predictions, references)
        guessed = [0] * _BLEU_MAX_N
        correct = [0] * _BLEU_MAX_N
        hypothesis_length = reference_length = 0
        for prediction, refs in zip(predictions, references):
            hypothesis = ptb_tokenize(prediction)
            tokenised_refs = [ptb_tokenize(ref) for ref in refs]
            max_ref_counts: Counter[_NGram] = Counter()
            for ref in tokenised_refs:
                max_ref_counts |= _ngram_counts(ref, _BLEU_MAX_N)
            hypothesis_length += len(hypothesis)
            reference_length += min((abs(len(ref) - len(hypothesis)), len(ref)) for ref in tokenised_refs)[1]
            for n in range(_BLEU_MAX_N):
                guessed[n] += max(0, len(hypothesis) - n)
            for ngram, count in _ngram_counts(hypothesis, _BLEU_MAX_N).items():
                correct[len(ngram) - 1] += min(count, max_ref_counts[ngram])
        self.hypothesis_length += hypothesis_length
        self.reference_length += reference_length
        self.guessed += torch.tensor(guessed, dtype=torch.long, device=self.device)
        self.correct += torch.tensor(correct, dtype=torch.long, device=self.device)

    def compute(self) -> torch.Tensor:
        correct, guessed = self.correct.tolist(), self.guessed.tolist()
        scores = []
        precision_product = 1.0
        for n in range(_BLEU_MAX_N):
            precision_product *= (correct[n] + _BLEU_TINY) / (guessed[n] + _BLEU_SMALL)
            scores.append(precision_product ** (1.0 / (n + 1)))
        ratio = (self.hypothesis_length.item() + _BLEU_TINY) / (self.reference_length.item() + _BLEU_SMALL)
        if ratio < 1:
            scores = [score * math.exp(1 - 1 / ratio) for score in scores]
        return torch.tensor(scores, dtype=torch.float64, device=self.device)
