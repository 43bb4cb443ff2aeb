"""Up-front dataset check: every listed frame, before training or evaluation starts.

    python -m m3l_core.data.check DIR [--format folder|stanford|sun] [--split NAME ...] [--level full|headers]

For each frame it checks that every file exists and has a readable header of the right kind
(8-bit colour RGB, 16-bit single-channel depth PNG or float ``.npy``, single-channel labels), that
RGB, depth and label sizes agree, and (``full``) that label values are within the classes.
Headers are parsed from the first bytes of each file (PNG IHDR, JPEG SOF, NPY header), so only
labels are ever decoded, and only at level ``full``. The trainer and the evaluator run it before
step 1 and stop at the first problem with one line naming the file; this CLI lists them all.
Exit codes: 0 all frames fine, 1 problems found, 2 usage error, 130 Ctrl-C.
"""
from __future__ import annotations

import argparse
import logging
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from m3l_core.cli.common import run_guarded
from m3l_core.data.folder import DatasetError, FolderDataset, check_label_values, read_depth, read_label
from m3l_core.preprocess import depth_units_warning

log = logging.getLogger(__name__)

CHECK_LEVELS = ("full", "headers", "off")
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> channels as cv2.IMREAD_UNCHANGED returns them (palette expands to BGR).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 4, 6: 4}


@dataclass(frozen=True)
class Header:
    """What a file holds, read without decoding the pixels."""

    height: int
    width: int
    channels: int
    dtype: str  # "uint8", "uint16", "float32", ...


def _read_prefix(path: Path, what: str, n: int = 64 * 1024) -> bytes:
    if not path.is_file():
        raise DatasetError(f"{path}: {what} file not found")
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as e:
        raise DatasetError(f"{path}: cannot read {what} file: {e.strerror or e}") from e


def _png_header(data: bytes, path: Path, what: str) -> Header:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise DatasetError(f"{path}: {what} PNG is truncated or corrupt (no IHDR header)")
    width, height, bits, colour = struct.unpack(">IIBB", data[16:26])
    if colour not in _PNG_CHANNELS or width == 0 or height == 0:
        raise DatasetError(f"{path}: {what} PNG header is corrupt (size {width}x{height}, colour type {colour})")
    return Header(height, width, _PNG_CHANNELS[colour], "uint16" if bits == 16 else "uint8")


def _jpeg_header(data: bytes, path: Path, what: str) -> Header:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            bits, height, width, comps = struct.unpack(">BHHB", data[i + 4:i + 10])
            return Header(height, width, 3 if comps == 3 else comps, "uint16" if bits > 8 else "uint8")
        i += 2 + length
    raise DatasetError(f"{path}: {what} JPEG is truncated or corrupt (no frame header in the first "
                       f"{len(data)} bytes)")


def _npy_header(path: Path, what: str) -> Header:
    _read_prefix(path, what, 0)
    try:
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: {what} .npy header is unreadable or corrupt: {e}") from e
    if len(shape) not in (2, 3):
        raise DatasetError(f"{path}: {what} must be HxW, got shape {shape}")
    return Header(shape[0], shape[1], shape[2] if len(shape) == 3 else 1, str(dtype))


def read_header(path: str | Path, what: str = "image") -> Header:
    """Size, channels and sample type of a PNG, JPEG or NPY file from its first bytes."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        return _npy_header(path, what)
    data = _read_prefix(path, what)
    if data.startswith(_PNG_SIG):
        return _png_header(data, path, what)
    if data.startswith(b"\xff\xd8"):
        return _jpeg_header(data, path, what)
    raise DatasetError(f"{path}: {what} is not a PNG or JPEG file (unreadable or corrupt)")


def _expect(path: Path, h: Header, what: str, *, dtypes: Sequence[str], channels: Sequence[int], hint: str) -> None:
    if h.dtype not in dtypes or h.channels not in channels:
        raise DatasetError(f"{path}: {what} must be {hint}, got {h.channels} channel(s) of {h.dtype}")


def _same_size(headers: dict[Path, Header]) -> None:
    sizes = {p: (h.height, h.width) for p, h in headers.items()}
    if len(set(sizes.values())) > 1:
        desc = ", ".join(f"{p} is {s[1]}x{s[0]}" for p, s in sizes.items())
        raise DatasetError(f"size mismatch (WxH): {desc}")


def _rgb_header(path: Path) -> Header:
    h = read_header(path, "rgb")
    _expect(path, h, "rgb", dtypes=("uint8",), channels=(3, 4), hint="an 8-bit colour image")
    return h


def _depth_png_header(path: Path) -> Header:
    h = read_header(path, "depth")
    _expect(path, h, "depth", dtypes=("uint16",), channels=(1,), hint="a single-channel 16-bit PNG")
    return h


def check_frame(dataset: Any, i: int, level: str = "full") -> None:
    """Check frame ``i`` of a folder, Stanford or SUN RGB-D dataset; raises :class:`DatasetError`."""
    if isinstance(dataset, FolderDataset):
        p = dataset.paths(i)
        headers = {p["rgb"]: _rgb_header(p["rgb"])}
        if p["depth"].suffix == ".npy":
            h = read_header(p["depth"], "depth")
            _expect(p["depth"], h, "depth .npy", dtypes=("float32", "float64"), channels=(1,),
                    hint="HxW float32 metres")
        else:
            h = _depth_png_header(p["depth"])
        headers[p["depth"]] = h
        if p["label"] is not None:
            h = read_header(p["label"], "label")
            _expect(p["label"], h, "label", dtypes=("uint8",), channels=(1,),
                    hint="a single-channel 8-bit PNG of class ids")
            headers[p["label"]] = h
        _same_size(headers)
        if level == "full" and p["label"] is not None:
            c = dataset.classes
            check_label_values(read_label(p["label"]), c.num_classes, c.ignore_index, p["label"])
        return
    # The paper formats (m3l_core.data.paper): split files of relative paths.
    from m3l_core.data.paper import StanfordIndoor

    rgb_rel, depth_rel, label_rel = dataset.entries[i]
    rgb_p, depth_p = dataset.root / rgb_rel, dataset.root / depth_rel
    headers = {rgb_p: _rgb_header(rgb_p), depth_p: _depth_png_header(depth_p)}
    if label_rel is not None:
        label_p = dataset.root / label_rel
        h = read_header(label_p, "label")
        if isinstance(dataset, StanfordIndoor):
            _expect(label_p, h, "Stanford label", dtypes=("uint8",), channels=(3, 4), hint="a 24-bit colour PNG")
        else:
            _expect(label_p, h, "SUN RGB-D label", dtypes=("uint8", "uint16"), channels=(1,),
                    hint="a single-channel PNG of ids 0..37")
        headers[label_p] = h
        _same_size(headers)
        if level == "full":
            dataset._read_label(label_p)  # noqa: SLF001 - the dataset's own decoding and range rule
    else:
        _same_size(headers)


def iter_problems(dataset: Any, level: str = "full") -> Iterator[tuple[int, DatasetError]]:
    """``(index, error)`` for every bad frame, in order."""
    if level not in CHECK_LEVELS:
        raise ValueError(f"level must be one of {CHECK_LEVELS}, got {level!r}")
    if level == "off":
        return
    for i in range(len(dataset)):
        try:
            check_frame(dataset, i, level)
        except DatasetError as e:
            yield i, e


def depth_units_hint(dataset: Any) -> str | None:
    """A warning naming the first frame's depth file when its values look like the wrong units."""
    if len(dataset) == 0:
        return None
    if isinstance(dataset, FolderDataset):
        path = dataset.paths(0)["depth"]
        metres = read_depth(path)
    else:
        path = dataset.root / dataset.entries[0][1]
        metres = dataset._read_depth(path)  # noqa: SLF001 - the dataset's own decoding
    msg = depth_units_warning(metres)
    return f"{path}: {msg}" if msg else None


def check_dataset(dataset: Any, level: str = "full", *, what: str = "") -> int:
    """Check every frame; raises the first problem as a one-line :class:`DatasetError`; returns the count.

    Also logs a warning when the first frame's depth looks like the wrong units (median > 20 m).
    """
    if level == "off":
        return 0
    t0 = time.perf_counter()
    for _, err in iter_problems(dataset, level):
        raise DatasetError(" ".join(str(err).split("\n")))
    hint = depth_units_hint(dataset)
    if hint:
        log.warning("%s", hint)
    log.info("checked %d frame(s)%s (%s) in %.1f s", len(dataset), f" of {what}" if what else "", level,
             time.perf_counter() - t0)
    return len(dataset)


def main(args: Sequence[str] | None = None) -> int:
    from m3l_core.data.datasets import DATA_FORMATS, DatasetSpec, available_splits, open_dataset

    p = argparse.ArgumentParser(prog="python -m m3l_core.data.check", description=__doc__.split("\n\n")[0])
    p.add_argument("root", metavar="DIR", help="dataset root")
    p.add_argument("--format", default="folder", choices=DATA_FORMATS)
    p.add_argument("--split", action="append", default=[],
                   help="split name (folder) or split file (stanford/sun); repeatable; default: every "
                        "*.txt under DIR/splits")
    p.add_argument("--level", default="full", choices=CHECK_LEVELS[:2],
                   help="full: also decode labels and check their values; headers: read headers only")
    p.add_argument("--semantic-labels", default="", help="stanford: semantic_labels.json (default DIR/...)")
    p.add_argument("--no-depth-bitshift", action="store_true", help="sun: depth PNGs hold plain millimetres")
    p.add_argument("--max-errors", type=int, default=20, help="stop listing after this many problems")
    ns = p.parse_args(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = DatasetSpec(root=ns.root, format=ns.format, semantic_labels=ns.semantic_labels,
                       depth_bitshift=not ns.no_depth_bitshift)

    def body() -> int:
        if not Path(ns.root).is_dir():
            raise DatasetError(f"{ns.root}: dataset directory not found")
        splits = ns.split or available_splits(spec)
        if not splits:
            raise DatasetError(f"{Path(ns.root) / 'splits'}: no split files (*.txt) found")
        problems = frames = 0
        for split in splits:
            ds = open_dataset(spec, split)
            for _, err in iter_problems(ds, ns.level):
                problems += 1
                if problems <= ns.max_errors:
                    print(f"{split}: {err}")
            frames += len(ds)
            print(f"{split}: {len(ds)} frame(s) checked")
        if problems:
            more = f" (first {ns.max_errors} shown)" if problems > ns.max_errors else ""
            print(f"{problems} problem(s) in {frames} frame(s){more}", file=sys.stderr)
            return 1
        print(f"ok: {frames} frame(s) in {len(splits)} split(s)")
        return 0

    return run_guarded(body, failure=(DatasetError,), interrupted=None)


if __name__ == "__main__":
    sys.exit(main())
