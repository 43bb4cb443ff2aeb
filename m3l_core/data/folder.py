"""The folder format users put their own RGB-D data in.

Layout of a dataset root::

    rgb/<name>.png|.jpg        8-bit colour (any image cv2 reads; stored BGR on disk as usual)
    depth/<name>.png           16-bit PNG, millimetres, 0 = invalid
    depth/<name>.npy           or float32 metres; 0/NaN/Inf = invalid
    labels/<name>.png          8-bit class ids, ``ignore_index`` (255) = ignore
    classes.yaml               names, palette, ignore_index
    splits/<split>.txt         one sample name per line, no extension; blank lines and # comments ignored

The documented splits are ``train_labeled``, ``train_unlabeled``, ``val`` and
``test``; any other ``splits/<name>.txt`` (e.g. ``train``, the source list for
:mod:`m3l_core.data.splits`) works too. A name may contain ``/`` to use
sub-directories (``rgb/area1/0001.png``).

Every sample comes back in the raw convention used across the project:
``dict(rgb=HxWx3 uint8 RGB, depth=HxW float32 metres (NaN invalid),
label=HxW uint8 or None, name=str)``. Every problem with the data raises
:class:`DatasetError` whose message names the offending file(s).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
import yaml

from m3l_core.preprocess import depth_to_metres

log = logging.getLogger(__name__)

SPLITS = ("train_labeled", "train_unlabeled", "val", "test")
RGB_EXTS = (".png", ".jpg", ".jpeg")
DEPTH_EXTS = (".png", ".npy")


class DatasetError(ValueError):
    """Bad or missing dataset files. The message always names the file(s)."""


def default_palette(n: int) -> list[tuple[int, int, int]]:
    """The PASCAL-VOC bit-interleaved colour map: distinct, deterministic colours for n classes."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i + 1  # skip black so no class looks like "nothing"
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return out


@dataclass
class ClassInfo:
    """Class names, display colours and the label value that means "ignore"."""

    names: list[str]
    palette: list[tuple[int, int, int]] = field(default_factory=list)  # empty -> default_palette
    ignore_index: int = 255

    def __post_init__(self) -> None:
        self.names = [str(n) for n in self.names]
        if not self.palette:
            self.palette = default_palette(len(self.names))
        self.palette = [tuple(int(v) for v in c) for c in self.palette]

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "palette": [list(c) for c in self.palette], "ignore_index": self.ignore_index}


def validate_classes(info: ClassInfo, source: str | Path = "classes") -> ClassInfo:
    """Check a ClassInfo; errors name ``source`` and the field."""
    names = info.names
    if not names:
        raise DatasetError(f"{source}: field 'names' must be a non-empty list of class names")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise DatasetError(f"{source}: field 'names' has duplicates {dup}")
    if len(info.palette) != len(names):
        raise DatasetError(
            f"{source}: field 'palette' has {len(info.palette)} colours but 'names' has {len(names)} classes"
        )
    for i, c in enumerate(info.palette):
        if len(c) != 3 or any(not 0 <= v <= 255 for v in c):
            raise DatasetError(f"{source}: field 'palette' entry {i} ({names[i]!r}) must be [r, g, b] in 0..255, got {list(c)}")
    ign = info.ignore_index
    if not isinstance(ign, int) or not 0 <= ign <= 255:
        raise DatasetError(f"{source}: field 'ignore_index' must be an integer in 0..255 (labels are 8-bit), got {ign!r}")
    if ign < len(names):
        raise DatasetError(
            f"{source}: field 'ignore_index' = {ign} collides with class id {ign} ({names[ign]!r}); "
            f"it must be >= the number of classes ({len(names)})"
        )
    return info


def load_classes(path: str | Path) -> ClassInfo:
    """Read and validate ``classes.yaml`` (``names``, optional ``palette``, ``ignore_index``)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: classes file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise DatasetError(f"{path}: cannot parse YAML: {e}") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a mapping with 'names', 'palette', 'ignore_index'")
    unknown = set(data) - {"names", "palette", "ignore_index"}
    if unknown:
        raise DatasetError(f"{path}: unknown field(s) {sorted(unknown)}; expected names, palette, ignore_index")
    names = data.get("names")
    if not isinstance(names, list) or not all(isinstance(n, (str, int)) for n in names):
        raise DatasetError(f"{path}: field 'names' must be a list of strings")
    palette = data.get("palette") or []
    if not isinstance(palette, list) or not all(
        isinstance(c, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in c) for c in palette
    ):
        raise DatasetError(f"{path}: field 'palette' must be a list of [r, g, b] integer triples")
    if palette and len(palette) != len(names):
        raise DatasetError(f"{path}: field 'palette' has {len(palette)} colours but 'names' has {len(names)} classes")
    ignore = data.get("ignore_index", 255)
    if isinstance(ignore, bool) or not isinstance(ignore, int):
        raise DatasetError(f"{path}: field 'ignore_index' must be an integer, got {ignore!r}")
    for i, c in enumerate(palette):  # check before ClassInfo coerces to tuples of int
        if len(c) != 3 or any(not 0 <= v <= 255 for v in c):
            raise DatasetError(f"{path}: field 'palette' entry {i} must be [r, g, b] in 0..255, got {c}")
    return validate_classes(ClassInfo(names=list(names), palette=[tuple(c) for c in palette], ignore_index=ignore), path)


def save_classes(path: str | Path, info: ClassInfo) -> None:
    """Write ``classes.yaml`` (validated first)."""
    path = Path(path)
    validate_classes(info, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    d = info.to_dict()
    # One colour per line keeps the file readable.
    lines = ["names: " + yaml.safe_dump(d["names"], default_flow_style=True, width=1 << 30).strip()]
    lines.append("palette:")
    lines += [f"  - [{r}, {g}, {b}]  # {n}" for (r, g, b), n in zip(d["palette"], d["names"])]
    lines.append(f"ignore_index: {d['ignore_index']}")
    path.write_text("\n".join(lines) + "\n")


def read_split(path: str | Path) -> list[str]:
    """Sample names from a split file; blank lines and ``#`` comments are skipped, duplicates rejected."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: split file not found")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read split file: {e}") from e
    names: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        if name in seen:
            raise DatasetError(f"{path}:{lineno}: sample {name!r} already listed on line {seen[name]}")
        if name.startswith("/") or ".." in Path(name).parts:
            raise DatasetError(f"{path}:{lineno}: sample name {name!r} must be relative without '..'")
        seen[name] = lineno
        names.append(name)
    return names


def write_split(root: str | Path, split: str, names: Sequence[str]) -> Path:
    """Write ``splits/<split>.txt``; returns its path."""
    path = Path(root) / "splits" / f"{split}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate sample names")
    path.write_text("".join(f"{n}\n" for n in names))
    return path


# --- image readers (shared with paper.py) -------------------------------------------------------


def _imread(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"{path}: {what} file not found")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DatasetError(f"{path}: cannot decode {what} image (unreadable or corrupt)")
    return img


def read_rgb(path: str | Path) -> np.ndarray:
    """8-bit colour image -> HxWx3 uint8 RGB (alpha dropped)."""
    path = Path(path)
    img = _imread(path, "rgb")
    if img.dtype != np.uint8:
        raise DatasetError(f"{path}: rgb must be 8-bit, got {img.dtype}")
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise DatasetError(f"{path}: rgb must be a 3-channel colour image, got shape {img.shape}")
    return np.ascontiguousarray(img[..., 2::-1])  # BGR(A) -> RGB


def read_depth(path: str | Path) -> np.ndarray:
    """``.png`` 16-bit millimetres or ``.npy`` float metres -> HxW float32 metres, NaN invalid."""
    path = Path(path)
    if path.suffix == ".npy":
        if not path.is_file():
            raise DatasetError(f"{path}: depth file not found")
        try:
            d = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DatasetError(f"{path}: cannot load depth .npy (unreadable or corrupt): {e}") from e
        if d.dtype not in (np.float32, np.float64):
            raise DatasetError(f"{path}: depth .npy must be float32 metres, got dtype {d.dtype}")
    else:
        d = _imread(path, "depth")
        if d.dtype != np.uint16:
            raise DatasetError(f"{path}: depth PNG must be 16-bit millimetres, got {d.dtype} "
                               "(an 8-bit depth PNG has lost its range)")
    if d.ndim == 3 and d.shape[2] == 1:
        d = d[..., 0]
    if d.ndim != 2:
        raise DatasetError(f"{path}: depth must be a single-channel HxW image, got shape {d.shape}")
    return depth_to_metres(d)


def read_label(path: str | Path) -> np.ndarray:
    """8-bit single-channel class-id PNG -> HxW uint8."""
    path = Path(path)
    lab = _imread(path, "label")
    if lab.dtype != np.uint8:
        raise DatasetError(f"{path}: label must be an 8-bit PNG of class ids, got {lab.dtype}")
    if lab.ndim != 2:
        raise DatasetError(f"{path}: label must be single-channel class ids, got shape {lab.shape} "
                           "(a colour-coded label image must be converted to ids first)")
    return lab


def check_sizes(files: dict[Path, np.ndarray]) -> None:
    """All arrays must share H and W; otherwise name every file with its size."""
    sizes = {p: a.shape[:2] for p, a in files.items()}
    if len(set(sizes.values())) > 1:
        desc = ", ".join(f"{p} is {s[1]}x{s[0]}" for p, s in sizes.items())
        raise DatasetError(f"size mismatch (WxH): {desc}")


def check_label_values(label: np.ndarray, num_classes: int, ignore_index: int, path: Path) -> None:
    bad = (label >= num_classes) & (label != ignore_index)
    if bad.any():
        vals = np.unique(label[bad])[:10].tolist()
        raise DatasetError(
            f"{path}: label values {vals} are outside the {num_classes} classes "
            f"(valid ids 0..{num_classes - 1}, ignore {ignore_index})"
        )


def _find(directory: Path, name: str, exts: Sequence[str], what: str) -> Path:
    found = [directory / f"{name}{e}" for e in exts if (directory / f"{name}{e}").is_file()]
    if not found:
        tried = ", ".join(str(directory / f"{name}{e}") for e in exts)
        raise DatasetError(f"{tried}: {what} file not found for sample {name!r}")
    if len(found) > 1:
        raise DatasetError(f"{', '.join(map(str, found))}: ambiguous {what} for sample {name!r}; keep only one")
    return found[0]


class FolderDataset(torch.utils.data.Dataset):
    """One split of a dataset in the folder format.

    ``labeled`` defaults to ``split != "train_unlabeled"``; an unlabeled sample
    has ``label=None`` even if a label file exists. With ``transform`` the
    dataset returns ``transform(sample)`` instead of the raw sample.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        labeled: bool | None = None,
        transform: Callable[[dict], Any] | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.labeled = split != "train_unlabeled" if labeled is None else bool(labeled)
        self.transform = transform
        self.classes = load_classes(self.root / "classes.yaml")
        self.names = read_split(self.root / "splits" / f"{split}.txt")
        if not self.names:
            log.warning("%s: split %r is empty", self.root / "splits" / f"{split}.txt", split)

    def __len__(self) -> int:
        return len(self.names)

    def paths(self, i: int) -> dict[str, Path | None]:
        """The files sample ``i`` is read from (``label`` is None when unlabeled)."""
        name = self.names[i]
        return {
            "rgb": _find(self.root / "rgb", name, RGB_EXTS, "rgb"),
            "depth": _find(self.root / "depth", name, DEPTH_EXTS, "depth"),
            "label": self.root / "labels" / f"{name}.png" if self.labeled else None,
        }

    def load(self, i: int) -> dict[str, Any]:
        """The raw sample dict, ignoring ``transform``."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples in split {self.split!r}")
        p = self.paths(i)
        rgb = read_rgb(p["rgb"])
        depth = read_depth(p["depth"])
        files = {p["rgb"]: rgb, p["depth"]: depth}
        label = None
        if p["label"] is not None:
            label = read_label(p["label"])
            files[p["label"]] = label
        check_sizes(files)
        if label is not None:
            check_label_values(label, self.classes.num_classes, self.classes.ignore_index, p["label"])
        return {"rgb": rgb, "depth": depth, "label": label, "name": self.names[i]}

    def __getitem__(self, i: int) -> Any:
        sample = self.load(i)
        return self.transform(sample) if self.transform is not None else sample


def write_sample(
    root: str | Path,
    name: str,
    *,
    rgb: np.ndarray,
    depth: np.ndarray,
    label: np.ndarray | None = None,
) -> dict[str, Path]:
    """Write one sample in the folder format; returns the written paths.

    ``rgb`` is HxWx3 uint8 RGB (saved as PNG). ``depth`` uint16 millimetres is
    saved as ``depth/<name>.png``, float metres as ``depth/<name>.npy``
    (float32); a stale file of the other depth format is removed so the sample
    stays unambiguous. ``label`` is HxW uint8 class ids.
    """
    root = Path(root)
    rgb = np.asarray(rgb)
    depth = np.asarray(depth)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"sample {name!r}: rgb must be HxWx3 uint8, got shape {rgb.shape} dtype {rgb.dtype}")
    if depth.ndim != 2 or depth.shape != rgb.shape[:2]:
        raise ValueError(f"sample {name!r}: depth must be HxW matching rgb {rgb.shape[:2]}, got {depth.shape}")
    if label is not None:
        label = np.asarray(label)
        if label.shape != rgb.shape[:2] or label.dtype != np.uint8:
            raise ValueError(f"sample {name!r}: label must be HxW uint8 matching rgb, got {label.shape} {label.dtype}")
    out = {"rgb": root / "rgb" / f"{name}.png"}
    if depth.dtype == np.uint16:
        out["depth"], stale = root / "depth" / f"{name}.png", root / "depth" / f"{name}.npy"
    elif depth.dtype in (np.float32, np.float64):
        out["depth"], stale = root / "depth" / f"{name}.npy", root / "depth" / f"{name}.png"
    else:
        raise ValueError(f"sample {name!r}: depth must be uint16 millimetres or float metres, got {depth.dtype}")
    if label is not None:
        out["label"] = root / "labels" / f"{name}.png"
    for p in out.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out["rgb"]), np.ascontiguousarray(rgb[..., ::-1])):
        raise OSError(f"{out['rgb']}: cv2.imwrite failed")
    if depth.dtype == np.uint16:
        if not cv2.imwrite(str(out["depth"]), depth):
            raise OSError(f"{out['depth']}: cv2.imwrite failed")
    else:
        np.save(out["depth"], depth.astype(np.float32))
    stale.unlink(missing_ok=True)
    if label is not None and not cv2.imwrite(str(out["label"]), label):
        raise OSError(f"{out['label']}: cv2.imwrite failed")
    return out
