"""The data of a training run: its splits opened through :func:`m3l_core.data.open_dataset` and checked."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from m3l_core import distributed as dist_utils
from m3l_core.data.check import check_dataset
from m3l_core.data.datasets import open_dataset, split_path
from m3l_core.data.folder import ClassInfo, DatasetError
from m3l_core.train.config import DataConfig, TrainConfig


def open_split(data: DataConfig, which: str, *, labeled: bool | None = None, transform: Any = None) -> Any:
    """One split (``train_labeled``, ``train_unlabeled`` or ``val``) of the configured dataset, raw samples."""
    return open_dataset(data, getattr(data, which), labeled=labeled, transform=transform)


@dataclass
class TrainData:
    """The opened and checked splits of a run."""

    labeled: Any
    unlabeled: Any | None
    val: Any | None
    classes: ClassInfo


def open_train_data(cfg: TrainConfig, *, is_main: bool = True) -> TrainData:
    """Open the splits the run needs and check every listed frame (``data.check``) before step 1.

    Only the main rank reads the files; under DDP the other ranks learn the verdict.
    """
    d = cfg.data
    labeled = open_split(d, "train_labeled", labeled=True)
    unlabeled = open_split(d, "train_unlabeled", labeled=False) if cfg.uses_unlabeled else None
    val = open_split(d, "val", labeled=True) if cfg.eval_every > 0 else None
    if len(labeled) == 0:
        raise DatasetError(f"{split_path(d, d.train_labeled)}: split {d.train_labeled!r} has no samples")
    if unlabeled is not None and len(unlabeled) == 0:
        raise DatasetError(f"{split_path(d, d.train_unlabeled)}: split {d.train_unlabeled!r} has no samples "
                           f"(framework {cfg.framework} needs unlabeled data; or set unlabeled_batch=0 for m3l)")
    if val is not None and len(val) == 0:
        raise DatasetError(f"{split_path(d, d.val)}: validation split {d.val!r} has no samples "
                           "(set eval_every=0 to train without validation)")
    error = ""
    if is_main:
        try:
            for name, ds in ((d.train_labeled, labeled), (d.train_unlabeled, unlabeled), (d.val, val)):
                if ds is not None:
                    check_dataset(ds, d.check, what=f"split {name!r}")
        except DatasetError as e:
            error = str(e)
    failed = torch.tensor([float(bool(error))])
    if dist_utils.get_world_size() > 1:
        dist_utils.all_reduce_sum(failed)
    if error:
        raise DatasetError(error)
    if failed.item() > 0:
        raise DatasetError(f"{d.root}: the dataset check failed on rank 0 (see its message)")
    return TrainData(labeled=labeled, unlabeled=unlabeled, val=val, classes=labeled.classes)
