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


def test_benchmark_robustness_usage_errors_exit_2(tmp_path):
    res = _script("benchmark_robustness.py", "--variants", "lf_m3l_init", "--work", str(tmp_path / "w"),
                  "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "include it in --variants" in res.stderr
    assert not (tmp_path / "w").exists()  # refused before any work
    assert _script("benchmark_robustness.py", "--variants", "no_such_variant").returncode == 2


def test_benchmark_robustness_reuses_runs_and_writes_each_output_once(tmp_path):
    """A finished variant in --work is reused; the table, notes and JSON name paths relative to --work."""
    work, out = tmp_path / "work", tmp_path / "out"
    spec = dict(labeled=2, unlabeled=2, val=2, test=2, height=32, width=48, seed=0)
    (work / "data").mkdir(parents=True)
    (work / "data" / "benchmark_data.json").write_text(json.dumps(spec))
    settings = dict(data=spec, iters=2, eval_every=2, set=[])
    (work / "timings.json").write_text(json.dumps(
        {"lf_sup": {"train_seconds": 120.0, "eval_seconds": 9.0, "settings": settings}}))
    write_metrics(work / "eval" / "lf_sup", {"rgbd": _scores(30.0), "rgb": _scores(10.0), "depth": _scores(20.0),
                                            "mm_robust": _scores(20.0)},
                  info={"checkpoint": str(work / "runs" / "lf_sup" / "model.safetensors"), "data": str(work / "data")})
    res = _script("benchmark_robustness.py", "--variants", "lf_sup", "--iters", "2", "--eval-every", "2",
                  "--labeled", "2", "--unlabeled", "2", "--val", "2", "--test", "2", "--height", "32", "--width", "48",
                  "--work", str(work), "--out", str(out), "--reuse")
    assert res.returncode == 0, res.stderr
    assert "reusing" in res.stdout and "$ " not in res.stdout  # nothing was run
    md = (out / "robustness.md").read_text()
    assert md.count("| Method |") == 1 and "| LF supervised | 10.00 | 20.00 | 30.00 | 20.00 |" in md
    assert "| LF supervised | 2.0 | 9 |" in md and "Total time: 2.1 min" in md
    summary = json.loads((out / "robustness.json").read_text())
    lf = summary["results"]["LF supervised"]
    assert lf["checkpoint"] == "runs/lf_sup/model.safetensors" and lf["data"] == "data"
    assert set(ROWS) <= set(lf) and summary["total_seconds"] == pytest.approx(129.0)
    for f in ("robustness.md", "robustness.json"):
        assert str(tmp_path) not in (out / f).read_text(), f
    assert (out / "robustness.png").stat().st_size > 1000


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
