#!/usr/bin/env python3
"""``num_threads`` side by side: auto vs the library default vs 1 thread, without and with a parallel load.

    python scripts/benchmark_speed_threads.py [--checkpoint CKPT] [--out docs/threads_run.md]

``Segmenter.predict`` on a 640x480 RGB-D frame, round-robin over the settings (torch and
OpenVINO backends), medians. "library default" is what the backend does unasked: torch's
``get_num_threads()`` at start-up (every core) and OpenVINO's default (every core).
"auto" is ``num_threads=0`` (m3l_core.threads: half the usable cores, at least 1).
The parallel load is a second process multiplying matrices with torch on every core,
a stand-in for a second model, a training job or a busy ROS graph on the same computer.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
LOAD_CODE = ("import torch\na = torch.randn(512, 512)\n"
             "while True:\n    a = (a @ a).tanh()\n")


def settings(cores: int) -> list[tuple[str, str, int]]:
    from m3l_core.threads import resolve_threads

    return [(b, label, n) for b in ("torch", "openvino")
            for label, n in (("auto", resolve_threads(0)), ("library default", cores), ("1 thread", 1))]


def measure(checkpoint: str, rounds: int) -> list[dict]:
    from m3l_core.inference import Segmenter

    cores = torch.get_num_threads()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    depth = rng.integers(500, 5000, (480, 640)).astype(np.uint16)
    variants = []
    for backend, label, n in settings(cores):
        seg = Segmenter.from_checkpoint(checkpoint, device="cpu", backend=backend, num_threads=n)
        seg.predict(rgb, depth)
        variants.append(dict(backend=backend, setting=label, threads=n, seg=seg, ms=[]))
    for r in range(rounds):
        shift = r % len(variants)
        for v in variants[shift:] + variants[:shift]:
            torch.set_num_threads(v["threads"])
            t0 = time.perf_counter()
            v["seg"].predict(rgb, depth)
            v["ms"].append((time.perf_counter() - t0) * 1000)
    return [dict(backend=v["backend"], setting=v["setting"], threads=v["threads"], median_ms=statistics.median(v["ms"]),
                 p90_ms=float(np.percentile(v["ms"], 90))) for v in variants]


def main(args: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "m3l_ros" / "models" / "demo.safetensors"))
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--out", default=None)
    try:
        ns = ap.parse_args(args)
    except SystemExit as e:
        return int(e.code or 0)
    results = {}
    for loaded in (False, True):
        proc = None
        if loaded:
            proc = subprocess.Popen([sys.executable, "-c", LOAD_CODE], stdout=subprocess.DEVNULL)
            time.sleep(2)
        try:
            results[loaded] = measure(ns.checkpoint, ns.rounds)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(10)
        print(f"{'with' if loaded else 'without'} parallel load: load average {os.getloadavg()[0]:.1f}", flush=True)
    lines = [f"`Segmenter.predict`, `{Path(ns.checkpoint).name}`, 640x480 RGB-D, {os.cpu_count()} cores, median "
             f"(p90) of {ns.rounds} round-robin runs; machine shared with other users (load average "
             f"{os.getloadavg()[0]:.1f} at the end).", "",
             "| backend | setting | threads | no extra load: median ms (p90) | with a parallel load: median ms (p90) |",
             "|---|---|---:|---:|---:|"]
    for a, b in zip(results[False], results[True]):
        lines.append(f"| {a['backend']} | {a['setting']} | {a['threads']} | {a['median_ms']:.1f} ({a['p90_ms']:.1f}) | "
                     f"{b['median_ms']:.1f} ({b['p90_ms']:.1f}) |")
    md = "\n".join(lines) + "\n"
    print(md)
    if ns.out:
        Path(ns.out).write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
