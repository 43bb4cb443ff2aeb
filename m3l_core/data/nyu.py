"""Convert NYU Depth v2's official ``nyu_depth_v2_labeled.mat`` to the folder format.

    python -m m3l_core.data.nyu --mat nyu_depth_v2_labeled.mat --out data/nyu13 \\
        --mapping config/nyu_names_to_13.yaml \\
        [--train-indices train.txt --test-indices test.txt]

The .mat is MATLAB v7.3 (HDF5) and read with h5py. MATLAB stores arrays
transposed: ``images`` is (N, 3, W, H) uint8, ``depths`` (N, W, H) float
metres, ``labels`` (N, W, H) with 894 raw classes (0 = unlabeled), and
``names`` holds the raw class names.

The mapping file (YAML) maps raw classes to target classes in one of two forms:

* structured::

      names: [bed, books, ...]     # target classes; id = position
      palette: [[r, g, b], ...]    # optional
      key: name                    # raw classes by name (case-insensitive) or `id`
      default: objects             # target for unlisted raw classes; 255 / ignore to ignore
      map: {wall: wall, desk: table, ...}   # values are target names or ids

* flat ``{raw_id: target_id}`` (e.g. exported from ``classMapping40.mat``);
  target names then come from ``--classes classes.yaml``. Unlisted raw ids
  become 255.

A v7.3 ``.mat`` with ``mapClass`` (and ``className``) is also read with h5py.
A v5 ``.mat`` needs scipy, which is optional.

Frames are written as ``nyu_0001`` ... (1-based, as MATLAB indexes them).
``--train-indices``/``--test-indices`` take the official 795/654 split
(``trainNdxs``/``testNdxs`` of ``splits.mat``) as a YAML or plain-text list of
1-based indices, and produce ``splits/train.txt`` and ``splits/test.txt``.
Without them every frame goes to ``splits/train.txt`` and there is no test
split. Make labeled/unlabeled subsets of ``train`` with
``python -m m3l_core.data.splits``.
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from m3l_core.data.folder import ClassInfo, DatasetError, load_classes, save_classes, validate_classes, write_sample, write_split
from m3l_core.vocab import IGNORE_INDEX

log = logging.getLogger(__name__)
IGNORE = IGNORE_INDEX


# --- reading the .mat ---------------------------------------------------------------------------


def _h5py():
    import h5py  # local import: only the converter needs it

    return h5py


def _mat_strings(f: Any, key: str, path: Path) -> list[str]:
    """A MATLAB cell array of strings in a v7.3 file: references to uint16 char arrays."""
    h5py = _h5py()
    if key not in f:
        raise DatasetError(f"{path}: no '{key}' dataset")
    out = []
    for ref in np.asarray(f[key]).ravel():
        if not isinstance(ref, h5py.Reference):
            raise DatasetError(f"{path}: '{key}' is not a cell array of strings")
        chars = np.asarray(f[ref]).ravel()
        out.append("".join(chr(int(c)) for c in chars if c))
    return out


def _open_mat(path: Path):
    h5py = _h5py()
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{path}: not an HDF5 (MATLAB v7.3) file: {e}") from e


# --- class mapping ------------------------------------------------------------------------------


def _norm(name: str) -> str:
    return " ".join(str(name).strip().lower().split())


def _target_id(value: Any, info: ClassInfo, where: str) -> int:
    if isinstance(value, bool):
        raise DatasetError(f"{where}: target {value!r} is not a class name or id")
    if isinstance(value, int):
        if value == IGNORE or 0 <= value < info.num_classes:
            return value
        raise DatasetError(f"{where}: target id {value} outside 0..{info.num_classes - 1} (or 255 = ignore)")
    if isinstance(value, str):
        if value.lower() == "ignore":
            return IGNORE
        if value in info.names:
            return info.names.index(value)
    raise DatasetError(f"{where}: target {value!r} is not one of the classes {info.names} (or 'ignore' / 255)")


def _load_mat_mapping(path: Path) -> tuple[dict[int, int], list[str] | None]:
    """``mapClass`` (raw -> 1-based target, 0 = unlabeled) and ``className`` from a .mat."""
    try:
        with _h5py().File(path, "r") as f:
            if "mapClass" not in f:
                raise DatasetError(f"{path}: no 'mapClass' dataset")
            m = np.asarray(f["mapClass"]).ravel()
            names = _mat_strings(f, "className", path) if "className" in f else None
    except OSError:
        try:
            import scipy.io  # optional; classMapping40.mat is a v5 file
        except ImportError as e:
            raise DatasetError(
                f"{path}: MATLAB v5 .mat needs scipy (pip install scipy), or convert it to a YAML "
                "{raw_id: target_id} file and pass --classes"
            ) from e
        d = scipy.io.loadmat(str(path))
        if "mapClass" not in d:
            raise DatasetError(f"{path}: no 'mapClass' variable")
        m = np.asarray(d["mapClass"]).ravel()
        names = [str(np.asarray(c).ravel()[0]) for c in np.asarray(d["className"]).ravel()] if "className" in d else None
    # mapClass is 1-based (0 = unlabeled); our ids are 0-based.
    return {i + 1: (int(t) - 1 if t > 0 else IGNORE) for i, t in enumerate(m)}, names


def load_mapping(
    path: str | Path,
    raw_names: Sequence[str],
    *,
    classes: str | Path | None = None,
) -> tuple[np.ndarray, ClassInfo, np.ndarray]:
    """Build ``lut`` (raw id -> uint8 target id, 255 ignore), the target :class:`ClassInfo`
    and ``defaulted`` (bool per raw id: its target came from ``default``, not from ``map``).

    ``raw_names[i]`` is the name of raw class ``i + 1``. ``lut[0]`` is always 255.
    ``classes`` (a classes.yaml) supplies target names for a flat or .mat mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: mapping file not found")
    n_raw = len(raw_names)
    lut = np.full(n_raw + 1, IGNORE, np.uint8)
    info = load_classes(classes) if classes is not None else None

    if path.suffix == ".mat":
        id_map, mat_names = _load_mat_mapping(path)
        if info is None:
            if mat_names is None:
                raise DatasetError(f"{path}: has no 'className'; pass --classes classes.yaml for the target names")
            info = validate_classes(ClassInfo(names=mat_names), path)
        spec: dict[Any, Any] = {"map": id_map}
        key, default = "id", IGNORE
    else:
        try:
            spec = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise DatasetError(f"{path}: cannot parse YAML: {e}") from e
        if not isinstance(spec, dict) or not spec:
            raise DatasetError(f"{path}: expected a mapping (structured or flat {{raw_id: target_id}})")
        if all(isinstance(k, int) for k in spec):  # flat {raw_id: target_id}
            if info is None:
                raise DatasetError(f"{path}: a flat {{raw_id: target_id}} mapping needs --classes classes.yaml for target names")
            spec = {"map": spec}
            key, default = "id", IGNORE
        else:
            unknown = set(spec) - {"names", "palette", "key", "default", "map"}
            if unknown:
                raise DatasetError(f"{path}: unknown field(s) {sorted(unknown)}")
            if info is None:
                if "names" not in spec:
                    raise DatasetError(f"{path}: field 'names' (target classes) is missing")
                pal = spec.get("palette") or []
                if not isinstance(spec["names"], list) or not isinstance(pal, list):
                    raise DatasetError(f"{path}: fields 'names' and 'palette' must be lists")
                info = validate_classes(ClassInfo(names=spec["names"], palette=[tuple(c) for c in pal]), path)
            key = spec.get("key", "name")
            if key not in ("name", "id"):
                raise DatasetError(f"{path}: field 'key' must be 'name' or 'id', got {key!r}")
            default = _target_id(spec.get("default", IGNORE), info, f"{path}: field 'default'")
            if not isinstance(spec.get("map"), dict):
                raise DatasetError(f"{path}: field 'map' must be a mapping")

    lut[1:] = default
    defaulted = np.ones(n_raw + 1, bool)
    if key == "id":
        for raw, tgt in spec["map"].items():
            if not isinstance(raw, int) or not 1 <= raw <= n_raw:
                raise DatasetError(f"{path}: raw id {raw!r} outside 1..{n_raw}")
            lut[raw] = _target_id(tgt, info, f"{path}: map[{raw}]")
            defaulted[raw] = False
    else:
        by_name: dict[str, list[int]] = {}
        for i, n in enumerate(raw_names):
            by_name.setdefault(_norm(n), []).append(i + 1)
        missing = []
        for raw, tgt in spec["map"].items():
            t = _target_id(tgt, info, f"{path}: map[{raw!r}]")
            ids = by_name.get(_norm(raw))
            if not ids:
                missing.append(str(raw))
                continue
            lut[ids] = t
            defaulted[ids] = False
        if missing:
            log.info("%s: %d mapped name(s) not among the %d raw classes: %s", path, len(missing), n_raw, ", ".join(missing))
    lut[0] = IGNORE
    defaulted[0] = False
    return lut, info, defaulted


def read_indices(path: str | Path, *, base: int = 1) -> list[int]:
    """A list of frame indices from YAML (list, or a one-key mapping to a list) or plain text.

    Returns 0-based indices; ``base`` is the file's first index (1 for MATLAB).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: indices file not found")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    if isinstance(data, dict) and len(data) == 1:
        data = next(iter(data.values()))
    if isinstance(data, int) and not isinstance(data, bool):
        data = [data]
    if not (isinstance(data, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in data)):
        tokens = [t for t in re.split(r"[\s,\[\]]+", re.sub(r"#.*", "", text)) if t and t != "-"]
        try:
            data = [int(t) for t in tokens]
        except ValueError as e:
            raise DatasetError(f"{path}: expected a list of integer frame indices: {e}") from e
    out = [v - base for v in data]
    if len(set(out)) != len(out):
        raise DatasetError(f"{path}: duplicate indices")
    return out


# --- conversion ---------------------------------------------------------------------------------


def frame_name(i: int) -> str:
    """Name of 0-based frame ``i``: ``nyu_0001`` for the first (1-based like MATLAB)."""
    return f"nyu_{i + 1:04d}"


def convert_nyu(
    mat: str | Path,
    out: str | Path,
    mapping: str | Path,
    *,
    classes: str | Path | None = None,
    train_indices: str | Path | None = None,
    test_indices: str | Path | None = None,
    index_base: int = 1,
    depth_format: str = "png",  # "png": 16-bit mm (half the size); "npy": float32 metres (lossless)
    limit: int | None = None,  # convert only the first N frames (for quick checks)
) -> dict[str, Any]:
    """Write the labeled NYU frames to ``out`` in the folder format; returns a summary dict."""
    from tqdm import tqdm

    mat, out = Path(mat), Path(out)
    if depth_format not in ("png", "npy"):
        raise ValueError(f"depth_format must be 'png' or 'npy', got {depth_format!r}")
    if (train_indices is None) != (test_indices is None):
        raise DatasetError("pass both --train-indices and --test-indices, or neither")
    with _open_mat(mat) as f:
        for k in ("images", "depths", "labels", "names"):
            if k not in f:
                raise DatasetError(f"{mat}: no '{k}' dataset; is this nyu_depth_v2_labeled.mat?")
        images, depths, labels = f["images"], f["depths"], f["labels"]
        if images.ndim != 4 or images.shape[1] != 3:
            raise DatasetError(f"{mat}: 'images' must be (N, 3, W, H), got {images.shape}")
        n, _, w, h = images.shape
        if depths.shape != (n, w, h) or labels.shape != (n, w, h):
            raise DatasetError(f"{mat}: 'depths' {depths.shape} and 'labels' {labels.shape} must be {(n, w, h)} like 'images'")
        raw_names = _mat_strings(f, "names", mat)
        lut, info, defaulted = load_mapping(mapping, raw_names, classes=classes)
        count = n if limit is None else min(n, int(limit))

        splits: dict[str, list[str]] = {}
        if train_indices is not None:
            for split, p in (("train", train_indices), ("test", test_indices)):
                idx = read_indices(p, base=index_base)
                bad = [i + index_base for i in idx if not 0 <= i < n]
                if bad:
                    raise DatasetError(f"{p}: indices {bad[:5]} outside {index_base}..{n - 1 + index_base}")
                splits[split] = [frame_name(i) for i in sorted(idx) if i < count]
            both = set(splits["train"]) & set(splits["test"])
            if both:
                raise DatasetError(f"{train_indices}, {test_indices}: {len(both)} frame(s) in both, e.g. {sorted(both)[0]}")
        else:
            splits["train"] = [frame_name(i) for i in range(count)]

        out.mkdir(parents=True, exist_ok=True)
        save_classes(out / "classes.yaml", info)
        hist = np.zeros(256, np.int64)
        default_pixels = 0
        for i in tqdm(range(count), desc="nyu", unit="frame", disable=None):
            rgb = np.ascontiguousarray(np.asarray(images[i]).transpose(2, 1, 0))
            depth = np.asarray(depths[i], np.float32).T
            raw = np.asarray(labels[i]).T.astype(np.int64)
            if raw.max(initial=0) > len(raw_names) or raw.min(initial=0) < 0:
                raise DatasetError(f"{mat}: frame {i + 1} has raw labels outside 0..{len(raw_names)} (the 'names' count)")
            label = lut[raw]
            hist += np.bincount(label.ravel(), minlength=256)
            default_pixels += int(defaulted[raw].sum())
            if depth_format == "png":
                mm = np.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0) * 1000.0
                d = np.clip(np.rint(mm), 0, 65535).astype(np.uint16)
                d[(mm > 0) & (d == 0)] = 1  # a valid reading never becomes the invalid code 0
                depth = d
            write_sample(out, frame_name(i), rgb=rgb, depth=depth, label=label)
        for split, names in splits.items():
            write_split(out, split, names)

    summary = {
        "frames": count,
        "splits": {k: len(v) for k, v in splits.items()},
        "classes": info.names,
        "pixels_per_class": {name: int(hist[c]) for c, name in enumerate(info.names)},
        "ignored_pixels": int(hist[IGNORE]),
        "default_pixels": int(default_pixels),  # labeled pixels whose raw class was not listed in the mapping
        "out": str(out),
    }
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m m3l_core.data.nyu", description=__doc__.split("\n")[0])
    ap.add_argument("--mat", required=True, type=Path, help="nyu_depth_v2_labeled.mat (HDF5)")
    ap.add_argument("--out", required=True, type=Path, help="output dataset root (folder format)")
    ap.add_argument("--mapping", required=True, type=Path, help="class mapping YAML (or .mat with mapClass)")
    ap.add_argument("--classes", type=Path, help="classes.yaml with target names, for flat/.mat mappings")
    ap.add_argument("--train-indices", type=Path, help="official train indices (795), YAML or text")
    ap.add_argument("--test-indices", type=Path, help="official test indices (654), YAML or text")
    ap.add_argument("--index-base", type=int, default=1, choices=(0, 1), help="first index in the indices files (1 = MATLAB)")
    ap.add_argument("--depth-format", default="png", choices=("png", "npy"), help="png: 16-bit mm; npy: float32 metres")
    ap.add_argument("--limit", type=int, help="convert only the first N frames")
    ap.add_argument("--force", action="store_true", help="write into an existing dataset root")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if (args.out / "classes.yaml").exists() and not args.force:
        print(f"error: {args.out / 'classes.yaml'} exists; pass --force to overwrite", file=sys.stderr)
        return 1
    try:
        s = convert_nyu(
            args.mat, args.out, args.mapping,
            classes=args.classes,
            train_indices=args.train_indices,
            test_indices=args.test_indices,
            index_base=args.index_base,
            depth_format=args.depth_format,
            limit=args.limit,
        )
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    total = sum(s["pixels_per_class"].values()) + s["ignored_pixels"]
    print(f"wrote {s['frames']} frames to {s['out']}; splits: "
          + ", ".join(f"{k}={v}" for k, v in s["splits"].items()))
    for name, px in s["pixels_per_class"].items():
        print(f"  {name:>16s} {100.0 * px / max(total, 1):6.2f}% of pixels")
    print(f"  {'(ignore)':>16s} {100.0 * s['ignored_pixels'] / max(total, 1):6.2f}% of pixels")
    print(f"  {100.0 * s['default_pixels'] / max(total, 1):.2f}% of pixels took the mapping's default target")
    if "test" not in s["splits"]:
        print("note: no --train-indices/--test-indices given, so every frame is in splits/train.txt and there is "
              "no test split. For the official 795/654 split pass trainNdxs/testNdxs from splits.mat as lists.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
