"""`GroupedMixtureSampler`: the training order. It mixes sources by weight, groups samples of similar
length and the same modality into batches (LLaVA's `group_by_modality_length`), shards batches across
processes, and puts the batch with the longest sample first so an out-of-memory shows at step one."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DistributedSampler

from vlmlab.data.lengths import SampleLengths


class GroupedMixtureSampler(DistributedSampler):
    """Yields this process's sample indices into the `ConcatDataset` of the mixture's sources.

    Each epoch every source is drawn `weight` times (1.0 = each record once, 0.5 = a random half,
    2.5 = twice plus a random half) and shuffled. Then indices are cut into global batches of
    `batch_size` samples: the samples of one optimizer step over all processes and accumulated
    micro-batches. Samples that do not fill a last global batch are dropped, so every epoch is a whole
    number of optimizer steps and the same samples train on any number of processes. With
    `group_by_length`, image and text-only samples are taken apart; each is cut into pools of
    `length_group_batches` global batches whose samples are sorted by length before being cut into
    global batches (LLaVA's megabatches: a larger pool means less padding and less randomness); the
    global batches are shuffled and the one holding the longest sample goes first.

    A global batch is cut into micro-batches of `micro_batch_size` in order; micro-batch j goes to
    process j % num_replicas, as its (j // num_replicas)-th accumulated micro-batch. One process thus
    sees the same micro-batches as 64, in another arrangement: averaged over processes and accumulation
    the step's gradient is the same.

    It shards itself, so it subclasses `DistributedSampler`: Lightning then leaves it as it is and
    calls `set_epoch`. Deterministic for a seed and epoch; `resume_at` continues an epoch part-way.
    """

    def __init__(
        self,
        lengths: Sequence[SampleLengths],
        weights: Sequence[float],
        batch_size: int,
        micro_batch_size: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        group_by_length: bool = True,
        length_group_batches: int = 50,
    ) -> None:
        """`batch_size`: the global batch of one optimizer step; `micro_batch_size`: samples per process and
        forward pass (default: `batch_size // num_replicas`, no accumulation)."""
        if len(lengths) != len(weights):
            raise ValueError(f"{len(lengths)} sources but {len(weights)} weights")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        micro_batch_size = micro_batch_size or batch_size // num_replicas
        if micro_batch_size <= 0 or batch_size % (micro_batch_size * num_replicas):
            raise ValueError(
                f"global batch_size={batch_size} is not divisible by micro_batch_size={micro_batch_size} x "
                f"{num_replicas} processes"
            )
        self.sizes = [len(part) for part in lengths]
        self.lengths = torch.tensor([n for part in lengths for n in part.tokens], dtype=torch.long)
        self.has_image = torch.tensor([f for part in lengths for f in part.has_image], dtype=torch.bool)
        self.weights = list(weights)
        self.global_batch_size = batch_size
        self.batch_size = micro_batch_size
        self.accumulation = batch_size // (micro_batch_size * num_replicas)
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.group_by_length = group_by_length
        self.length_group_batches = length_group_batches
        self.epoch = 0
        self._resume_at: tuple[int, int] | None = None  # (epoch, micro-batches already trained in it)

    def _counts(self) -> list[tuple[int, int]]:
        """(full repeats, extra random records) per source."""
        return [(int(w), round((w - int(w)) * n)) for n, w in zip(self.sizes, self.weights)]

    def num_drawn(self) -> int:
        return sum(repeats * n + extra for n, (repeats, extra) in zip(self.sizes, self._counts()))

    def steps_per_epoch(self) -> int:
        """Optimizer steps (global batches) in an epoch."""
        return self.num_drawn() // self.global_batch_size

    def micro_batches_per_epoch(self) -> int:
        """This process's micro-batches in an epoch (the training loader's length)."""
        return self.steps_per_epoch() * self.accumulation

    def __len__(self) -> int:
        return self.micro_batches_per_epoch() * self.batch_size

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
        return indices[torch.argsort(self.lengths[indices], descending=True, stable=True)]

    def global_batches(self) -> list[torch.Tensor]:
        """This epoch's global batches (each `batch_size` indices), in training order."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        indices = self._draw(generator)
        size = self.global_batch_size
        if not self.group_by_length:
            return self._chunks(indices, size)
        pool = size * self.length_group_batches
        batches, leftovers = [], []
        for part in (indices[self.has_image[indices]], indices[~self.has_image[indices]]):
            for start in range(0, len(part), pool):
                ordered = self._by_length(part[start : start + pool])
                batches += self._chunks(ordered, size)
                leftovers.append(ordered[len(ordered) // size * size :])
        # The two modalities' remainders share the last batches.
        batches += [self._by_length(b) for b in self._chunks(torch.cat(leftovers), size)]
        if not batches:
            return []
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        longest = max(range(len(batches)), key=lambda i: int(self.lengths[batches[i][0]]))
        return [batches[longest]] + batches[:longest] + batches[longest + 1 :]

    def micro_batches(self) -> list[torch.Tensor]:
        """This process's micro-batches of the epoch, in order."""
        size, replicas = self.batch_size, self.num_replicas
        return [
            batch[(a * replicas + self.rank) * size : (a * replicas + self.rank + 1) * size]
            for batch in self.global_batches()
            for a in range(self.accumulation)
        ]

    def resume_at(self, epoch: int, batches: int) -> None:
        """Continue epoch `epoch` after its first `batches` micro-batches (a resumed run); after a whole epoch,
        the next one from its start. Sets the epoch at once: Lightning creates the loader's iterator (and
        workers start drawing indices) before it calls `set_epoch` on a resumed run."""
        if batches >= self.micro_batches_per_epoch():
            epoch, batches = epoch + 1, 0
        self.epoch = epoch
        self._resume_at = (epoch, batches)

    def __iter__(self) -> Iterator[int]:
        skip = 0
        if self._resume_at is not None and self._resume_at[0] == self.epoch:
            skip = self._resume_at[1]
        self._resume_at = None
        for batch in self.micro_batches()[skip:]:
            yield from batch.tolist()


class StreamingMixtureSampler(GroupedMixtureSampler):
    """The training order of a mixture read from optimised shards (`format: streaming`): chunk by chunk, as a
    streaming loader reads, so that each process downloads and reads a few chunks at a time, not a random
    record of any chunk at every step.

    Each epoch, every source is drawn `weight` times as `GroupedMixtureSampler` draws it, but in chunk
    order: its chunks are shuffled, and the records inside each chunk. The sources' streams are interleaved
    at random positions (each keeps its own order), and the result is cut into one contiguous part per
    process, all of equal length, so every process reads its own chunks and runs the same number of steps
    (the remainder that does not fill a last global batch on every process is left out). Each process then
    shuffles its part within windows of `shuffle_buffer` samples; with `group_by_length` a window's image and
    text-only samples are taken apart and sorted by length before being cut into micro-batches (grouping
    within the buffer, not over the epoch: more padding than `GroupedMixtureSampler`'s pools, measured in
    experiments/data_loading/RESULTS.md), and the window's micro-batches are shuffled; the first window's
    longest micro-batch goes first.

    `chunk_sizes`: items per chunk of each source, in index order (a source of loose files is one chunk per
    record: shuffled as a whole). Deterministic for a seed and epoch, so `resume_at` resumes exactly.
    """

    def __init__(
        self,
        lengths: Sequence[SampleLengths],
        weights: Sequence[float],
        chunk_sizes: Sequence[Sequence[int]],
        batch_size: int,
        micro_batch_size: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        group_by_length: bool = True,
        shuffle_buffer: int = 4096,
    ) -> None:
        super().__init__(lengths, weights, batch_size, micro_batch_size, num_replicas, rank, seed, group_by_length)
        if [sum(sizes) for sizes in chunk_sizes] != self.sizes:
            raise ValueError(
                f"chunk sizes add up to {[sum(c) for c in chunk_sizes]} records, sources hold {self.sizes}"
            )
        self.chunk_sizes = [torch.tensor(sizes, dtype=torch.long) for sizes in chunk_sizes]
        self.shuffle_buffer = max(self.batch_size, shuffle_buffer // self.batch_size * self.batch_size)

    def _chunk_pass(self, chunk_sizes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One pass over a source's records: its chunks in random order, each chunk's records shuffled."""
        chunk_of = torch.repeat_interleave(torch.arange(len(chunk_sizes)), chunk_sizes)
        position = torch.empty(len(chunk_sizes), dtype=torch.float64)
        position[torch.randperm(len(chunk_sizes), generator=generator)] = torch.arange(
            len(chunk_sizes), dtype=torch.float64
        )
        keys = position[chunk_of] + torch.rand(len(chunk_of), generator=generator, dtype=torch.float64)
        return torch.argsort(keys)

    def _draw(self, generator: torch.Generator) -> torch.Tensor:
        streams, offset = [], 0
        for chunk_sizes, (repeats, extra) in zip(self.chunk_sizes, self._counts()):
            passes = [self._chunk_pass(chunk_sizes, generator) for _ in range(repeats)]
            passes.append(self._chunk_pass(chunk_sizes, generator)[:extra])
            streams.append(torch.cat(passes) + offset)
            offset += int(chunk_sizes.sum())
        labels = torch.cat([torch.full((len(s),), i) for i, s in enumerate(streams)])
        labels = labels[torch.randperm(len(labels), generator=generator)]
        mixed = torch.empty(len(labels), dtype=torch.long)
        for i, stream in enumerate(streams):
            mixed[labels == i] = stream
        return mixed

    def _window_batches(self, window: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        size = self.batch_size
        window = window[torch.randperm(len(window), generator=generator)]
        if not self.group_by_length:
            return self._chunks(window, size)
        batches, leftovers = [], []
        for part in (window[self.has_image[window]], window[~self.has_image[window]]):
            ordered = self._by_length(part)
            batches += self._chunks(ordered, size)
            leftovers.append(ordered[len(ordered) // size * size :])
        batches += [self._by_length(b) for b in self._chunks(torch.cat(leftovers), size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]

    def micro_batches(self) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        stream = self._draw(generator)
        part = len(stream) // self.num_replicas
        mine = stream[self.rank * part :][: self.micro_batches_per_epoch() * self.batch_size]
        generator.manual_seed(self.seed + self.epoch + 7919 * (self.rank + 1))  # each process its own shuffles
        batches = []
        for start in range(0, len(mine), self.shuffle_buffer):
            window = self._window_batches(mine[start : start + self.shuffle_buffer], generator)
            if start == 0 and window:
                longest = max(range(len(window)), key=lambda i: int(self.lengths[window[i]].max()))
                window = [window[longest]] + window[:longest] + window[longest + 1 :]
            batches += window
        return batches


def padding_waste(batches: Sequence[torch.Tensor], lengths: torch.Tensor) -> float:
    """The share of a padded batch's token slots that are padding, over all `batches` (index tensors)."""
    slots = sum(len(b) * int(lengths[b].max()) for b in batches if len(b))
    used = sum(int(lengths[b].sum()) for b in batches)
    return 1 - used / slots if slots else 0.0
