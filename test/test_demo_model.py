"""The bundled demo model loads with Segmenter and reaches its committed mIoU on a fresh synthetic split.

``docs/demo_model/metrics.json`` was written by ``scripts/evaluate_demo_model.py`` on a synthetic test
split generated with the settings stored in it (``synthetic_split``, see docs/demo_model.md); this test
regenerates that split (the generator is deterministic) and checks every condition against the
committed numbers, through the same evaluation the CLI runs.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from m3l_core.checkpoint import load_checkpoint
from m3l_core.data import synthetic
from m3l_core.data.folder import FolderDataset
from m3l_core.evaluation import evaluate_dataset
from m3l_core.inference import Segmenter
from m3l_core.report import ROWS
from m3l_core.vocab import MODALITIES

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "m3l_ros" / "models" / "demo.safetensors"
COMMITTED = ROOT / "docs" / "demo_model" / "metrics.json"
TOLERANCE = 1.0  # mIoU points: the split is regenerated bit for bit; this absorbs CPU numeric differences


def test_demo_checkpoint_is_small_and_describes_itself():
    assert CKPT.stat().st_size <= 20 * 1024 * 1024
    seg = Segmenter.from_checkpoint(CKPT)
    assert seg.class_names == list(synthetic.CLASS_NAMES)
    assert seg.model.config.missing_token and tuple(seg.model.config.modalities) == MODALITIES
    frame = synthetic.render_frame(np.random.default_rng(3), 120, 160)
    for rgb, depth in ((frame["rgb"], frame["depth"]), (frame["rgb"], None), (None, frame["depth"])):
        labels = seg.predict(rgb=rgb, depth=depth)
        assert labels.shape == (120, 160) and labels.max() < len(seg.class_names)


def test_demo_model_reaches_committed_miou_on_fresh_split(tmp_path):
    committed = json.loads(COMMITTED.read_text())
    spec = committed["synthetic_split"]
    assert spec["generator"] == synthetic.__name__
    synthetic.write_folder_dataset(tmp_path, counts={"test": spec["count"]}, height=spec["height"],
                                   width=spec["width"], seed=spec["seed"], progress=False)
    dataset = FolderDataset(tmp_path, "test")
    assert len(dataset) == committed["num_samples"] == spec["count"]
    got = evaluate_dataset(load_checkpoint(CKPT), dataset, batch_size=8).results
    for row in ROWS:
        assert got[row]["miou"] == pytest.approx(committed[row]["miou"], abs=TOLERANCE), row
