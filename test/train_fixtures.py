"""Shared tiny fixtures for the trainer tests: a synthetic folder dataset and tiny-model overrides."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from m3l_core.data.synthetic import write_folder_dataset
from m3l_core.train.config import TrainConfig, load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "config" / "train"

# A model and crops small enough for a few CPU iterations per second.
TINY = [
    "model.backbone=tiny",
    "model.decoder_dim=32",
    "data.crop_size=[32,32]",
    "labeled_batch=2",
    "unlabeled_batch=2",
    "data.num_workers=0",
    "data.val_batch=2",
    "progress=false",
    "log_every=1",
]


def make_dataset(root: Path, *, labeled: int = 6, unlabeled: int = 6, val: int = 3, seed: int = 0) -> Path:
    write_folder_dataset(root, counts={"train_labeled": labeled, "train_unlabeled": unlabeled, "val": val,
                                       "test": 0}, height=36, width=48, seed=seed, progress=False)
    return root


def tiny_config(name: str, data: Path, *overrides: str) -> TrainConfig:
    """``config/train/<name>.yaml`` shrunk to the tiny model, on ``data``."""
    return load_config(CONFIGS / f"{name}.yaml", [*TINY, *overrides], extra={"data": {"root": str(data)}})


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("train_data") / "synthetic")


def write_paper_dataset(root: Path, kind: str, n: int = 4) -> None:
    """A few fake frames in the Stanford 2D-3D-S or SUN RGB-D on-disk encoding, with split files."""
    import cv2

    rng = np.random.default_rng(0)
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    (root / "label").mkdir()
    lines = []
    for i in range(n):
        rgb = rng.integers(0, 255, (36, 48, 3), dtype=np.uint8)
        ids = rng.integers(0, 3, (36, 48))
        if kind == "stanford":
            depth = (rng.uniform(0.5, 5.0, (36, 48)) * 512).astype(np.uint16)
            label = np.zeros((36, 48, 3), np.uint8)
            label[..., 0] = ids  # BGR: blue byte = index into semantic_labels.json
        else:
            mm = rng.integers(500, 5000, (36, 48)).astype(np.uint16)
            depth = (mm << 3) | (mm >> 13)  # SUN RGB-D's rotated millimetres
            label = (ids + 1).astype(np.uint8)  # 0 = void, 1..37
        cv2.imwrite(str(root / "rgb" / f"{i}.png"), rgb)
        cv2.imwrite(str(root / "depth" / f"{i}.png"), depth)
        cv2.imwrite(str(root / "label" / f"{i}.png"), label)
        lines.append(f"rgb/{i}.png\tdepth/{i}.png\tlabel/{i}.png")
    (root / "splits").mkdir()
    (root / "splits" / "train_labeled_0.1.txt").write_text("\n".join(lines[:2]) + "\n")
    (root / "splits" / "train_labeled_6.25.txt").write_text("\n".join(lines[:2]) + "\n")
    (root / "splits" / "val.txt").write_text("\n".join(lines[2:]) + "\n")
    if kind == "stanford":
        (root / "semantic_labels.json").write_text(json.dumps(["ceiling_1_x", "floor_1_x", "<UNK>_0_x"]))


@pytest.fixture()
def m3l_logs_propagate():
    """Let ``m3l_core`` log records reach the root handlers (train.log, caplog) inside pytest.

    The launch_testing pytest plugin installs ``launch.logging.LaunchLogger`` as the logger class,
    which sets ``propagate = False`` on every logger created after it loads.
    """
    import logging

    loggers = [lg for name, lg in logging.root.manager.loggerDict.items()
               if name.startswith("m3l_core") and isinstance(lg, logging.Logger)]
    old = [lg.propagate for lg in loggers]
    for lg in loggers:
        lg.propagate = True
    yield
    for lg, p in zip(loggers, old):
        lg.propagate = p
