"""`MixtureSampler`: a weighted mixture of datasets laid end to end in a `ConcatDataset`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class MixtureSampler(Sampler[int]):
    """Each epoch draws every source `weight` times: 1.0 = each record once, 0.5 = a random half,
    2.5 = every record twice plus a random half. Deterministic for a seed and epoch (Lightning
    calls `set_epoch`); in distributed runs Lightning shards it across processes."""

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], seed: int = 0) -> None:
        if len(sizes) != len(weights):
            raise ValueError(f"{len(sizes)} dataset sizes but {len(weights)} weights")
        self.sizes = list(sizes)
        self.weights = list(weights)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _counts(self) -> list[tuple[int, int]]:
        """(full repeats, extra random records) per source."""
        return [(int(w), round((w - int(w)) * n)) for n, w in zip(self.sizes, self.weights)]

    def __len__(self) -> int:
        return sum(repeats * n + extra for n, (repeats, extra) in zip(self.sizes, self._counts()))

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        chosen = []
        offset = 0
        for n, (repeats, extra) in zip(self.sizes, self._counts()):
            chosen.append(torch.arange(n).repeat(repeats) + offset)
            chosen.append(torch.randperm(n, generator=generator)[:extra] + offset)
            offset += n
        indices = torch.cat(chosen)
        yield from indices[torch.randperm(len(indices), generator=generator)].tolist()
