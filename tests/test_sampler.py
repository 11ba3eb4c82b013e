"""The training order: mixture weights, modality/length grouping, longest batch first, sharding by rank."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from vlmlab.data.lengths import SampleLength, SampleLengths, estimate_length
from vlmlab.data.sampler import GroupedMixtureSampler


def mixed_lengths(n: int, seed: int = 0) -> SampleLengths:
    """A long-tailed length distribution; every fourth sample is text-only."""
    generator = torch.Generator().manual_seed(seed)
    lengths = (torch.randint(20, 200, (n,), generator=generator) * torch.rand(n, generator=generator) ** 3 + 580).long()
    return SampleLengths(lengths.tolist(), [i % 4 != 0 for i in range(n)])


def same_lengths(n: int) -> SampleLengths:
    return SampleLengths([5] * n, [True] * n)


def batches_of(sampler: GroupedMixtureSampler) -> list[list[int]]:
    indices = list(sampler)
    return [indices[i : i + sampler.batch_size] for i in range(0, len(indices), sampler.batch_size)]


def test_weights_repeats_and_determinism() -> None:
    sampler = GroupedMixtureSampler(
        [same_lengths(10), same_lengths(20)], [2.5, 0.5], batch_size=5, group_by_length=False, seed=1
    )
    indices = list(sampler)
    assert len(indices) == len(sampler) == 35
    per_source = Counter(i < 10 for i in indices)
    assert per_source[True] == 25 and per_source[False] == 10
    assert min(Counter(i for i in indices if i < 10).values()) >= 2  # every record of the first source twice
    assert (
        list(
            GroupedMixtureSampler(
                [same_lengths(10), same_lengths(20)], [2.5, 0.5], batch_size=5, seed=1, group_by_length=False
            )
        )
        == indices
    )
    sampler.set_epoch(1)
    assert list(sampler) != indices


def test_grouped_batches_hold_one_modality_and_the_longest_comes_first() -> None:
    lengths = mixed_lengths(400)
    sampler = GroupedMixtureSampler([lengths], [1.0], batch_size=8, seed=3)
    batches = batches_of(sampler)
    assert len(batches) == 50 and sorted(i for b in batches for i in b) == list(range(400))
    longest = max(range(400), key=lambda i: lengths.tokens[i])
    assert longest in batches[0]
    mixed = [b for b in batches if len({lengths.has_image[i] for i in b}) > 1]
    assert len(mixed) <= 1  # only the batch of both modalities' remainders may mix

    # Sorting within global batches cuts padding: compare with random batches of the same data.
    def padding(batches: list[list[int]]) -> int:
        return sum(max(lengths.tokens[i] for i in b) * len(b) - sum(lengths.tokens[i] for i in b) for b in batches)

    random_batches = batches_of(GroupedMixtureSampler([lengths], [1.0], batch_size=8, seed=3, group_by_length=False))
    assert padding(batches) < 0.5 * padding(random_batches)


def test_ranks_split_each_global_batch_and_cover_it() -> None:
    lengths = mixed_lengths(203)
    ranks = [
        GroupedMixtureSampler([lengths], [1.0], batch_size=12, micro_batch_size=4, num_replicas=3, rank=r, seed=5)
        for r in range(3)
    ]
    shares = [batches_of(s) for s in ranks]
    assert len({len(s) for s in shares}) == 1 and len(shares[0]) == 203 // 12  # equal step counts on every rank
    seen = [i for share in shares for batch in share for i in batch]
    assert len(seen) == len(set(seen)) == 203 // 12 * 12  # disjoint shares
    single = GroupedMixtureSampler([lengths], [1.0], batch_size=12, seed=5)
    for step, global_batch in enumerate(batches_of(single)):
        assert sum((share[step] for share in shares), []) == global_batch
    longest = max(seen, key=lambda i: lengths.tokens[i])
    assert longest in shares[0][0]  # rank 0's first batch holds the epoch's longest sample


@pytest.mark.parametrize("group_by_length", [True, False])
def test_an_optimizer_step_trains_the_same_samples_on_any_number_of_processes(group_by_length: bool) -> None:
    # 92 samples, global batch 16: 5 steps (the remainder of 12 is left out) however the batch is split
    lengths = mixed_lengths(92)

    def steps(micro: int, replicas: int) -> list[list[list[int]]]:
        """Per optimizer step, its micro-batches in the order micro-batch j = (accumulation a, rank a % R)."""
        shares = [
            batches_of(
                GroupedMixtureSampler([lengths], [1.0], 16, micro, replicas, r, seed=2, group_by_length=group_by_length)
            )
            for r in range(replicas)
        ]
        accumulation = 16 // (micro * replicas)
        assert {len(share) for share in shares} == {5 * accumulation}
        return [
            [shares[r][step * accumulation + a] for a in range(accumulation) for r in range(replicas)]
            for step in range(5)
        ]

    one_process = steps(4, 1)  # 4 accumulated micro-batches
    assert steps(4, 2) == steps(4, 4) == one_process  # the same micro-batches, shared out
    assert steps(8, 2) == [[sum(step[:2], []), sum(step[2:], [])] for step in one_process]


def test_resume_continues_the_epoch_and_after_its_end_the_next() -> None:
    lengths = mixed_lengths(100)

    def sampler() -> GroupedMixtureSampler:
        return GroupedMixtureSampler([lengths], [1.0], batch_size=8, micro_batch_size=4, seed=1)

    epoch1 = sampler()
    epoch1.set_epoch(1)
    full = list(epoch1)
    resumed = sampler()
    resumed.resume_at(1, 6)  # the epoch is set at once: a loader's workers may draw before set_epoch
    assert resumed.epoch == 1 and list(resumed) == full[6 * 4 :]
    after_the_end = sampler()
    after_the_end.resume_at(0, sampler().micro_batches_per_epoch())
    epoch1.set_epoch(1)
    assert after_the_end.epoch == 1 and list(after_the_end) == full


def test_estimate_length_counts_words_and_image_tokens_and_flags_the_modality() -> None:
    text = {"conversations": [{"from": "human", "value": "two words"}, {"from": "gpt", "value": "three more words"}]}
    assert estimate_length(text, image_tokens=576) == SampleLength(5, has_image=False)
    assert estimate_length({**text, "image": "a.jpg"}, image_tokens=576) == SampleLength(581, has_image=True)
    assert estimate_length({**text, "image": ["a.jpg", "b.jpg"]}, image_tokens=576) == SampleLength(1157, True)
    assert estimate_length({"id": 1, "error": ["malformed", "x"]}, image_tokens=576) == SampleLength(0, False)
