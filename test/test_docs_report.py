"""Evaluation reports (m3l_core.report) record no machine paths, read well, and are written once."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from m3l_core import report, vocab
from m3l_core.vocab import CONDITION_TITLES, CONDITIONS

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "docs" / "demo_model"


def _scores(miou: float) -> dict:
    return {"miou": miou, "macc": miou + 1, "pixel_acc": miou + 2, "per_class_iou": {"a": miou, "b": None},
            "num_pixels": 10}


RESULTS = {"rgbd": _scores(40.0), "rgb": _scores(30.0), "depth": _scores(20.0), "mm_robust": _scores(30.0)}


def test_report_records_paths_relative_to_the_repo_or_bare_names(tmp_path):
    info = {"checkpoint": str(REPO / "m3l_ros" / "models" / "demo.safetensors"), "data": str(tmp_path / "my_data"),
            "split": "test", "input_size": [120, 160], "modalities": ["rgb", "depth"], "missing_token": True,
            "confusion_matrices": {"rgbd": [[1, 0], [0, 1]]}}
    paths = report.write_report(tmp_path / "out", RESULTS, info=info)
    for name in ("json", "md"):
        text = paths[name].read_text()
        assert str(tmp_path) not in text and str(REPO) not in text and "/tmp/" not in text, name
    saved = json.loads(paths["json"].read_text())
    assert saved["checkpoint"] == "m3l_ros/models/demo.safetensors"
    assert saved["data"] == "my_data"
    assert saved["input_size"] == [120, 160] and saved["rgbd"]["miou"] == 40.0 and saved["units"] == "percent"
    md = paths["md"].read_text()
    assert "- input_size: `120x160`" in md and "- modalities: `rgb+depth`" in md
    assert "- checkpoint: `m3l_ros/models/demo.safetensors`" in md and "confusion_matrices" not in md
    assert paths["png"].stat().st_size > 1000
    assert report.portable_path("relative/file.txt") == "relative/file.txt"


def test_tables_use_the_vocabulary_titles():
    text = report.format_table(RESULTS)
    assert [line.split("  ")[0] for line in text.splitlines()[2:]] == [CONDITION_TITLES[r] for r in report.ROWS]
    md = report.markdown_table({**RESULTS, "depth": None})
    assert "| Depth only | - | - | - |" in md and "| RGB-D | 40.00 | 41.00 | 42.00 |" in md
    assert "| b | - | - | - | - |" in md  # an absent class is "-", not 0
    assert report.ROWS == (*CONDITIONS, "mm_robust")


def test_examples_grid_colours_ignore_and_unknown_ids_black(tmp_path):
    label = np.array([[0, 1], [255, 7]], np.uint8)  # 255 ignore, 7 unknown
    ex = {"rgb": np.zeros((2, 2, 3), np.uint8), "depth": np.ones((2, 2), np.float32), "label": label,
          "preds": {"rgbd": label, "rgb": None}}
    path = report.plot_examples([ex], tmp_path / "ex.png", palette=[(255, 0, 0), (0, 255, 0)], class_names=["a", "b"])
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="palette"):
        report.write_report(tmp_path / "o", RESULTS, examples=[ex])
    assert report.colorize is vocab.colorize  # the one colouring rule
    assert vocab.colorize(label, [(255, 0, 0), (0, 255, 0)], ignore_index=255).tolist() == \
        [[[255, 0, 0], [0, 255, 0]], [[0, 0, 0], [0, 0, 0]]]


def test_compare_runs_writes_table_and_notes_once(tmp_path):
    runs = {"LF": RESULTS, "Uni RGB": {"rgb": _scores(25.0), "rgbd": None, "depth": None, "mm_robust": None}}
    md = report.compare_runs(runs, tmp_path / "cmp.md", tmp_path / "cmp.png", notes="Command: `x`\n\nMachine: y\n")
    assert (tmp_path / "cmp.md").read_text() == md
    assert md.count("| Method |") == 1 and md.endswith("Machine: y\n") and "\n\n\n" not in md
    uni = [c.strip() for c in md.splitlines()[3].split("|")]
    assert uni[1:6] == ["Uni RGB", "25.00", "-", "-", "-"]
    assert (tmp_path / "cmp.png").stat().st_size > 1000


def test_load_metrics_names_the_file(tmp_path):
    bad = tmp_path / "metrics.json"
    bad.write_text(json.dumps({"rgbd": None}))
    with pytest.raises(ValueError, match="metrics.json.*missing keys"):
        report.load_metrics(bad)
    with pytest.raises(ValueError, match="nope.json"):
        report.load_metrics(tmp_path / "nope.json")


def test_committed_demo_report_is_what_the_writer_writes(tmp_path):
    """docs/demo_model/metrics.{json,md} agree with each other and with the current writer."""
    saved = report.load_metrics(COMMITTED / "metrics.json")
    results = {r: saved.pop(r) for r in report.ROWS}
    saved.pop("units")
    paths = report.write_metrics(tmp_path, results, info=saved)
    assert paths["md"].read_text() == (COMMITTED / "metrics.md").read_text()
    assert json.loads(paths["json"].read_text()) == json.loads((COMMITTED / "metrics.json").read_text())
