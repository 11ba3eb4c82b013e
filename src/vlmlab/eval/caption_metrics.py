"""Captioning metrics as torchmetrics `Metric`s: CIDEr-D and BLEU-1..4, as the COCO caption toolkit computes them.

Published captioning numbers come from the COCO caption evaluation code (pycocoevalcap 1.2 on PyPI, the Python 3
port salaniz/pycocoevalcap of tylin/coco-caption): the references of all images are tokenised together by Stanford's
PTBTokenizer (CoreNLP 3.4.1, `-preserveLines -lowerCase`), then the predictions, a fixed list of punctuation tokens
is removed, and `Cider` and `Bleu(4)` score the tokens. This module reproduces that pipeline without Java:
- `vlmlab.eval.ptb_tokenizer` gives the Java tokenizer's tokens (see its docstring for what still differs).
- `CIDErD` computes `Cider().compute_score`: the corpus CIDEr-D (n = 4, sigma = 6, document frequencies over the
  references of the evaluated set, x10, mean over images) and each image's score.
- `BLEU` computes `Bleu(4).compute_score`: the corpus BLEU-1..4 and each image's.
Both take the captions as raw text (`tokenize=True`, the default) or as already tokenised text (`tokenize=False`:
split on whitespace, as pycocoevalcap's scorers do when given tokens, so that `-lrb-` stays `-lrb-`). The scores
equal pycocoevalcap's for the images in the order they were added (the tokenizer looks across caption boundaries
in rare cases, so the order is part of the input); in a distributed run that order is process by process.
The test suite checks both against pycocoevalcap's own tokenizer and scorers.

torchmetrics' own `BLEUScore` is not used for reported numbers, as it gives other values: its brevity penalty uses
another effective reference length (on a tie between the closest references it takes the first, pycocoevalcap the
shorter), it has no smoothing (an order without a match gives 0, where pycocoevalcap's tiny/small constants give a
small positive value) and it splits on whitespace instead of PTB-tokenising.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric

from vlmlab.eval.ptb_tokenizer import ptb_tokenize, ptb_tokenize_lines

__all__ = ["BLEU", "CIDErD", "ptb_tokenize"]

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


def cider_d_per_image(
    predictions: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]]
) -> list[float]:
    """Each image's CIDEr-D (the corpus score is their mean), from tokenised captions: 10 x the mean over n of the
    reference-averaged cosine similarity of clipped tf-idf n-gram vectors, each times a Gaussian penalty on the length
    difference. The document frequencies count images whose references contain the n-gram; log(number of images)
    plays the reference length.

    pycocoevalcap measures lengths in bigrams (words - 1, 0 for an empty caption); that gives the same differences as
    word counts wherever the similarity is not 0 anyway (both captions non-empty), so words are used here.
    """
    document_frequency: Counter[_NGram] = Counter()
    for refs in references:
        document_frequency.update({ngram for ref in refs for ngram in _ngram_counts(ref, _CIDER_MAX_N)})
    log_images = math.log(max(1, len(predictions)))
    scores = []
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
        scores.append(sum(similarity) / _CIDER_MAX_N / len(refs) * 10.0)
    return scores


def bleu_statistics(prediction: Sequence[str], references: Sequence[Sequence[str]]) -> list[int]:
    """One image's BLEU counts: [caption length, closest reference length (the shorter on a tie), n-gram counts
    for n = 1..4, clipped matches for n = 1..4]."""
    max_ref_counts: Counter[_NGram] = Counter()
    for ref in references:
        max_ref_counts |= _ngram_counts(ref, _BLEU_MAX_N)
    guessed = [max(0, len(prediction) - n) for n in range(_BLEU_MAX_N)]
    correct = [0] * _BLEU_MAX_N
    for ngram, count in _ngram_counts(prediction, _BLEU_MAX_N).items():
        correct[len(ngram) - 1] += min(count, max_ref_counts[ngram])
    closest = min((abs(len(ref) - len(prediction)), len(ref)) for ref in references)[1]
    return [len(prediction), closest, *guessed, *correct]


def bleu_scores(statistics: Sequence[float]) -> list[float]:
    """BLEU-1..4 from summed (corpus) or single (one image) `bleu_statistics`, with pycocoevalcap's smoothing
    constants and brevity penalty."""
    hypothesis_length, reference_length = statistics[0], statistics[1]
    guessed, correct = statistics[2 : 2 + _BLEU_MAX_N], statistics[2 + _BLEU_MAX_N :]
    scores = []
    precision_product = 1.0
    for n in range(_BLEU_MAX_N):
        precision_product *= (correct[n] + _BLEU_TINY) / (guessed[n] + _BLEU_SMALL)
        scores.append(precision_product ** (1.0 / (n + 1)))
    ratio = (hypothesis_length + _BLEU_TINY) / (reference_length + _BLEU_SMALL)
    if ratio < 1:
        scores = [score * math.exp(1 - 1 / ratio) for score in scores]
    return scores


class _CaptionSetMetric(Metric):
    """A metric over a set of images, each a predicted caption and its references. The captions themselves are the
    state (their UTF-8 bytes and byte lengths, and each image's number of references, as list states concatenated
    across processes): the tokenizer and CIDEr's document frequencies need the whole set. In a distributed run every
    process must call `update` before `compute`, if need be with empty lists: torchmetrics stands in a float tensor
    for a list state that was never appended to, which cannot be gathered with the other processes' integers."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, tokenize: bool = True, **kwargs: Any) -> None:
        """`tokenize`: PTB-tokenise the captions as pycocoevalcap does (true) or take them as already tokenised
        text, split on whitespace (false). `kwargs`: torchmetrics' `Metric` options (e.g. `sync_on_compute`)."""
        super().__init__(**kwargs)
        self.tokenize = tokenize
        self.add_state("prediction_bytes", default=[], dist_reduce_fx="cat")
        self.add_state("prediction_lengths", default=[], dist_reduce_fx="cat")
        self.add_state("reference_bytes", default=[], dist_reduce_fx="cat")
        self.add_state("reference_lengths", default=[], dist_reduce_fx="cat")
        self.add_state("references_per_image", default=[], dist_reduce_fx="cat")

    def update(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
        """Add images: each a predicted caption and its reference captions."""
        _check_inputs(predictions, references)
        prediction_bytes, prediction_lengths = _encode(predictions, self.device)
        reference_bytes, reference_lengths = _encode([ref for refs in references for ref in refs], self.device)
        self.prediction_bytes.append(prediction_bytes)
        self.prediction_lengths.append(prediction_lengths)
        self.reference_bytes.append(reference_bytes)
        self.reference_lengths.append(reference_lengths)
        counts = torch.tensor([len(refs) for refs in references], dtype=torch.long, device=self.device)
        self.references_per_image.append(counts)

    def _token_sets(self) -> tuple[list[list[str]], list[list[list[str]]]]:
        """The predictions' and the references' tokens, image by image, in the order the images were added."""
        predictions = _decode(
            _concatenated(self.prediction_bytes, torch.uint8), _concatenated(self.prediction_lengths, torch.long)
        )
        flat_references = _decode(
            _concatenated(self.reference_bytes, torch.uint8), _concatenated(self.reference_lengths, torch.long)
        )
        if self.tokenize:  # as pycocoevalcap: all references in one tokenizer call, all predictions in another
            flat_tokens, prediction_tokens = ptb_tokenize_lines(flat_references), ptb_tokenize_lines(predictions)
        else:
            flat_tokens, prediction_tokens = [r.split() for r in flat_references], [p.split() for p in predictions]
        references = []
        start = 0
        for count in _concatenated(self.references_per_image, torch.long).tolist():
            references.append(flat_tokens[start : start + count])
            start += count
        return prediction_tokens, references

    def _per_image(self) -> torch.Tensor:
        raise NotImplementedError

    def compute_per_sample(self) -> torch.Tensor:
        """Each image's score, in the order the images were added (process by process after a distributed sync),
        as pycocoevalcap's per-image scores (COCOEvalCap's `imgToEval`)."""
        with self.sync_context(should_sync=self.sync_on_compute, should_unsync=True):
            return self._per_image()


class CIDErD(_CaptionSetMetric):
    """Corpus CIDEr-D, as pycocoevalcap's `Cider().compute_score`; `compute_per_sample` gives each image's.
    An empty set gives 0."""

    def _per_image(self) -> torch.Tensor:
        scores = cider_d_per_image(*self._token_sets())
        return torch.tensor(scores, dtype=torch.float64, device=self.device)

    def compute(self) -> torch.Tensor:
        scores = self._per_image()
        return scores.mean() if len(scores) else torch.tensor(0.0, dtype=torch.float64, device=self.device)


class BLEU(_CaptionSetMetric):
    """Corpus BLEU-1..4, as the first value returned by pycocoevalcap's `Bleu(4).compute_score` (the "closest"
    reference length); `compute_per_sample` gives each image's four scores (its second value, image by image)."""

    def _statistics(self) -> list[list[int]]:
        predictions, references = self._token_sets()
        return [bleu_statistics(prediction, refs) for prediction, refs in zip(predictions, references)]

    def _per_image(self) -> torch.Tensor:
        scores = [bleu_scores(stats) for stats in self._statistics()]
        return torch.tensor(scores, dtype=torch.float64, device=self.device).reshape(-1, _BLEU_MAX_N)

    def compute(self) -> torch.Tensor:
        totals = [sum(column) for column in zip(*self._statistics())] or [0] * (2 + 2 * _BLEU_MAX_N)
        return torch.tensor(bleu_scores(totals), dtype=torch.float64, device=self.device)
