"""Trainer faults: a non-finite loss, a torn metrics.jsonl, leftovers of killed writes, bad RGB input."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import m3l_core.train.update as update_mod
from m3l_core.cli.train import main
from m3l_core.data.transforms import EvalTransform, TrainTransform
from m3l_core.preprocess import Preprocessing
from m3l_core.train.trainer import NonFiniteLossError, train
from train_fixtures import (CONFIGS, TINY, m3l_logs_propagate, tiny_config, tiny_data)  # noqa: F401  (fixtures)


def cli(data: Path, out: Path, *sets: str, resume: bool = False) -> int:
    if resume:
        return main(["--resume", str(out), *sum((["--set", s] for s in sets), [])])
    args = ["--config", str(CONFIGS / "synthetic_sup.yaml"), "--data", str(data), "--out", str(out), "--device", "cpu"]
    return main(args + sum((["--set", s] for s in [*TINY, *sets]), []))


def test_a_diverging_learning_rate_stops_with_the_state_saved(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(tiny_data, out, "max_iters=6", "eval_every=0", "optim.lr=1e30") == 1
    err = capsys.readouterr().err
    (line,) = [l for l in err.splitlines() if l.startswith("error:")]
    step = json.loads((out / "state" / "manifest.json").read_text())["step"]
    assert f"at step {step + 1}" in line and f"state after step {step} is saved in {out / 'state'}" in line
    assert "--resume" in line and "Traceback" not in err and 1 <= step < 6


def test_a_non_finite_step_is_skipped_and_resume_ends_like_an_uninterrupted_run(tiny_data, tmp_path, monkeypatch):
    sets = ["max_iters=4", "eval_every=0", "save_every=0"]
    full = train(tiny_config("synthetic_sup", tiny_data, *sets), tmp_path / "full", device="cpu")
    real, calls = update_mod.compute_losses, []

    def nan_at_third_step(*a, **kw):
        losses = real(*a, **kw)
        calls.append(1)
        if len(calls) == 3:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(update_mod, "compute_losses", nan_at_third_step)
    cfg = tiny_config("synthetic_sup", tiny_data, *sets)
    with pytest.raises(NonFiniteLossError, match="training loss is nan at step 3"):
        train(cfg, tmp_path / "parts", device="cpu")
    manifest = json.loads((tmp_path / "parts" / "state" / "manifest.json").read_text())
    assert manifest["step"] == 2
    monkeypatch.setattr(update_mod, "compute_losses", real)
    res = train(cfg, tmp_path / "parts", device="cpu", resume=True)
    assert res.finished and res.step == 4
    a, b = (load_file(str(r / "last.safetensors")) for r in (tmp_path / "full", tmp_path / "parts"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full.step == 4


def test_resume_applies_a_changed_learning_rate(tiny_data, tmp_path):
    """A run stopped after 2 steps and resumed with a 10x lower rate continues at the new rate."""
    out = tmp_path / "run"
    cfg = tiny_config("synthetic_sup", tiny_data, "max_iters=4", "eval_every=0", "save_every=0")
    train(cfg, out, device="cpu", stop_after=2)
    assert cli(tiny_data, out, "optim.lr=1e-5", resume=True) == 0
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr"] for r in recs}
    assert lrs[1] == pytest.approx(cfg.optim.lr)
    assert lrs[3] == pytest.approx(1e-5 * (1 - 2 / 4) ** 0.9)  # the poly schedule at step index 2


def test_torn_last_metrics_line_is_dropped_with_a_warning(tiny_data, tmp_path, capsys, caplog, m3l_logs_propagate):
    out = tmp_path / "run"
    cfg = tiny_config("synthetic_sup", tiny_data, "max_iters=3", "eval_every=0", "save_every=0")
    train(cfg, out, device="cpu", stop_after=2)
    metrics = out / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"step": 3, "loss": 0.5, "lr')  # killed in the middle of a write
    with caplog.at_level(logging.WARNING):
        assert cli(tiny_data, out, resume=True) == 0
    assert any(str(metrics) in r.getMessage() and "torn last line" in r.getMessage() for r in caplog.records)
    assert [json.loads(l)["step"] for l in metrics.read_text().splitlines()] == [1, 2, 3]
    # A damaged line that is not the last one is an error naming the file and the line.
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    (out / "last.safetensors").unlink()
    assert cli(tiny_data, out, resume=True) == 1
    assert f"{metrics}:2: not a JSON record" in capsys.readouterr().err


def test_temporary_files_of_killed_writes_are_removed_at_start(tiny_data, tmp_path):
    out = tmp_path / "run"
    train(tiny_config("synthetic_sup", tiny_data, "max_iters=2", "eval_every=0"), out, device="cpu", stop_after=1)
    leftovers = [out / ".model.safetensors.k2x9q.tmp", out / "state" / ".student-00000002.safetensors.a1b2.tmp",
                 out / ".metrics.jsonl.zz.tmp"]
    for p in leftovers:
        p.write_bytes(b"half a file")
    keep = out / "notes.tmp"  # not ours: not hidden
    keep.write_text("mine")
    assert cli(tiny_data, out, resume=True) == 0
    assert not any(p.exists() for p in leftovers) and keep.read_text() == "mine"


@pytest.mark.parametrize("shape", [(20, 24, 4), (20, 24), (20, 24, 1)])
def test_rgb_shape_errors_report_the_input_shape(shape):
    pre = Preprocessing(input_size=(8, 10))
    sample = {"rgb": np.zeros(shape, np.uint8), "depth": np.ones((20, 24), np.float32), "label": None, "name": "f1"}
    for t in (lambda s: TrainTransform((12, 12), pre)(s, np.random.default_rng(0)), EvalTransform(pre)):
        with pytest.raises(ValueError, match=rf"sample 'f1': rgb must be HxWx3 uint8, got shape \({shape[0]}, {shape[1]}"):
            t(sample)


def test_a_frame_failing_in_a_training_worker_is_one_line(tiny_data, tmp_path, capsys):
    """Its header passes the up-front check, its pixels do not decode: exit 1 naming the file."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    name = (data / "splits" / "train_labeled.txt").read_text().split()[1]
    rgb = data / "rgb" / f"{name}.png"
    rgb.write_bytes(rgb.read_bytes()[:120])  # the IHDR survives, the image data does not
    assert cli(data, tmp_path / "run", "max_iters=6", "eval_every=0", "data.num_workers=2", "labeled_batch=3") == 1
    err = capsys.readouterr().err
    (line,) = [l for l in err.splitlines() if l.startswith("error:")]
    assert str(rgb) in line and "cannot decode rgb image" in line
    assert "Traceback" not in err and "worker" not in err


@pytest.mark.timeout(240)
def test_ctrl_c_saves_the_state_and_exits_130(tiny_data, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    sets = [*TINY, "max_iters=100000", "eval_every=0", "save_every=0"]
    cmd = [sys.executable, str(CONFIGS.parents[1] / "training" / "train_m3l.py"), "--config",
           str(CONFIGS / "synthetic_sup.yaml"), "--data", str(tiny_data), "--out", str(out), "--device", "cpu",
           "--threads", "1", *sum((["--set", s] for s in sets), [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        metrics = out / "metrics.jsonl"
        while proc.poll() is None and not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
            time.sleep(0.2)  # wait for two finished steps (no timing is asserted)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    step = json.loads((out / "state" / "manifest.json").read_text())["step"]
    assert step >= 2 and "Traceback" not in err
    assert main(["--resume", str(out), "--stop-after", "1"]) == 0
    assert json.loads((out / "state" / "manifest.json").read_text())["step"] == step + 1
