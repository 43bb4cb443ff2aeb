"""Step sampling: which samples, with which augmentation seed, each rank loads at each step.

Nothing random depends on history. The data order is a fixed reshuffle per pass of each
split, the augmentation of a sample derives from ``(seed, stream, position)``. Rank ``r``
takes positions ``[(step * world + r) * batch, ... + batch)`` of each stream, so a 2-rank
run with batch 8 loads the same samples as a 1-rank run with batch 16.
"""
from __future__ import annotations

import functools
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from m3l_core.data.folder import DatasetError
from m3l_core.data.transforms import TrainTransform

LABELED, UNLABELED = 0, 1  # data streams
# Tags keep the seeds of different random draws apart.
TAG_INIT, TAG_ORDER, TAG_AUG, TAG_MASK, TAG_TORCH = 11, 12, 13, 14, 15

StepKey = tuple[int, int, tuple[int, ...]]  # (stream, index, augmentation seed)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from non-negative integers (hashing through numpy's SeedSequence)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1


@functools.lru_cache(maxsize=16)
def _order(n: int, seed: int, stream: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, TAG_ORDER, stream, epoch]).permutation(n)


def stream_index(n: int, position: int, *, seed: int, stream: int) -> int:
    """Sample at ``position`` of a stream that cycles a dataset of ``n``, reshuffled every pass."""
    epoch, i = divmod(position, n)
    return int(_order(n, seed, stream, epoch)[i])


def step_keys(
    step: int,
    *,
    sizes: Sequence[int],
    batches: Sequence[int],
    seed: int,
    rank: int = 0,
    world_size: int = 1,
) -> list[StepKey]:
    """The ``(stream, index, augmentation seed)`` of every sample this rank loads at ``step``.

    Labeled samples come first, then unlabeled ones. Position ``(step * world + rank) * batch + slot``
    of each stream is this rank's slot; its augmentation seed is ``(seed, stream, position)``.
    """
    keys = []
    for stream, (n, b) in enumerate(zip(sizes, batches)):
        for slot in range(b):
            pos = (step * world_size + rank) * b + slot
            keys.append((stream, stream_index(n, pos, seed=seed, stream=stream), (seed, TAG_AUG, stream, pos)))
    return keys


class StepDataset(torch.utils.data.Dataset):
    """Loads and augments one sample per ``(stream, index, seed)`` key; safe in DataLoader workers."""

    def __init__(self, labeled: Any, unlabeled: Any | None, transform: TrainTransform) -> None:
        self.streams = (labeled, unlabeled)
        self.transform = transform

    def __len__(self) -> int:
        return sum(len(s) for s in self.streams if s is not None)

    def __getitem__(self, key: StepKey) -> dict[str, Any]:
        stream, index, seed = key
        sample = self.streams[stream][index]
        if stream == LABELED and sample.get("label") is None:
            raise DatasetError(f"labeled training sample {sample.get('name')!r} has no label")
        if stream == UNLABELED:
            sample = {**sample, "label": None}  # never train on labels of the unlabeled split
        return self.transform(sample, np.random.default_rng(list(seed)))


class StepSampler(torch.utils.data.Sampler):
    """Yields the key list of each step in ``[start, stop)`` (use as ``batch_sampler``)."""

    def __init__(self, *, start: int, stop: int, **key_kwargs: Any) -> None:
        self.start, self.stop = start, stop
        self.key_kwargs = key_kwargs

    def __iter__(self) -> Iterator[list[StepKey]]:
        for step in range(self.start, self.stop):
            yield step_keys(step, **self.key_kwargs)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)
