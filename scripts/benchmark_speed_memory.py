#!/usr/bin/env python3
"""Peak RSS of one ``Segmenter.predict`` by image size: bounded labelling vs full-resolution logits.

    python scripts/benchmark_speed_memory.py [--out docs/benchmark_speed_memory.md]

Each measurement is a fresh process: load the model, warm up on a small frame, reset the
kernel's peak-RSS counter (``/proc/self/clear_refs``), segment one RGB-D frame of the given
size, and report the peak RSS increase over the RSS just before (VmHWM - VmRSS). Methods:
``full`` upsamples float32 logits of every class to the image size and takes argmax (and
softmax for the confidence), as ``Segmenter`` did before; ``bounded`` is today's
``Segmenter.predict`` (m3l_core.inference.labels_from_logits). torch backend, 1 thread.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"640x480": (480, 640), "1080p": (1080, 1920), "4K": (2160, 3840)}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(model: str, size: str, method: str, confidence: bool) -> dict:
    """One measurement in this process (called in a fresh subprocess)."""
    import numpy as np
    import torch

    from m3l_core.checkpoint import save_checkpoint
    from m3l_core.inference import Segmenter
    from m3l_core.model import LinearFusionSegFormer, ModelConfig
    from m3l_core.preprocess import Preprocessing

    if model == "demo":
        path = ROOT / "m3l_ros" / "models" / "demo.safetensors"
    else:  # a 40-class (NYUv2-sized) MiT-B0 at 480x640, random weights
        import tempfile

        torch.manual_seed(0)
        path = Path(tempfile.mkdtemp()) / "nyu40.safetensors"
        save_checkpoint(path, LinearFusionSegFormer(ModelConfig(backbone="mit_b0", num_classes=40)).eval(),
                        class_names=[f"c{i}" for i in range(40)], preprocessing=Preprocessing(input_size=(480, 640)))
    seg = Segmenter.from_checkpoint(path, device="cpu", backend="torch", num_threads=1)
    h, w = SIZES[size]
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    depth = rng.integers(500, 5000, (h, w)).astype(np.uint16)

    def run(r, d):
        if method == "bounded":
            return seg.predict(r, d, return_confidence=confidence)
        logits = seg.logits(r, d)[0]  # (C, H, W) float32 at the image size
        if confidence:
            conf, labels = logits.softmax(0).max(0)
            return labels.numpy().astype(np.int64), conf.numpy()
        return logits.argmax(0).numpy().astype(np.int64)

    run(rgb[:64, :64], depth[:64, :64])  # warm-up: allocator and kernels
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kb("VmRSS")
    out = run(rgb, depth)
    peak = _status_kb("VmHWM")
    del out
    return dict(model=model, size=size, method=method, confidence=confidence, classes=seg.num_classes,
                input_size=list(seg.input_size), frame_mb=(rgb.nbytes + depth.nbytes) / 2**20,
                peak_increase_mb=(peak - before) / 1024)


def main(args: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["demo", "nyu40"], choices=["demo", "nyu40"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    try:
        ns = ap.parse_args(args)
    except SystemExit as e:
        return int(e.code or 0)
    if ns.child:
        print(json.dumps(child(ns.child[0], ns.child[1], ns.child[2], ns.child[3] == "1")))
        return 0
    rows = []
    for model in ns.models:
        for size in SIZES:
            for conf in (False, True):
                for method in ("full", "bounded"):
                    p = subprocess.run([sys.executable, __file__, "--child", model, size, method, str(int(conf))],
                                       capture_output=True, text=True)
                    if p.returncode != 0:
                        print(p.stderr[-2000:], file=sys.stderr)
                        return 1
                    rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
                    r = rows[-1]
                    print(f"{model:6s} {size:8s} conf={int(conf)} {method:8s} +{r['peak_increase_mb']:.0f} MB", flush=True)
    lines = ["Peak RSS increase of one `Segmenter.predict` over the RSS before it (MB; fresh process each; the "
             "input frame itself, allocated before, not included).", "",
             "| model (classes, input) | image | output | full-resolution logits (before) | bounded (now) |",
             "|---|---|---|---:|---:|"]
    for i in range(0, len(rows), 2):
        full, bounded = rows[i], rows[i + 1]
        lines.append(f"| {full['model']} ({full['classes']}, {full['input_size'][0]}x{full['input_size'][1]}) | "
                     f"{full['size']} | {'labels + confidence' if full['confidence'] else 'labels'} | "
                     f"{full['peak_increase_mb']:.0f} | {bounded['peak_increase_mb']:.0f} |")
    md = "\n".join(lines) + "\n"
    print(md)
    if ns.out:
        Path(ns.out).write_text(md)
        Path(ns.out).with_suffix(".json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
