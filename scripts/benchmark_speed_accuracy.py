#!/usr/bin/env python3
"""Do the faster backends give the same labels? Every backend/precision against torch fp32.

    python scripts/benchmark_speed_accuracy.py                          # writes docs/benchmark_speed_accuracy.md
    python scripts/benchmark_speed_accuracy.py --count 8 --out /tmp/acc.md

A trained model (default: the bundled demo model) on the synthetic test split of
scripts/evaluate_demo_model.py (same generator, count, size and seed), in each evaluation
condition (RGB-D, RGB only, depth only) through ``Segmenter.predict``, i.e. the resize, the
network, the upsampling and the argmax a user gets. Per variant: the fraction of labelled
pixels whose label equals torch fp32's, and mIoU against the ground truth. The acceptance
rule for a reduced precision (issue 11): >= 99 % equal labels and |mIoU - fp32 mIoU| <= 0.5
points in every condition. Exit codes: 0 all variants pass, 1 a variant fails or errors, 2 usage.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from m3l_core.data.folder import FolderDataset
from m3l_core.data.synthetic import write_folder_dataset
from m3l_core.inference import Segmenter
from m3l_core.metrics import confusion_matrix, miou
from m3l_core.vocab import CONDITION_PRESENCE, CONDITION_TITLES

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = (("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("openvino", "fp32"),
            ("openvino", "bf16"))
MIN_AGREEMENT, MAX_MIOU_DELTA = 0.99, 0.5


def evaluate_variants(checkpoint: str, samples: list[dict], variants=VARIANTS, num_threads: int = 0) -> list[dict]:
    """Rows of (variant, condition, agreement with torch fp32, mIoU %, delta, pass)."""
    labels_ref: dict[tuple[str, int], np.ndarray] = {}
    rows = []
    for backend, precision in variants:
        seg = Segmenter.from_checkpoint(checkpoint, device="cpu", backend=backend, precision=precision,
                                        num_threads=num_threads)
        for cond, (has_rgb, has_depth) in CONDITION_PRESENCE.items():
            if not set(seg.modalities) & {m for m, on in (("rgb", has_rgb), ("depth", has_depth)) if on}:
                continue
            cm = torch.zeros(seg.num_classes, seg.num_classes, dtype=torch.int64)
            same = total = 0
            for i, s in enumerate(samples):
                pred = seg.predict(rgb=s["rgb"] if has_rgb else None, depth=s["depth"] if has_depth else None)
                gt = torch.from_numpy(s["label"].astype(np.int64))
                cm += confusion_matrix(torch.from_numpy(pred), gt, seg.num_classes, seg.preprocessing.ignore_index)
                valid = s["label"] < seg.num_classes
                key = (cond, i)
                if (backend, precision) == VARIANTS[0]:
                    labels_ref[key] = pred
                ref = labels_ref.get(key)
                if ref is not None:
                    same += int((pred == ref)[valid].sum())
                    total += int(valid.sum())
            rows.append(dict(backend=backend, precision=precision, condition=cond,
                             agreement=same / total if total else None, miou=100 * miou(cm)))
    base = {r["condition"]: r["miou"] for r in rows if (r["backend"], r["precision"]) == VARIANTS[0]}
    for r in rows:
        r["miou_delta"] = r["miou"] - base[r["condition"]]
        r["passes"] = (r["agreement"] is not None and r["agreement"] >= MIN_AGREEMENT
                       and abs(r["miou_delta"]) <= MAX_MIOU_DELTA)
    return rows


def to_markdown(rows: list[dict], split: dict, checkpoint: str) -> str:
    lines = [f"Model `{Path(checkpoint).name}` on the synthetic test split ({split['count']} frames, "
             f"{split['height']}x{split['width']}, seed {split['seed']}, `{split['generator']}`), "
             "`Segmenter.predict`, labels compared on labelled pixels.", "",
             "| backend | precision | condition | labels = torch fp32 | mIoU % | delta mIoU (points) | >= 99 % and <= 0.5 |",
             "|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        agree = "-" if r["agreement"] is None else f"{100 * r['agreement']:.2f} %"
        lines.append(f"| {r['backend']} | {r['precision']} | {CONDITION_TITLES[r['condition']]} | {agree} | "
                     f"{r['miou']:.2f} | {r['miou_delta']:+.2f} | {'yes' if r['passes'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(args: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "m3l_ros" / "models" / "demo.safetensors"))
    ap.add_argument("--count", type=int, default=32)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=0, help="0 = auto (m3l_core.threads)")
    ap.add_argument("--out", default=None, help="Markdown file (JSON next to it)")
    try:
        ns = ap.parse_args(args)
        if ns.count < 1:
            ap.error("--count must be >= 1")
    except SystemExit as e:
        return int(e.code or 0)
    split = dict(count=ns.count, height=ns.height, width=ns.width, seed=ns.seed, generator="m3l_core.data.synthetic")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            write_folder_dataset(tmp, counts={"test": ns.count}, height=ns.height, width=ns.width, seed=ns.seed,
                                 progress=False)
            ds = FolderDataset(tmp, "test")
            samples = [ds[i] for i in range(len(ds))]
        rows = evaluate_variants(ns.checkpoint, samples, num_threads=ns.threads)
    except KeyboardInterrupt:
        return 130
    except (OSError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    md = to_markdown(rows, split, ns.checkpoint)
    print(md)
    if ns.out:
        Path(ns.out).write_text(md)
        Path(ns.out).with_suffix(".json").write_text(json.dumps(dict(split=split, rows=rows), indent=1))
    reduced = [r for r in rows if (r["backend"], r["precision"]) != VARIANTS[0]]
    return 0 if all(r["passes"] for r in reduced) else 1


if __name__ == "__main__":
    sys.exit(main())
