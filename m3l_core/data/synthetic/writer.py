"""The folder-format writer and the command line.

Files go through :mod:`m3l_core.data.folder` (the format's one reader and writer), imported only
when writing so that rendering frames does not import torch.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from m3l_core.cli.common import run_guarded

from .config import CLASS_NAMES, IGNORE_INDEX, PALETTE, SceneConfig
from .frames import check_size, render_frame

log = logging.getLogger(__name__)

# Random stream of each split. Fixed: they seed every frame, so changing them changes every dataset.
SPLIT_STREAMS: dict[str, int] = {"train_labeled": 0, "train_unlabeled": 1, "val": 2, "test": 3}
UNLABELED_SPLIT = "train_unlabeled"  # written without label files


def frame_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Frame ``index`` of ``split`` has its own stream, so one split's count leaves the others unchanged."""
    return np.random.default_rng([int(seed), SPLIT_STREAMS[split], int(index)])


def depth_to_mm(depth: np.ndarray) -> np.ndarray:
    """Metres (NaN invalid) -> uint16 millimetres with 0 invalid; a valid reading never becomes 0."""
    mm = np.nan_to_num(depth * 1000.0, nan=0.0, posinf=0.0, neginf=0.0)
    out = np.clip(np.rint(mm), 0, 65535).astype(np.uint16)
    out[(mm > 0) & (out == 0)] = 1
    return out


def write_folder_dataset(out: str | Path, *, counts: dict[str, int], height: int, width: int, seed: int,
                         config: SceneConfig | None = None, progress: bool = True) -> None:
    """Write i.i.d. frames in the folder format; labels for every split but ``train_unlabeled``.

    ``counts`` maps split names (any of ``train_labeled``, ``train_unlabeled``,
    ``val``, ``test``) to frame counts; missing splits get an empty split file.
    Sample names are ``<split>_<index:06d>``.
    """
    from tqdm import tqdm

    from m3l_core.data.folder import SPLITS, ClassInfo, save_classes, write_sample, write_split

    check_size(height, width)
    unknown = set(counts) - set(SPLITS)
    if unknown:
        raise ValueError(f"counts has unknown split(s) {sorted(unknown)}; expected any of {SPLITS}")
    for split, n in counts.items():
        if int(n) < 0:
            raise ValueError(f"counts[{split!r}] must be >= 0, got {n}")
    cfg = config or SceneConfig()
    out = Path(out)
    for sub in ("rgb", "depth", "labels", "splits"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    save_classes(out / "classes.yaml", ClassInfo(names=list(CLASS_NAMES), palette=list(PALETTE),
                                                 ignore_index=IGNORE_INDEX))
    total = sum(int(counts.get(s, 0)) for s in SPLITS)
    with tqdm(total=total, desc="synthetic", unit="frame", disable=not progress) as bar:
        for split in SPLITS:
            names = []
            for i in range(int(counts.get(split, 0))):
                name = f"{split}_{i:06d}"
                sample = render_frame(frame_rng(seed, split, i), height, width, cfg)
                write_sample(out, name, rgb=sample["rgb"], depth=depth_to_mm(sample["depth"]),
                             label=None if split == UNLABELED_SPLIT else sample["label"])
                names.append(name)
                bar.update(1)
            write_split(out, split, names)
    log.info("wrote %d synthetic frames to %s", total, out)


def main(argv: list[str] | None = None) -> int:
    """CLI; exit codes: 0 written, 1 cannot write, 2 bad arguments, 130 interrupted."""
    p = argparse.ArgumentParser(prog="python -m m3l_core.data.synthetic",
                                description="Write procedural RGB-D scenes in the M3L folder format.")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--train-labeled", type=int, default=50, help="labeled training frames")
    p.add_argument("--train-unlabeled", type=int, default=500, help="unlabeled training frames (no label files)")
    p.add_argument("--val", type=int, default=100, help="validation frames")
    p.add_argument("--test", type=int, default=200, help="test frames")
    p.add_argument("--height", type=int, default=240, help="image height in pixels")
    p.add_argument("--width", type=int, default=320, help="image width in pixels")
    p.add_argument("--seed", type=int, default=0, help="base seed; the same seed writes identical files")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = p.parse_args(argv)
    counts = {"train_labeled": args.train_labeled, "train_unlabeled": args.train_unlabeled,
              "val": args.val, "test": args.test}
    for split, n in counts.items():
        if n < 0:
            p.error(f"--{split.replace('_', '-')} must be >= 0, got {n}")
    try:
        check_size(args.height, args.width)
    except ValueError as e:
        p.error(str(e))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def body() -> int:
        start = time.perf_counter()
        try:
            write_folder_dataset(args.out, counts=counts, height=args.height, width=args.width, seed=args.seed,
                                 progress=not args.no_progress)
        except OSError as e:
            raise OSError(f"cannot write {args.out}: {e}") from e
        summary = ", ".join(f"{k}={v}" for k, v in counts.items())
        print(f"wrote {sum(counts.values())} frames ({summary}) at {args.height}x{args.width} "
              f"to {args.out} in {time.perf_counter() - start:.1f} s")
        return 0

    return run_guarded(body, failure=(OSError,))
