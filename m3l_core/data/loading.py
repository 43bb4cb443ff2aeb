"""DataLoader plumbing: dataset errors leave workers as one clean line, one CPU thread per worker.

A :class:`~m3l_core.data.folder.DatasetError` raised in a DataLoader worker would reach the user
as a long "Caught DatasetError in DataLoader worker process" traceback. :func:`make_loader` wraps
the dataset so a worker returns the error as a value instead, and :func:`raise_failure` re-raises
it in the main process with its own one-line message (which names the file).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from m3l_core.data.folder import DatasetError


@dataclass(frozen=True)
class LoadFailure:
    """A sample (and so its batch) that could not be loaded; ``message`` names the file."""

    message: str


class _CatchErrors(torch.utils.data.Dataset):
    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Any:
        try:
            return self.dataset[key]
        except DatasetError as e:
            return LoadFailure(" ".join(str(e).split("\n")))


class _CollateOrFail:
    """Collate, unless a sample failed: then the batch is that failure (picklable for spawn)."""

    def __init__(self, collate_fn: Callable[[Sequence[Any]], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, samples: Sequence[Any]) -> Any:
        failed = next((s for s in samples if isinstance(s, LoadFailure)), None)
        return failed if failed is not None else self.collate_fn(samples)


def raise_failure(batch: Any) -> Any:
    """Re-raise a worker's :class:`LoadFailure` as a :class:`DatasetError`; otherwise return ``batch``."""
    if isinstance(batch, LoadFailure):
        raise DatasetError(batch.message)
    return batch


def worker_init(worker_id: int) -> None:
    """One CPU thread per worker (torch already does this for itself; OpenCV does not)."""
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def make_loader(dataset: Any, *, collate_fn: Callable[[Sequence[Any]], Any], num_workers: int = 0,
                **kwargs: Any) -> torch.utils.data.DataLoader:
    """A DataLoader whose batches are either collated samples or a :class:`LoadFailure`."""
    return torch.utils.data.DataLoader(_CatchErrors(dataset), collate_fn=_CollateOrFail(collate_fn),
                                       num_workers=num_workers, worker_init_fn=worker_init if num_workers else None,
                                       **kwargs)
