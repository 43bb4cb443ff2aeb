#!/usr/bin/env python3
"""Measure every difference to the reference implementation listed in docs/reference_deviations.md.

    python scripts/measure_reference_deviations.py [--count 32] [--out docs/reference_deviations.json]

Uses the bundled demo model (``m3l_ros/models/demo.safetensors``, trained with the project's
settings) on a fresh synthetic test split (the split ``scripts/evaluate_demo_model.py`` uses):

* ``metrics``: mIoU per condition when ONE setting is switched to the reference's (and all together),
  plus argmax agreement and the largest logit change against the checkpoint's own settings;
* ``fixed_batch``: OHEM loss with both ``min_kept`` sizings, the teacher's pseudo-labels in eval mode
  vs the reference's train-mode teacher, frozen vs batch-statistics BatchNorm, the LayerNorm eps;
* ``analytic``: weight-decay shrinkage over the paper schedule, token init, padding value, fuse-conv init.

Single-threaded by default (the machine is shared).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from m3l_core.checkpoint import load_checkpoint
from m3l_core.evaluation import present_mask, summarize_results
from m3l_core.metrics import confusion_matrix
from m3l_core.model import LinearFusionSegFormer, upsample_logits
from m3l_core.preprocess import (IMAGENET_MEAN, IMAGENET_STD, depth_bounds, depth_input, depth_to_metres,
                                 normalize_depth, resize_nearest, rgb_input)
from m3l_core.train.losses import compute_losses, heads_for, min_kept_count
from m3l_core.train.masking import plan_batch
from m3l_core.train.optim import get_lr

CONDITIONS = ("rgbd", "rgb", "depth")


def load_frames(root: str, split: str = "test") -> list[dict]:
    from m3l_core.data.folder import FolderDataset

    ds = FolderDataset(root, split, labeled=True)
    return [ds[i] for i in range(len(ds))], ds.classes


def run(model: LinearFusionSegFormer, frames, pre, *, align: bool, weights: tuple[float, float] | None = None):
    """Per condition: list of upsampled logits (1, C, H, W) per frame."""
    model = copy.deepcopy(model).eval()
    model.config = replace(model.config, align_corners=align)
    if weights is not None:
        with torch.no_grad():
            model.ensemble_logits.copy_(torch.log(torch.tensor(weights)))
    out = {c: [] for c in CONDITIONS}
    with torch.no_grad():
        for f in frames:
            rgb = torch.from_numpy(rgb_input(f["rgb"], pre))[None]
            depth = torch.from_numpy(depth_input(f["depth"], pre))[None]
            for c in CONDITIONS:
                logits = model(rgb, depth, present_mask(c, 1))["ensemble"]
                out[c].append(upsample_logits(logits, f["label"].shape, align_corners=align))
    return out


def score(logits, frames, names, shards: int = 1):
    n = len(names)
    res = {}
    for c in CONDITIONS:
        cms = [torch.zeros(n, n, dtype=torch.int64) for _ in range(shards)]
        for i, (lg, f) in enumerate(zip(logits[c], frames)):
            lab = torch.from_numpy(np.asarray(f["label"]).astype(np.int64))
            cms[i % shards] += confusion_matrix(lg.argmax(1)[0], lab, n, 255)
        if shards == 1:
            res[c] = cms[0]
        else:  # the reference: mIoU per rank, then the mean of those numbers
            res[c] = [summarize_results({c: cm}, names)[c]["miou"] for cm in cms]
    if shards > 1:
        return {c: float(np.mean(v)) for c, v in res.items()}
    s = summarize_results(res, names)
    return {k: (round(s[k]["miou"], 2) if s.get(k) else None) for k in (*CONDITIONS, "mm_robust")}


def compare(a, b):
    agree, total, diff = 0, 0, 0.0
    for c in CONDITIONS:
        for x, y in zip(a[c], b[c]):
            agree += int((x.argmax(1) == y.argmax(1)).sum())
            total += x[:, 0].numel()
            diff = max(diff, float((x - y).abs().max()))
    return {"argmax_agreement_pct": round(100.0 * agree / total, 3), "max_abs_logit_diff": float(f"{diff:.3g}")}


def measure_metrics(ckpt, frames, names):
    model, pre = ckpt.model, ckpt.preprocessing
    base = run(model, frames, pre, align=False)
    eps_model = LinearFusionSegFormer(replace(model.config, layernorm_eps=1e-6))
    eps_model.load_state_dict(model.state_dict())
    variants = {
        "align_corners=True": dict(align=True),
        "layernorm_eps=1e-6": dict(model=eps_model),
        "depth_norm=minmax_all": dict(pre=replace(pre, depth_norm="minmax_all")),
        "nearest_align=corner": dict(pre=replace(pre, nearest_align="corner")),
        "ensemble weights 0.5/0.5 (untrained alpha)": dict(weights=(0.5, 0.5)),
    }
    variants["all reference settings"] = dict(align=True, model=eps_model,
                                              pre=replace(pre, depth_norm="minmax_all", nearest_align="corner"))
    out = {"checkpoint settings": {"miou": score(base, frames, names)}}
    for name, v in variants.items():
        lg = run(v.get("model", model), frames, v.get("pre", pre), align=v.get("align", False), weights=v.get("weights"))
        out[name] = {"miou": score(lg, frames, names), **compare(base, lg)}
    out["per-rank mean of mIoU (2 ranks) vs reduced matrix"] = {
        "reduced": score(base, frames, names), "mean_of_2_ranks": {k: round(v, 2) for k, v in score(base, frames, names, shards=2).items()}}
    w = ckpt.model.ensemble_weights().detach().tolist()
    out["trained ensemble weights [rgb, depth]"] = [round(x, 4) for x in w]
    # input-level differences
    d_norm, d_align = [], []
    for f in frames:
        d_norm.append(float(np.abs(depth_input(f["depth"], replace(pre, depth_norm="minmax_all"))
                                   - depth_input(f["depth"], pre)).mean()))
        d_align.append(float(np.abs(depth_input(f["depth"], replace(pre, nearest_align="corner"))
                                    - depth_input(f["depth"], pre)).mean()))
    # Training: the reference normalises the full original frame, TrainTransform the scaled one.
    ref_pre = replace(pre, depth_norm="minmax_all", nearest_align="corner")
    d_bounds = []
    for f in frames:
        m = depth_to_metres(f["depth"])
        for sc in (0.5, 0.75):
            small = resize_nearest(m, (round(m.shape[0] * sc), round(m.shape[1] * sc)), align="corner")
            d_bounds.append(float(np.abs(normalize_depth(small, ref_pre, bounds=depth_bounds(m, ref_pre))
                                         - normalize_depth(small, ref_pre)).mean()))
    inv = [float(np.isnan(depth_to_metres(f["depth"])).mean()) for f in frames]
    out["inputs"] = {"mean_abs_depth_input_change_minmax_all": round(float(np.mean(d_norm)), 4),
                     "mean_abs_depth_input_change_corner_alignment": round(float(np.mean(d_align)), 4),
                     "mean_abs_train_depth_change_bounds_of_scaled_vs_original_frame": round(float(np.mean(d_bounds)), 5),
                     "mean_invalid_depth_fraction": round(float(np.mean(inv)), 4)}
    return out


def measure_fixed_batch(ckpt, frames):
    torch.manual_seed(0)
    model, pre = ckpt.model, ckpt.preprocessing
    n_lab = 4
    fs = frames[:n_lab]
    rgb = torch.stack([torch.from_numpy(rgb_input(f["rgb"], pre)) for f in fs])
    depth = torch.stack([torch.from_numpy(depth_input(f["depth"], pre)) for f in fs])
    label = torch.stack([torch.from_numpy(resize_nearest(np.asarray(f["label"]).astype(np.int64), pre.input_size))
                         for f in fs])
    plan = plan_batch("m3l", n_lab, 0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model.eval()(rgb[plan.source], depth[plan.source], plan.present)
        pseudo = out["ensemble"].argmax(1)[: n_lab]
    heads = heads_for(model.modalities)
    target = label[plan.source[plan.supervised]]
    res = {}
    # As is (a weak model: most pixels are below the 0.7 threshold anyway), and with +5 added to the
    # ground-truth logit of every labeled pixel: a confident late-training-like batch, where fewer pixels
    # than min_kept fall below the threshold and min_kept decides what is kept.
    gt = label[plan.source]
    boost = torch.zeros_like(out["ensemble"]).scatter_(1, gt.clamp(max=out["ensemble"].shape[1] - 1)[:, None], 5.0)
    boost = boost * (gt != 255)[:, None]
    for tag, add in (("", 0.0), ("_late_training_like", 1.0)):
        sharp = {k: v + add * boost for k, v in out.items()}
        for basis in ("supervised_rows", "labeled_batch"):
            with torch.no_grad():
                losses = compute_losses(sharp, plan, label, pseudo, heads=heads, min_kept_basis=basis)
            res[f"ohem_sup_loss_{basis}{tag}"] = round(float(losses["sup"]), 4)
        p = sharp["ensemble"].softmax(1).gather(1, label[plan.source].clamp(max=sharp["ensemble"].shape[1] - 1)[:, None])
        valid = label[plan.source] != 255
        res[f"fraction_of_pixels_below_ohem_thresh{tag}"] = round(float((p[:, 0][valid] <= 0.7).float().mean()), 4)
    for basis in ("supervised_rows", "labeled_batch"):
        res[f"ohem_min_kept_{basis}"] = min_kept_count(0.08, target, n_lab, basis)
    # Teacher: project = eval mode; reference = train mode (dropout, drop-path on), BatchNorm frozen.
    with torch.no_grad():
        t_eval = model.eval()(rgb, depth)["ensemble"].argmax(1)
        agree = []
        for seed in range(3):
            torch.manual_seed(seed)
            ref_teacher = LinearFusionSegFormer(replace(model.config, freeze_bn=True, drop_path_rate=0.1))
            ref_teacher.load_state_dict(model.state_dict())
            ref_teacher.train()
            t_train = ref_teacher(rgb, depth)["ensemble"].argmax(1)
            agree.append(float((t_train == t_eval).float().mean()) * 100)
        res["teacher_pseudo_label_agreement_eval_vs_train_mode_pct"] = round(float(np.mean(agree)), 2)
        # BatchNorm in train mode (batch statistics) vs frozen (running statistics), one forward
        def no_dropout_forward(frozen_bn: bool) -> torch.Tensor:
            net = copy.deepcopy(model)
            net.config = replace(net.config, freeze_bn=frozen_bn)
            net.train()
            for m in net.modules():
                if "Drop" in type(m).__name__:  # Dropout, Dropout2d, DropPath: only BatchNorm differs
                    m.eval()
            return net(rgb, depth)["ensemble"]

        a, b = no_dropout_forward(False), no_dropout_forward(True)
        res["bn_batch_vs_running_stats_mean_abs_logit_diff"] = round(float((a - b).abs().mean()), 4)
        res["bn_batch_vs_running_stats_argmax_agreement_pct"] = round(float((a.argmax(1) == b.argmax(1)).float().mean()) * 100, 2)
    return res


def measure_analytic():
    res = {}
    for name, n in (("stanford", 15370), ("sun", 14850)):
        shrink = math.prod(1.0 - get_lr(1e-4, t, n, 0.9) * 1e-4 for t in range(n))
        res[f"weight_decay_1e-4_total_shrink_of_biases_and_token_{name}"] = float(f"{1 - shrink:.3g}")
    torch.manual_seed(0)
    res["token_init_std_reference_randn_64d"] = round(float(torch.randn(64).std()), 3)
    t = torch.empty(64)
    torch.nn.init.trunc_normal_(t, std=0.02)
    res["token_init_std_project_trunc_normal_64d"] = round(float(t.std()), 4)
    res["rgb_pad_value_normalised_reference_black"] = [round(-m / s, 3) for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    res["rgb_pad_value_normalised_project"] = [0.0, 0.0, 0.0]
    from m3l_core.data.transforms import PAPER_SCALES

    for (h, w), crop in (((530, 730), 500), ((427, 561), 500), ((1080, 1080), 540)):
        padded = [1 - min(round(h * sc), crop) * min(round(w * sc), crop) / crop ** 2 for sc in PAPER_SCALES]
        res[f"padded_fraction_of_train_crops_{h}x{w}_crop{crop}"] = round(float(np.mean(padded)), 4)
    conv = torch.nn.Conv2d(1024, 256, 1, bias=False)
    res["fuse_conv_init_std_project_default"] = round(float(conv.weight.detach().std()), 5)
    res["fuse_conv_init_std_reference_kaiming_fan_out_relu"] = round(math.sqrt(2.0 / 256), 5)
    return res


REFERENCE_TRAINING = ["model.freeze_bn=true", "model.token_init=randn", "model.layernorm_eps=1.0e-6",
                      "model.align_corners=true", "loss.ohem_min_kept_basis=labeled_batch",
                      "data.depth_norm=minmax_all", "data.nearest_align=corner"]


TRAIN_VARIANTS = {"project settings": [], "reference settings": REFERENCE_TRAINING,
                  "project settings + freeze_bn": ["model.freeze_bn=true"]}


def measure_training(steps: int, seed: int, variants: list[str]) -> dict:
    """Short M3L runs on synthetic data (config/train/synthetic_m3l.yaml): project vs reference options."""
    from m3l_core.data.synthetic import write_folder_dataset
    from m3l_core.train.config import load_config
    from m3l_core.train.trainer import train

    out = {"steps": steps, "config": "config/train/synthetic_m3l.yaml", "data": "120 labeled + 120 unlabeled + 48 val"}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_folder_dataset(data, counts={"train_labeled": 120, "train_unlabeled": 120, "val": 48}, height=240,
                             width=320, seed=seed, progress=False)
        for name in variants:
            sets = TRAIN_VARIANTS[name]
            cfg = load_config(ROOT / "config/train/synthetic_m3l.yaml",
                              [f"max_iters={steps}", f"eval_every={steps}", f"save_every={steps}", "progress=false",
                               "data.num_workers=0", f"data.root={data}", *sets])
            res = train(cfg, Path(tmp) / name.replace(" ", "_"), device="cpu")
            val = res.last_val or {}
            out[name] = {k: (round(val[k]["miou"], 2) if val.get(k) else None)
                         for k in ("rgbd", "rgb", "depth", "mm_robust")}
            out[name]["final_train_loss"] = round(res.history[-1]["loss"], 4) if res.history else None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "m3l_ros" / "models" / "demo.safetensors"))
    ap.add_argument("--count", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "docs" / "reference_deviations.json"))
    ap.add_argument("--train-steps", type=int, default=0, help="also compare short synthetic M3L runs (0: skip)")
    ap.add_argument("--train-variants", default=",".join(TRAIN_VARIANTS),
                    help=f"comma-separated subset of {list(TRAIN_VARIANTS)}")
    args = ap.parse_args(argv)
    from m3l_core.threads import configure_threads

    configure_threads(args.threads)
    from m3l_core.data.synthetic import write_folder_dataset

    ckpt = load_checkpoint(args.checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        write_folder_dataset(tmp, counts={"test": args.count}, height=240, width=320, seed=args.seed, progress=False)
        frames, classes = load_frames(tmp)
    names = list(ckpt.class_names)
    result = {"checkpoint": Path(args.checkpoint).name, "split": dict(count=args.count, height=240, width=320,
                                                                      seed=args.seed),
              "metrics": measure_metrics(ckpt, frames, names), "fixed_batch": measure_fixed_batch(ckpt, frames),
              "analytic": measure_analytic()}
    if args.train_steps:
        variants = [v.strip() for v in args.train_variants.split(",") if v.strip()]
        unknown = [v for v in variants if v not in TRAIN_VARIANTS]
        if unknown:
            ap.error(f"unknown --train-variants {unknown}; choose from {list(TRAIN_VARIANTS)}")
        result["training"] = measure_training(args.train_steps, seed=args.seed + 1, variants=variants)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
