"""`GroupedMixtureSampler`: the training order. It mixes sources by weight, groups samples of similar
length and the same modality into batches (LLaVA's `group_by_modality_length`), shards batches across
processes, and puts the batch with the longest sample first so an out-of-memory shows at step one."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DistributedSampler


def estimate_length(record: Any, num_image_tokens: int) -> int:
    """Words of all turns plus the image tokens, negative for a text-only record (LLaVA's convention:
    the sign is the modality). Cheap enough for 665K records; the order is what matters, not the unit."""
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        return 0
    words = sum(
        len(str(turn.get("value", turn.get("content", ""))).split())
        for turn in record["conversations"]
        if isinstance(turn, dict)
    )
    image = record.get("image")
    num_images = 0 if image is None else 1 if isinstance(image, str | dict) else len(image)
    return words + num_images * num_image_tokens if num_images else -max(1, words)


class GroupedMixtureSampler(DistributedSampler):
    """Yields this process's sample indices into the `ConcatDataset` of the mixture's sources.

    Each epoch every source is drawn `weight` times (1.0 = each record once, 0.5 = a random half,
    2.5 = twice plus a random half) and shuffled. Then indices are cut into global batches of
    `batch_size * num_replicas`, each split into contiguous per-process batches. With
    `group_by_length`, image and text-only samples are taken apart; each is cut into pools of
    `length_group_batches` global batches whose samples are sorted by length before being cut into
    global batches (LLaVA's megabatches: a larger pool means less padding and less randomness); the
    global batches are shuffled and the one holding the longest sample goes first. Samples that do
    not fill a last global batch are dropped.

    It shards itself, so it subclasses `DistributedSampler`: Lightning then leaves it as it is and
    calls `set_epoch`. Deterministic for a seed and epoch.
    """

    def __init__(
        self,
        lengths: Sequence[Sequence[int]],
        weights: Sequence[float],
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        group_by_length: bool = True,
        length_group_batches: int = 50,
    ) -> None:
        if len(lengths) != len(weights):
            raise ValueError(f"{len(lengths)} sources but {len(weights)} weights")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.sizes = [len(part) for part in lengths]
        self.lengths = torch.tensor([n for part in lengths for n in part], dtype=torch.long)
        self.weights = list(weights)
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.group_by_length = group_by_length
        self.length_group_batches = length_group_batches
        self.epoch = 0
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches already trained in it)

    def _counts(self) -> list[tuple[int, int]]:
        """(full repeats, extra random records) per source."""
        return [(int(w), round((w - int(w)) * n)) for n, w in zip(self.sizes, self.weights)]

    def num_drawn(self) -> int:
        return sum(repeats * n + extra for n, (repeats, extra) in zip(self.sizes, self._counts()))

    def __len__(self) -> int:
        return self.num_drawn() // (self.batch_size * self.num_replicas) * self.batch_size

    def _draw(self, generator: torch.Generator) -> torch.Tensor:
        chosen = []
        offset = 0
        for n, (repeats, extra) in zip(self.sizes, self._counts()):
            chosen.append(torch.arange(n).repeat(repeats) + offset)
            chosen.append(torch.randperm(n, generator=generator)[:extra] + offset)
            offset += n
        indices = torch.cat(chosen)
        return indices[torch.randperm(len(indices), generator=generator)]

    @staticmethod
    def _chunks(indices: torch.Tensor, size: int) -> list[torch.Tensor]:
        """Consecutive chunks of `size`; a shorter remainder is left out."""
        return [indices[start : start + size] for start in range(0, len(indices) - size + 1, size)]

    def _by_length(self, indices: torch.Tensor) -> torch.Tensor:
        return indices[torch.argsort(self.lengths[indices].abs(), descending=True, stable=True)]

    def global_batches(self) -> list[torch.Tensor]:
        """This epoch's global batches (each `batch_size * num_replicas` indices), in training order."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        indices = self._draw(generator)
        size = self.batch_size * self.num_replicas
        if not self.group_by_length:
            return self._chunks(indices, size)
        pool = size * self.length_group_batches
        batches, leftovers = [], []
        for part in (indices[self.lengths[indices] > 0], indices[self.lengths[indices] <= 0]):
            for start in range(0, len(part), pool):
                ordered = self._by_length(part[start : start + pool])
                batches += self._chunks(ordered, size)
                leftovers.append(ordered[len(ordered) // size * size :])
        # The two modalities' remainders share the last batches.
        batches += [self._by_length(b) for b in self._chunks(torch.cat(leftovers), size)]
        if not batches:
            return []
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        longest = max(range(len(batches)), key=lambda i: int(self.lengths[batches[i][0]].abs()))
        return [batches[longest]] + batches[:longest] + batches[longest + 1 :]

    def resume_at(self, epoch: int, batches: int) -> None:
        """Start epoch `epoch`'s next iteration after its first `batches` batches (a resumed run)."""
        self._resume_at = (epoch, batches)

    def __iter__(self) -> Iterator[int]:
        skip = 0
        if self._resume_at is not None and self._resume_at[0] == self.epoch:
            skip = self._resume_at[1]
        self._resume_at = None
        start = self.rank * self.batch_size
        for batch in self.global_batches()[skip:]:
            yield from batch[start : start + self.batch_size].tolist()
