"""The scripts that write committed docs: exit codes, and outputs without machine paths, written once."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from m3l_core.report import ROWS, write_metrics

REPO = Path(__file__).resolve().parents[1]


def _script(name: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / name), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


def _scores(miou: float) -> dict:
    return {"miou": miou, "macc": miou, "pixel_acc": miou, "per_class_iou": {"a": miou}, "num_pixels": 4}


@pytest.mark.timeout(600)
def test_evaluate_demo_model_writes_a_portable_report(tmp_path):
    out = tmp_path / "demo_eval"
    res = _script("evaluate_demo_model.py", "--count", "2", "--height", "48", "--width", "64", "--seed", "5",
                  "--out", str(out), timeout=540)
    assert res.returncode == 0, res.stderr[-2000:]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["synthetic_split"] == dict(count=2, height=48, width=64, seed=5, generator="m3l_core.data.synthetic")
    assert saved["checkpoint"] == "m3l_ros/models/demo.safetensors" and saved["num_samples"] == 2
    assert all(0.0 <= saved[r]["miou"] <= 100.0 for r in ROWS)
    md = (out / "metrics.md").read_text()
    assert "- input_size: `120x160`" in md and "seed 5" in md
    for f in ("metrics.json", "metrics.md"):
        text = (out / f).read_text()
        assert "/tmp/" not in text and str(REPO) not in text, f
    assert (out / "examples.png").stat().st_size > 1000 and (out / "metrics.png").stat().st_size > 1000
    assert _script("evaluate_demo_model.py", "--count", "0", "--out", str(out)).returncode == 2


def test_machine_description_names_cpu_cores_and_versions():
    import torch

    from m3l_core.machine import cpu_name, describe_machine

    text = describe_machine(onnxruntime="1.2.3")
    assert text.startswith(cpu_name() + ", ") and " logical cores, " in text
    assert f"torch {torch.__version__}" in text and text.endswith(", onnxruntime 1.2.3")
