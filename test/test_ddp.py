"""2-process torchrun (gloo, CPU): validation equals a single-process evaluation; training equals
single-process training when nothing depends on the per-rank batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from m3l_core.checkpoint import load_checkpoint
from m3l_core.data.folder import FolderDataset
from m3l_core.data.transforms import EvalTransform
from m3l_core.evaluation import collate_eval, evaluate, summarize_results
from m3l_core.model import LinearFusionSegFormer
from train_fixtures import CONFIGS, REPO, TINY, make_dataset


def test_two_process_gloo_run_matches_single_process_evaluation(tmp_path):
    data = make_dataset(tmp_path / "data", labeled=4, unlabeled=4, val=5)
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1")  # conftest already put the tree on PYTHONPATH
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


def _no_ignore_dataset(root):
    """Frames without ignore pixels, so every rank's loss averages the same number of pixels."""
    import numpy as np

    from m3l_core.data.folder import ClassInfo, save_classes, write_sample, write_split

    rng = np.random.default_rng(0)
    save_classes(root / "classes.yaml", ClassInfo(names=["a", "b", "c"]))
    names = [f"f{i}" for i in range(4)]
    for n in names:
        write_sample(root, n, rgb=rng.integers(0, 256, (36, 48, 3), dtype=np.uint8),
                     depth=rng.integers(500, 4000, (36, 48)).astype(np.uint16),
                     label=rng.integers(0, 3, (36, 48)).astype(np.uint8))
    write_split(root, "train_labeled", names)
    return root


@pytest.mark.parametrize("name", ["synthetic_sup", "synthetic_cps"])
def test_two_process_training_equals_single_process_training(name, tmp_path):
    """2 ranks x batch 1 = 1 rank x batch 2, when nothing depends on the per-rank batch.

    ``synthetic_cps``: the two CPS networks in one DDP wrap (labeled rows only: this data has no
    unlabeled split); the exported network A and both networks of the state must agree.

    That needs frozen BatchNorm (per-rank batch statistics otherwise), no dropout (its draws
    derive from the rank), crops without padding and OHEM keeping every pixel (per-rank means
    of equal pixel counts). With the defaults the runs differ slightly; the README says so.
    """
    from safetensors.torch import load_file

    from m3l_core.train.config import load_config
    from m3l_core.train.steps import TAG_INIT, derive_seed
    from m3l_core.train.trainer import train

    data = _no_ignore_dataset(tmp_path / "data")
    sets = [*TINY, "max_iters=2", "eval_every=0", "save_every=0", "data.scales=[1.0]", "model.freeze_bn=true",
            "model.drop_path_rate=0", "model.decoder_dropout=0", "loss.ohem_thresh=1.0", "optim.lr=1e-3",
            "unlabeled_batch=0"]
    single = load_config(CONFIGS / f"{name}.yaml", [*sets, "labeled_batch=2"], extra={"data": {"root": str(data)}})
    train(single, tmp_path / "single", device="cpu")
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "training" / "train_m3l.py"), "--config", str(CONFIGS / f"{name}.yaml"),
           "--data", str(data), "--out", str(tmp_path / "ddp"), "--device", "cpu",
           *sum((["--set", s] for s in [*sets, "labeled_batch=1"]), [])]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a = load_file(str(tmp_path / "single" / "last.safetensors"))
    b = load_file(str(tmp_path / "ddp" / "last.safetensors"))
    torch.manual_seed(derive_seed(single.seed, TAG_INIT))  # the trainer's initial weights
    init = LinearFusionSegFormer(single.model.build(3)).state_dict()
    moved = max(float((a[k] - init[k]).abs().max()) for k in a if a[k].is_floating_point())
    diff = max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())
    assert moved > 1e-3  # training moved the weights, so the comparison can fail
    # Float summation order differs (DDP averages per-rank gradients); Adam's first steps scale
    # near-zero gradients up, so a few weights differ by ~1e-5. Wrong samples per rank or
    # per-rank statistics would differ by the size of a step (~1e-3).
    assert diff < 0.02 * moved, (diff, moved)
    if name == "synthetic_cps":
        sa, sb = (load_file(str(next((tmp_path / r / "state").glob("student-*.safetensors")))) for r in ("single", "ddp"))
        assert any(k.startswith("nets.1.") for k in sa)
        diff2 = max(float((sa[k] - sb[k]).abs().max()) for k in sa if sa[k].is_floating_point())
        assert diff2 < 0.02 * moved, (diff2, moved)
    losses = [[json.loads(l)["loss"] for l in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
              for r in ("single", "ddp")]
    assert len(losses[0]) == 2 and losses[0] == pytest.approx(losses[1], rel=1e-5)
