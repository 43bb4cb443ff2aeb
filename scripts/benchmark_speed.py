#!/usr/bin/env python3
"""Speed of every backend, side by side in ONE run: round-robin, medians, ratios printed.

    python scripts/benchmark_speed.py                                  # the full matrix (slow)
    python scripts/benchmark_speed.py --backbones mit_b0 --threads 2 --rounds 3 --out /tmp/b.md

Each variant is ``Segmenter.predict`` on a 480x640 synthetic RGB-D frame (preprocessing, the
network and the argmax included) for: backbone (MiT-B0, MiT-B2) x model (uni-modal RGB
SegFormer, Linear Fusion RGB-D) x threads (1, 2) x backend/precision (torch fp32/bf16, ONNX
Runtime fp32, OpenVINO fp32/bf16; with ``--device cuda``: torch fp32/fp16 and TensorRT fp16).
Models have seeded random weights (no trained MiT-B2 is shipped); they are saved as
checkpoints with a 480x640 input size and loaded through ``Segmenter.from_checkpoint``, so the
real export path (and its conversion time) is measured.

Round-robin: every round runs every variant once, in a rotated order; the medians over rounds
are reported. Load-aware: the 1-minute load average and this process's CPU time per call are
recorded, so a loaded machine shows up in the output instead of in a silent bias.
Label agreement is measured against torch fp32 of the same model on the same frames.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from m3l_core.checkpoint import save_checkpoint
from m3l_core.inference import Segmenter
from m3l_core.model import LinearFusionSegFormer, ModelConfig
from m3l_core.preprocess import Preprocessing

# (backend, precision) in report order; torch fp32 first: everything is compared with it.
CPU_VARIANTS = (("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("openvino", "fp32"),
                ("openvino", "bf16"))
GPU_VARIANTS = (("torch", "fp32"), ("torch", "fp16"), ("tensorrt", "fp16"))
BACKEND_VARIANTS = CPU_VARIANTS + GPU_VARIANTS[1:]
KINDS = {"uni": ("rgb",), "LF": ("rgb", "depth")}


@dataclass
class Variant:
    backbone: str
    kind: str
    threads: int
    backend: str
    precision: str
    load_s: float = 0.0
    ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    agreement: float | None = None

    @property
    def name(self) -> str:
        return f"{self.backbone} {self.kind} {self.threads}t {self.backend} {self.precision}"

    @property
    def median(self) -> float:
        return statistics.median(self.ms)


def make_checkpoint(folder: Path, backbone: str, kind: str, size: tuple[int, int], num_classes: int = 13) -> Path:
    torch.manual_seed(0)
    mods = KINDS[kind]
    model = LinearFusionSegFormer(ModelConfig(backbone=backbone, num_classes=num_classes, modalities=mods,
                                              missing_token=len(mods) == 2, drop_path_rate=0.0))
    path = folder / f"{backbone}_{kind}.safetensors"
    save_checkpoint(path, model.eval(), class_names=[f"c{i}" for i in range(num_classes)],
                    preprocessing=Preprocessing(input_size=size))
    return path


def frames(n: int, size: tuple[int, int]) -> list[dict]:
    from m3l_core.data.synthetic import render_frame

    rng = np.random.default_rng(0)
    return [render_frame(rng, size[0], size[1]) for _ in range(n)]


def load_avg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def machine() -> str:
    cpu = platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import onnxruntime
    import openvino

    return (f"{cpu}, {os.cpu_count()} logical cores, Python {platform.python_version()}, torch {torch.__version__}, "
            f"onnxruntime {onnxruntime.__version__}, openvino {openvino.__version__.split('-')[0]}")


def run(args) -> dict:
    size = (args.height, args.width)
    data = frames(args.frames, size)
    segs: dict[str, Segmenter] = {}
    variants: list[Variant] = []
    tmp = Path(tempfile.mkdtemp(prefix="m3l_speed_"))
    for bb in args.backbones:
        for kind in args.kinds:
            ckpt = make_checkpoint(tmp, bb, kind, size)
            for n in args.threads:
                ref_labels = None
                for backend, precision in BACKEND_VARIANTS:
                    if (backend, precision) not in args.variants:
                        continue
                    v = Variant(bb, kind, n, backend, precision)
                    t0 = time.perf_counter()
                    seg = Segmenter.from_checkpoint(ckpt, device=args.device, precision=precision, backend=backend,
                                                    num_threads=n)
                    v.load_s = time.perf_counter() - t0
                    labels = [seg.predict(rgb=f["rgb"], depth=f["depth"] if kind == "LF" else None) for f in data]
                    if ref_labels is None and (backend, precision) == ("torch", "fp32"):
                        ref_labels = labels
                    if ref_labels is not None:
                        v.agreement = float(np.mean([(a == b).mean() for a, b in zip(labels, ref_labels)]))
                    segs[v.name] = seg
                    variants.append(v)
                    print(f"loaded {v.name:40s} in {v.load_s:6.1f} s   labels = torch fp32: "
                          f"{'-' if v.agreement is None else f'{100 * v.agreement:.2f} %'}", flush=True)
    loads = []
    for r in range(args.rounds):
        loads.append(load_avg())
        shift = r % len(variants)
        for v in variants[shift:] + variants[:shift]:  # rotated: no variant always runs first/last
            seg = segs[v.name]
            torch.set_num_threads(v.threads)  # the torch runners share the process-wide setting
            f = data[r % len(data)]
            c0, t0 = time.process_time(), time.perf_counter()
            seg.predict(rgb=f["rgb"], depth=f["depth"] if v.kind == "LF" else None)
            t1, c1 = time.perf_counter(), time.process_time()
            if r >= args.warmup_rounds:
                v.ms.append((t1 - t0) * 1000)
                v.cpu_ms.append((c1 - c0) * 1000)
        print(f"round {r + 1}/{args.rounds} done (load average {loads[-1]:.2f})", flush=True)
    return dict(machine=machine(), size=size, rounds=args.rounds - args.warmup_rounds, loadavg=loads,
                variants=[asdict(v) | {"name": v.name, "median_ms": v.median} for v in variants])


def to_markdown(res: dict) -> str:
    vs = res["variants"]
    by = {(v["backbone"], v["kind"], v["threads"], v["backend"], v["precision"]): v for v in vs}
    loads = [x for x in res["loadavg"] if x == x]
    lines = [f"Machine: {res['machine']}.", "",
             f"Input {res['size'][0]}x{res['size'][1]}, batch 1, `Segmenter.predict` (preprocessing + network + argmax), "
             f"median of {res['rounds']} round-robin rounds; 1-minute load average during the run "
             f"{min(loads):.1f}-{max(loads):.1f} (2 cores shared with other users).", "",
             "| backbone | model | threads | backend | median ms | CPU ms | x vs torch fp32 | labels = torch fp32 | load s |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for v in vs:
        base = by.get((v["backbone"], v["kind"], v["threads"], "torch", "fp32"))
        speed = f"{base['median_ms'] / v['median_ms']:.2f}" if base else "-"
        agree = "-" if v["agreement"] is None else f"{100 * v['agreement']:.2f} %"
        lines.append(f"| {v['backbone']} | {v['kind']} | {v['threads']} | {v['backend']} {v['precision']} | "
                     f"{v['median_ms']:.0f} | {statistics.median(v['cpu_ms']):.0f} | {speed} | {agree} | {v['load_s']:.1f} |")
    lines += ["", "LF / uni-modal time ratio per backend (same backbone and threads):", "",
              "| backbone | threads | backend | uni ms | LF ms | LF / uni |", "|---|---:|---|---:|---:|---:|"]
    for v in vs:
        if v["kind"] != "LF":
            continue
        uni = by.get((v["backbone"], "uni", v["threads"], v["backend"], v["precision"]))
        if uni:
            lines.append(f"| {v['backbone']} | {v['threads']} | {v['backend']} {v['precision']} | "
                         f"{uni['median_ms']:.0f} | {v['median_ms']:.0f} | {v['median_ms'] / uni['median_ms']:.2f} |")
    return "\n".join(lines) + "\n"


def main(args: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["mit_b0", "mit_b2"])
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N] (scripts/gpu_check.sh)")
    ap.add_argument("--variants", nargs="+", default=None,
                    help="backend:precision pairs (default: all CPU ones on the CPU, "
                         "torch:fp32 torch:fp16 tensorrt:fp16 on CUDA)")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--frames", type=int, default=3, help="synthetic frames (agreement is over all of them)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--warmup-rounds", type=int, default=1)
    ap.add_argument("--out", default=None, help="write Markdown here (and JSON next to it)")
    try:
        ns = ap.parse_args(args)
        default = CPU_VARIANTS if ns.device == "cpu" else GPU_VARIANTS
        ns.variants = [tuple(v.split(":")) for v in ns.variants] if ns.variants else list(default)
        bad = [v for v in ns.variants if v not in BACKEND_VARIANTS]
        if bad or ns.rounds <= ns.warmup_rounds or min(ns.threads) < 1:
            ap.error(f"unknown variants {bad}" if bad else "need --rounds > --warmup-rounds and --threads >= 1")
    except SystemExit as e:
        return int(e.code or 0)
    try:
        res = run(ns)
    except KeyboardInterrupt:
        return 130
    md = to_markdown(res)
    print(md)
    if ns.out:
        out = Path(ns.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(md)
        out.with_suffix(".json").write_text(json.dumps(res, indent=1))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
