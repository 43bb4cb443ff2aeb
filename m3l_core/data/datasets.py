"""One factory for every dataset format: ``open_dataset(config, split)``.

``config`` is anything with ``format``, ``root``, ``semantic_labels`` and ``depth_bitshift``
attributes: the trainer's ``DataConfig`` or a :class:`DatasetSpec` built by a CLI.

* ``folder``: ``split`` is a split name (``ROOT/splits/<split>.txt``).
* ``stanford`` / ``sun``: ``split`` is the reference's split file, relative to the root or absolute.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from m3l_core.data.folder import DatasetError, FolderDataset

DATA_FORMATS = ("folder", "stanford", "sun")


@dataclass
class DatasetSpec:
    """Where a dataset is and how to read it (the subset of the trainer's ``DataConfig`` a reader needs)."""

    root: str
    format: str = "folder"
    semantic_labels: str = ""  # stanford only; default <root>/semantic_labels.json
    depth_bitshift: bool = True  # sun only; False if the depth PNGs hold plain millimetres


def split_path(config: Any, split: str) -> Path:
    """The file listing ``split``: ``splits/<split>.txt`` (folder) or the split file itself (stanford/sun)."""
    root = Path(config.root)
    if config.format == "folder":
        return root / "splits" / f"{split}.txt"
    return Path(split) if Path(split).is_absolute() else root / split


def open_dataset(
    config: Any,
    split: str,
    *,
    labeled: bool | None = None,
    transform: Callable[[dict], Any] | None = None,
) -> Any:
    """One split of the configured dataset (raw samples unless ``transform``); errors name the path.

    ``labeled`` only applies to the folder format (default: every split but ``train_unlabeled``);
    the paper formats are labeled line by line in their split files.
    """
    if config.format not in DATA_FORMATS:
        raise DatasetError(f"{config.root}: unknown dataset format {config.format!r}; one of {DATA_FORMATS}")
    if not config.root:
        raise DatasetError("no dataset given: pass --data DIR (or set data.root)")
    root = Path(config.root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset directory not found")
    if config.format == "folder":
        return FolderDataset(root, split, labeled=labeled, transform=transform)
    from m3l_core.data.paper import StanfordIndoor, SunRGBD

    path = split_path(config, split)
    if config.format == "stanford":
        return StanfordIndoor(root, path, transform, semantic_labels=config.semantic_labels or None)
    return SunRGBD(root, path, transform, depth_bitshift=config.depth_bitshift)


def available_splits(config: Any) -> list[str]:
    """Every split of a dataset: folder split names, or the ``*.txt`` split files under ``ROOT/splits``."""
    splits = Path(config.root) / "splits"
    if config.format == "folder":
        return sorted(str(p.relative_to(splits).with_suffix("")) for p in splits.rglob("*.txt"))
    return sorted(str(p.relative_to(config.root)) for p in splits.rglob("*.txt"))
