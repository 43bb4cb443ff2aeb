"""Shared tiny fixtures for the trainer tests: a synthetic folder dataset and tiny-model overrides."""
from __future__ import annotations

from pathlib import Path

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
