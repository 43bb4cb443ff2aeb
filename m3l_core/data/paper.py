"""The paper's datasets, read through the reference implementation's split files.

A split file lists one sample per line as tab-separated paths relative to the
dataset root: ``rgb<TAB>depth<TAB>label`` for a labeled sample and
``rgb<TAB>depth`` for an unlabeled one (both kinds may be mixed). Blank lines
and ``#`` comments are skipped. A line without tabs is split on whitespace.

Both datasets return the project's raw sample dict
(``rgb`` HxWx3 uint8 RGB, ``depth`` HxW float32 metres with NaN invalid,
``label`` HxW uint8 with 255 = ignore or None, ``name``) and expose
``.classes`` (:class:`ClassInfo`) and ``.names``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from m3l_core.data.folder import (
    ClassInfo,
    DatasetError,
    _imread,
    check_sizes,
    read_rgb,
)
from m3l_core.vocab import IGNORE_INDEX

STANFORD_CLASSES = (
    "ceiling", "floor", "wall", "beam", "column", "window", "door",
    "table", "chair", "sofa", "bookcase", "board", "clutter",
)
# The 37 SUN RGB-D classes (Song et al., CVPR 2015), in label order 1..37.
SUNRGBD_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window",
    "bookshelf", "picture", "counter", "blinds", "desk", "shelves", "curtain",
    "dresser", "pillow", "mirror", "floor_mat", "clothes", "ceiling", "books",
    "fridge", "tv", "paper", "towel", "shower_curtain", "box", "whiteboard",
    "person", "night_stand", "toilet", "sink", "lamp", "bathtub", "bag",
)
STANFORD_DEPTH_SCALE = 1.0 / 512.0  # metres per unit
STANFORD_DEPTH_INVALID = 65535
IGNORE = IGNORE_INDEX


def read_pair_list(path: str | Path) -> list[tuple[str, str, str | None]]:
    """Parse a reference split file into ``(rgb, depth, label_or_None)`` relative paths."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: split file not found")
    entries: list[tuple[str, str, str | None]] = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [p.strip() for p in line.split("\t")] if "\t" in line else line.split()
        if len(parts) not in (2, 3) or not all(parts):
            raise DatasetError(
                f"{path}:{lineno}: expected 'rgb<TAB>depth[<TAB>label]', got {len(parts)} field(s): {line!r}"
            )
        entries.append((parts[0], parts[1], parts[2] if len(parts) == 3 else None))
    return entries


class _PairListDataset(torch.utils.data.Dataset):
    """Shared logic: a split file of relative paths, per-dataset depth and label decoding."""

    classes: ClassInfo

    def __init__(self, root: str | Path, split_file: str | Path, transform: Callable[[dict], Any] | None) -> None:
        self.root = Path(root)
        self.split_file = Path(split_file)
        self.transform = transform
        self.entries = read_pair_list(self.split_file)
        # A sample's name is its rgb path without extension: unique and traceable.
        self.names = [str(Path(rgb).with_suffix("")) for rgb, _, _ in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def _read_depth(self, path: Path) -> np.ndarray:
        raise NotImplementedError

    def _read_label(self, path: Path) -> np.ndarray:
        raise NotImplementedError

    def load(self, i: int) -> dict[str, Any]:
        """The raw sample dict, ignoring ``transform``."""
        rgb_rel, depth_rel, label_rel = self.entries[i]
        rgb_p, depth_p = self.root / rgb_rel, self.root / depth_rel
        rgb = read_rgb(rgb_p)
        depth = self._read_depth(depth_p)
        files = {rgb_p: rgb, depth_p: depth}
        label = None
        if label_rel is not None:
            label_p = self.root / label_rel
            label = self._read_label(label_p)
            files[label_p] = label
        check_sizes(files)
        return {"rgb": rgb, "depth": depth, "label": label, "name": self.names[i]}

    def __getitem__(self, i: int) -> Any:
        sample = self.load(i)
        return self.transform(sample) if self.transform is not None else sample


def _read_uint16(path: Path) -> np.ndarray:
    d = _imread(path, "depth")
    if d.dtype != np.uint16 or d.ndim != 2:
        raise DatasetError(f"{path}: depth must be a single-channel 16-bit PNG, got {d.dtype} shape {d.shape}")
    return d


def stanford_depth_to_metres(raw: np.ndarray) -> np.ndarray:
    """Stanford 2D-3D-S depth: uint16 in 1/512 m; 65535 (no return) and 0 are invalid -> NaN."""
    out = raw.astype(np.float32) * np.float32(STANFORD_DEPTH_SCALE)
    out[(raw == STANFORD_DEPTH_INVALID) | (raw == 0)] = np.nan
    return out


def stanford_label_lut(labels: list[str]) -> np.ndarray:
    """Per entry of ``semantic_labels.json``, the 13-class id (255 for ``<UNK>`` and unknown names).

    Entries look like ``"chair_1_office_2_area_1"``; the class is the text
    before the first underscore. One extra trailing entry maps colour indices
    past the end of the list (e.g. the black/grey "no label" colours) to 255.
    """
    lut = np.full(len(labels) + 1, IGNORE, np.uint8)
    for i, s in enumerate(labels):
        cls = str(s).split("_", 1)[0]
        if cls in STANFORD_CLASSES:
            lut[i] = STANFORD_CLASSES.index(cls)
    return lut


def stanford_decode_label(bgr: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """24-bit colour label (as cv2 reads it, BGR) -> uint8 class ids via ``r*65536 + g*256 + b``."""
    b, g, r = (bgr[..., k].astype(np.int64) for k in range(3))
    idx = r * 65536 + g * 256 + b
    idx = np.minimum(idx, len(lut) - 1)  # out-of-list colours hit the trailing 255 entry
    return lut[idx]


class StanfordIndoor(_PairListDataset):
    """Stanford 2D-3D-S (the paper's "Stanford Indoor"), 13 classes.

    Depth PNGs are uint16 at 1/512 m with 65535 invalid. Semantic PNGs encode
    an index into ``semantic_labels.json`` as a 24-bit colour; the index's
    name prefix gives the class, and ``<UNK>`` or out-of-range indices are 255.
    """

    def __init__(
        self,
        root: str | Path,
        split_file: str | Path,
        transform: Callable[[dict], Any] | None = None,
        *,
        semantic_labels: str | Path | None = None,  # default <root>/semantic_labels.json
    ) -> None:
        super().__init__(root, split_file, transform)
        self.classes = ClassInfo(names=list(STANFORD_CLASSES))
        path = Path(semantic_labels) if semantic_labels is not None else self.root / "semantic_labels.json"
        if not path.is_file():
            raise DatasetError(f"{path}: semantic_labels.json not found (pass semantic_labels=PATH)")
        try:
            labels = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise DatasetError(f"{path}: cannot parse JSON: {e}") from e
        if not isinstance(labels, list):
            raise DatasetError(f"{path}: expected a JSON list of label strings")
        self.semantic_labels_path = path
        self.lut = stanford_label_lut(labels)

    def _read_depth(self, path: Path) -> np.ndarray:
        return stanford_depth_to_metres(_read_uint16(path))

    def _read_label(self, path: Path) -> np.ndarray:
        img = _imread(path, "label")
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] < 3:
            raise DatasetError(f"{path}: Stanford label must be a 24-bit colour PNG, got {img.dtype} shape {img.shape}")
        return stanford_decode_label(img[..., :3], self.lut)


def sunrgbd_depth_to_metres(raw: np.ndarray, *, bitshift: bool = True) -> np.ndarray:
    """SUN RGB-D depth PNG -> float32 metres, 0 invalid -> NaN.

    The dataset stores millimetres rotated left by 3 bits; the SUN RGB-D
    toolbox (``read3dPoints.m``) undoes it with
    ``bitor(bitshift(d, -3), bitshift(d, 16-3))``, i.e. ``(d >> 3) | (d << 13)``
    in uint16, then divides by 1000. With ``bitshift=False`` the PNG is taken
    as plain millimetres (for copies that were already decoded).
    """
    d = raw.astype(np.uint16)
    if bitshift:
        d = (d >> np.uint16(3)) | (d << np.uint16(13))
    out = d.astype(np.float32) * np.float32(1e-3)
    out[d == 0] = np.nan
    return out


def sunrgbd_decode_label(raw: np.ndarray) -> np.ndarray:
    """SUN RGB-D 37-class label (0 void, 1..37) -> uint8 (255 void, 0..36)."""
    out = raw.astype(np.int64) - 1
    out[raw == 0] = IGNORE
    return out.astype(np.uint8)


class SunRGBD(_PairListDataset):
    """SUN RGB-D, 37 classes. Labels are 0 = void, 1..37 (mapped to 255, 0..36)."""

    def __init__(
        self,
        root: str | Path,
        split_file: str | Path,
        transform: Callable[[dict], Any] | None = None,
        *,
        depth_bitshift: bool = True,  # False for copies whose PNGs already hold plain millimetres
    ) -> None:
        super().__init__(root, split_file, transform)
        self.classes = ClassInfo(names=list(SUNRGBD_CLASSES))
        self.depth_bitshift = depth_bitshift

    def _read_depth(self, path: Path) -> np.ndarray:
        return sunrgbd_depth_to_metres(_read_uint16(path), bitshift=self.depth_bitshift)

    def _read_label(self, path: Path) -> np.ndarray:
        raw = _imread(path, "label")
        if raw.dtype not in (np.uint8, np.uint16) or raw.ndim != 2:
            raise DatasetError(f"{path}: SUN RGB-D label must be a single-channel PNG of ids 0..37, got {raw.dtype} shape {raw.shape}")
        if raw.max(initial=0) > len(SUNRGBD_CLASSES):
            bad = np.unique(raw[raw > len(SUNRGBD_CLASSES)])[:10].tolist()
            raise DatasetError(f"{path}: label values {bad} are outside 0..37 (0 = void)")
        return sunrgbd_decode_label(raw)
