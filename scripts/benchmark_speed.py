#!/usr/bin/env python3
"""Speed benchmark: the compared things run side by side in one run, ratios printed.

    python scripts/benchmark_speed.py                    # everything, current device
    python scripts/benchmark_speed.py --device cuda --backbones mit_b0 mit_b2
    python scripts/benchmark_speed.py --skip-node --out docs/benchmark_speed_cpu.md

Measures, at 480x640 and batch 1:
1. uni-modal SegFormer vs Linear Fusion (RGB-D) vs Linear Fusion with depth
   missing (learned token), per backbone. Runs are interleaved round-robin so
   that machine noise hits all variants alike; the median is reported.
2. fp32 vs reduced precision (bf16 on CPU; fp16 and bf16 on CUDA), with the
   fraction of pixels whose label agrees with fp32.
3. The ROS node end to end (publish -> labels received) vs the bare
   ``Segmenter.predict`` on the same frames (needs rclpy; ``--skip-node``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from m3l_core.inference import autocast, resolve_device
from m3l_core.model import LinearFusionSegFormer, ModelConfig


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(fns: dict[str, callable], device: torch.device, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Time each callable ``repeats`` times, round-robin, after ``warmup`` calls each."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) * 1000.0)
    return times


def model_pair(backbone: str, num_classes: int, device: torch.device):
    torch.manual_seed(0)
    lf = LinearFusionSegFormer(ModelConfig(backbone=backbone, num_classes=num_classes)).to(device).eval()
    torch.manual_seed(0)
    uni = LinearFusionSegFormer(ModelConfig(backbone=backbone, num_classes=num_classes, modalities=("rgb",),
                                            missing_token=False)).to(device).eval()
    return lf, uni


def bench_fusion_cost(backbones, size, device, warmup, repeats) -> list[dict]:
    h, w = size
    rows = []
    rgb = torch.randn(1, 3, h, w, device=device)
    depth = torch.randn(1, 1, h, w, device=device)
    both = torch.tensor([[True, True]], device=device)
    no_depth = torch.tensor([[True, False]], device=device)
    no_rgb = torch.tensor([[False, True]], device=device)
    for bb in backbones:
        lf, uni = model_pair(bb, 13, device)
        with torch.inference_mode():
            fns = {
                "uni-modal RGB": lambda: uni(rgb, None),
                "LF RGB-D": lambda: lf(rgb, depth, both),
                "LF depth missing": lambda: lf(rgb, depth, no_depth),
                "LF RGB missing": lambda: lf(rgb, depth, no_rgb),
            }
            t = interleaved_times(fns, device, warmup, repeats)
        base = statistics.median(t["uni-modal RGB"])
        full = statistics.median(t["LF RGB-D"])
        for name, vals in t.items():
            med = statistics.median(vals)
            rows.append(dict(backbone=bb, variant=name, median_ms=med, p90_ms=float(np.percentile(vals, 90)),
                             vs_unimodal=med / base, vs_lf_full=med / full))
        del lf, uni
    return rows


def bench_precision(backbone, size, device, warmup, repeats) -> list[dict]:
    h, w = size
    lf, _ = model_pair(backbone, 13, device)
    g = torch.Generator().manual_seed(0)
    rgb = torch.randn(1, 3, h, w, generator=g).to(device)
    depth = torch.rand(1, 1, h, w, generator=g).to(device)
    precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])

    def run(p):
        with torch.inference_mode(), autocast(device, p):
            return lf(rgb, depth)["ensemble"].float().argmax(1)

    ref = run("fp32")
    t = interleaved_times({p: (lambda p=p: run(p)) for p in precisions}, device, warmup, repeats)
    base = statistics.median(t["fp32"])
    rows = []
    for p in precisions:
        agree = float((run(p) == ref).float().mean())
        med = statistics.median(t[p])
        rows.append(dict(backbone=backbone, precision=p, median_ms=med, vs_fp32=med / base, label_agreement=agree))
    return rows


def bench_node(checkpoint: str | None, device: str, frames: int, size) -> dict:
    """End-to-end node latency vs bare Segmenter.predict on the same frames."""
    from m3l_core.inference import Segmenter

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from node_latency import measure_node_latency  # noqa: E402

    ckpt = checkpoint or str(Path(__file__).resolve().parents[1] / "m3l_ros" / "models" / "demo.safetensors")
    seg = Segmenter.from_checkpoint(ckpt, device=device)
    h, w = size
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    depth = rng.integers(500, 4000, (h, w)).astype(np.uint16)
    for _ in range(2):
        seg.predict(rgb=rgb, depth=depth)
    bare = []
    for _ in range(frames):
        t0 = time.perf_counter()
        seg.predict(rgb=rgb, depth=depth)
        bare.append((time.perf_counter() - t0) * 1000.0)
    node = measure_node_latency(ckpt, device=device, frames=frames, size=size, rgb=rgb, depth=depth)
    bare_med = statistics.median(bare)
    node_med = statistics.median(node)
    return dict(checkpoint=ckpt, frames=frames, bare_median_ms=bare_med, node_median_ms=node_med,
                node_p95_ms=float(np.percentile(node, 95)), overhead_ms=node_med - bare_med,
                ratio=node_med / bare_med)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical cores, {platform.system()}, Python {platform.python_version()}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def to_markdown(result: dict) -> str:
    lines = [f"Device: `{result['device']}` — {result['machine']}", "",
             f"Input {result['size'][0]}x{result['size'][1]}, batch 1, median of {result['repeats']} interleaved runs.", "",
             "| backbone | variant | median ms | p90 ms | x uni-modal | x LF RGB-D |", "|---|---|---|---|---|---|"]
    for r in result["fusion"]:
        lines.append(f"| {r['backbone']} | {r['variant']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | "
                     f"{r['vs_unimodal']:.2f} | {r['vs_lf_full']:.2f} |")
    lines += ["", "| backbone | precision | median ms | x fp32 | label agreement with fp32 |", "|---|---|---|---|---|"]
    for r in result["precision"]:
        lines.append(f"| {r['backbone']} | {r['precision']} | {r['median_ms']:.1f} | {r['vs_fp32']:.2f} | "
                     f"{100 * r['label_agreement']:.2f}% |")
    if result.get("node"):
        n = result["node"]
        lines += ["", "| path | median ms | |", "|---|---|---|",
                  f"| bare `Segmenter.predict` | {n['bare_median_ms']:.1f} | |",
                  f"| node end to end (publish -> labels) | {n['node_median_ms']:.1f} | p95 {n['node_p95_ms']:.1f} |",
                  f"| node overhead | {n['overhead_ms']:.1f} | x{n['ratio']:.2f} |"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--backbones", nargs="+", default=["mit_b0", "mit_b2"])
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--precision-backbone", default="mit_b0")
    ap.add_argument("--skip-node", action="store_true")
    ap.add_argument("--node-checkpoint", default=None, help="default: the bundled demo model")
    ap.add_argument("--node-frames", type=int, default=20)
    ap.add_argument("--out", default=None, help="write a Markdown table here (and JSON next to it)")
    args = ap.parse_args(argv)

    device = resolve_device(args.device)
    size = (args.height, args.width)
    result = dict(device=str(device), machine=machine(), size=size, repeats=args.repeats)
    print(f"# {result['machine']} on {device}", flush=True)
    result["fusion"] = bench_fusion_cost(args.backbones, size, device, args.warmup, args.repeats)
    for r in result["fusion"]:
        print(f"{r['backbone']:7s} {r['variant']:18s} {r['median_ms']:8.1f} ms   x{r['vs_unimodal']:.2f} vs uni-modal"
              f"   x{r['vs_lf_full']:.2f} vs LF RGB-D", flush=True)
    result["precision"] = bench_precision(args.precision_backbone, size, device, args.warmup, args.repeats)
    for r in result["precision"]:
        print(f"{r['backbone']:7s} {r['precision']:5s} {r['median_ms']:8.1f} ms   x{r['vs_fp32']:.2f} vs fp32"
              f"   labels agree {100 * r['label_agreement']:.2f}%", flush=True)
    if not args.skip_node:
        result["node"] = bench_node(args.node_checkpoint, str(device), args.node_frames, size)
        n = result["node"]
        print(f"node end-to-end {n['node_median_ms']:.1f} ms vs bare {n['bare_median_ms']:.1f} ms: "
              f"overhead {n['overhead_ms']:.1f} ms (x{n['ratio']:.2f})", flush=True)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(to_markdown(result))
        out.with_suffix(".json").write_text(json.dumps(result, indent=2))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
