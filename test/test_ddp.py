"""A 2-process torchrun (gloo, CPU) training run; its validation equals a single-process evaluation."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from m3l_core.checkpoint import load_checkpoint
from m3l_core.data.folder import FolderDataset
from m3l_core.data.transforms import EvalTransform
from m3l_core.evaluation import collate_eval, evaluate, summarize_results
from train_fixtures import CONFIGS, REPO, TINY, make_dataset


def test_two_process_gloo_run_matches_single_process_evaluation(tmp_path):
    data = make_dataset(tmp_path / "data", labeled=4, unlabeled=4, val=5)
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    sets = [*TINY, "max_iters=4", "eval_every=2", "save_every=2", "log_every=2", "data.val_batch=1"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "training" / "train_m3l.py"), "--config", str(CONFIGS / "synthetic_m3l.yaml"),
           "--data", str(data), "--out", str(out), "--device", "cpu", *sum((["--set", s] for s in sets), [])]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr

    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "loss" in r] == [2, 4]  # only rank 0 writes, once per interval
    vals = [r for r in recs if "val" in r]
    assert [r["step"] for r in vals] == [2, 4]
    best = max(vals, key=lambda r: r["value"])  # first best wins ties
    best = next(r for r in vals if r["value"] == best["value"])

    ckpt = load_checkpoint(out / "model.safetensors")
    assert ckpt.metadata["extra"]["step"] == best["step"]
    val = FolderDataset(data, "val", transform=EvalTransform(ckpt.preprocessing))
    loader = torch.utils.data.DataLoader(val, batch_size=1, collate_fn=collate_eval)
    cms = evaluate(ckpt.model, loader, num_classes=len(ckpt.class_names))
    single = summarize_results(cms, ckpt.class_names)
    for cond in ("rgbd", "rgb", "depth"):
        assert single[cond]["num_pixels"] == best["val"][cond]["num_pixels"] == 5 * 36 * 48
        assert single[cond]["miou"] == best["val"][cond]["miou"], cond
        assert single[cond]["per_class_iou"] == best["val"][cond]["per_class_iou"], cond
    assert single["mm_robust"]["miou"] == best["value"]
