"""Labeled/unlabeled training splits at a fraction, like the paper's 0.1%, 0.2% and 1%.

    python -m m3l_core.data.splits --data DIR --fraction 0.001 --seed 0 [--source train --min-labeled 1]

reads ``DIR/splits/<source>.txt`` (all training names) and writes
``splits/train_labeled.txt`` and ``splits/train_unlabeled.txt``. The labeled
count is ``floor(fraction * N)`` (at least ``--min-labeled``), which gives the
paper's counts: 0.1% / 0.2% / 1% of 49,199 Stanford images = 49 / 98 / 491,
6.25% / 12.5% / 25% of 4,757 SUN RGB-D images = 297 / 594 / 1189.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from m3l_core.data.folder import DatasetError, read_split, write_split


def num_labeled(n: int, fraction: float, min_labeled: int = 1) -> int:
    """``floor(fraction * n)`` clamped to ``[min_labeled, n]`` (tolerant of float round-off)."""
    return min(n, max(int(min_labeled), math.floor(fraction * n + 1e-9)))


def make_split(
    names: Sequence[str],
    fraction: float,
    seed: int,
    min_labeled: int = 1,
) -> tuple[list[str], list[str]]:
    """Pick a random labeled subset; returns ``(labeled, unlabeled)``, each sorted.

    Deterministic for ``seed`` and independent of the input order (names are
    sorted before shuffling).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if min_labeled < 0:
        raise ValueError(f"min_labeled must be >= 0, got {min_labeled}")
    pool = sorted(names)
    if len(set(pool)) != len(pool):
        raise ValueError("names contain duplicates")
    if not pool:
        raise ValueError("no names to split")
    if min_labeled > len(pool):
        raise ValueError(f"min_labeled={min_labeled} exceeds the {len(pool)} available names")
    k = num_labeled(len(pool), fraction, min_labeled)
    perm = np.random.default_rng(seed).permutation(len(pool))
    chosen = set(perm[:k].tolist())
    labeled = [n for i, n in enumerate(pool) if i in chosen]
    unlabeled = [n for i, n in enumerate(pool) if i not in chosen]
    return labeled, unlabeled


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m m3l_core.data.splits", description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="dataset root in the folder format")
    ap.add_argument("--fraction", required=True, type=float, help="labeled fraction, e.g. 0.001 for 0.1%%")
    ap.add_argument("--seed", type=int, default=0, help="random seed (same seed, same split)")
    ap.add_argument("--source", default="train", help="split listing all training names (splits/<source>.txt)")
    ap.add_argument("--min-labeled", type=int, default=1, help="labeled count never goes below this")
    ap.add_argument("--labeled-split", default="train_labeled", help="name of the labeled split to write")
    ap.add_argument("--unlabeled-split", default="train_unlabeled", help="name of the unlabeled split to write")
    ap.add_argument("--force", action="store_true", help="overwrite existing split files")
    args = ap.parse_args(argv)

    split_dir = args.data / "splits"
    outs = [split_dir / f"{args.labeled_split}.txt", split_dir / f"{args.unlabeled_split}.txt"]
    if args.source in (args.labeled_split, args.unlabeled_split):
        ap.error(f"--source {args.source!r} would be overwritten; list all training names in another split")
    existing = [str(p) for p in outs if p.exists()]
    if existing and not args.force:
        print(f"error: {', '.join(existing)} already exist; pass --force to overwrite", file=sys.stderr)
        return 1
    try:
        names = read_split(split_dir / f"{args.source}.txt")
        labeled, unlabeled = make_split(names, args.fraction, args.seed, args.min_labeled)
    except (DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    write_split(args.data, args.labeled_split, labeled)
    write_split(args.data, args.unlabeled_split, unlabeled)
    print(
        f"{len(names)} names in {split_dir / (args.source + '.txt')}: "
        f"{len(labeled)} labeled ({100.0 * len(labeled) / len(names):.3g}%) -> {outs[0]}, "
        f"{len(unlabeled)} unlabeled -> {outs[1]} (seed {args.seed})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
