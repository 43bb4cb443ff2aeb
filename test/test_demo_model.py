"""The bundled demo model loads with Segmenter and reaches its committed mIoU on a fresh synthetic split.

``docs/demo_model/metrics.json`` was written by ``training/evaluate.py`` on a synthetic test split
generated with the settings stored in it (see docs/demo_model.md); this test regenerates that split
(the generator is deterministic) and checks every condition against the committed numbers.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from m3l_core.data import synthetic
from m3l_core.data.folder import FolderDataset
from m3l_core.data.transforms import EvalTransform
from m3l_core.evaluation import collate_eval, evaluate, summarize_results
from m3l_core.inference import Segmenter

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "m3l_ros" / "models" / "demo.safetensors"
COMMITTED = ROOT / "docs" / "demo_model" / "metrics.json"
TOLERANCE = 1.0  # mIoU points: the split is regenerated bit for bit; this absorbs CPU numeric differences


def test_demo_checkpoint_is_small_and_describes_itself():
    assert CKPT.stat().st_size <= 20 * 1024 * 1024
    seg = Segmenter.from_checkpoint(CKPT)
    assert seg.class_names == list(synthetic.CLASS_NAMES)
    assert seg.model.config.missing_token and seg.model.config.modalities == ("rgb", "depth")
    frame = synthetic.render_frame(np.random.default_rng(3), 120, 160)
    for rgb, depth in ((frame["rgb"], frame["depth"]), (frame["rgb"], None), (None, frame["depth"])):
        labels = seg.predict(rgb=rgb, depth=depth)
        assert labels.shape == (120, 160) and labels.max() < len(seg.class_names)


def test_demo_model_reaches_committed_miou_on_fresh_split(tmp_path):
    committed = json.loads(COMMITTED.read_text())
    spec = committed["info"]["synthetic_split"]
    synthetic.write_folder_dataset(tmp_path, counts={"test": spec["count"]}, height=spec["height"],
                                   width=spec["width"], seed=spec["seed"], progress=False)
    seg = Segmenter.from_checkpoint(CKPT)
    ds = FolderDataset(tmp_path, "test", transform=EvalTransform(seg.preprocessing))
    loader = torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=collate_eval)
    cms = evaluate(seg.model, loader, num_classes=seg.num_classes)
    got = summarize_results(cms, seg.class_names)
    for cond in ("rgbd", "rgb", "depth", "mm_robust"):
        assert got[cond]["miou"] == pytest.approx(committed[cond]["miou"], abs=TOLERANCE), cond
