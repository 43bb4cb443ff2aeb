#!/usr/bin/env python3
"""Evaluate the bundled demo model on a freshly generated synthetic test split.

    python scripts/evaluate_demo_model.py                       # writes docs/demo_model/
    python scripts/evaluate_demo_model.py --count 200 --out /tmp/demo_eval

Generates ``--count`` test frames with the synthetic generator (deterministic for
``--seed``; the seed differs from every training seed), runs ``training/evaluate.py``
on them (RGB-D, RGB only, depth only, MM-Robust), and records the split's settings in
``metrics.json`` under ``info.synthetic_split`` so that ``test/test_demo_model.py``
can regenerate the same split and check the committed numbers.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "m3l_ros" / "models" / "demo.safetensors"))
    ap.add_argument("--count", type=int, default=32)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", default=str(ROOT / "docs" / "demo_model"))
    args = ap.parse_args(argv)

    from m3l_core.data.synthetic import write_folder_dataset

    sys.path.insert(0, str(ROOT / "training"))
    import evaluate as evaluator  # training/evaluate.py

    with tempfile.TemporaryDirectory() as tmp:
        write_folder_dataset(tmp, counts={"test": args.count}, height=args.height, width=args.width,
                             seed=args.seed, progress=False)
        evaluator.main(["--checkpoint", args.checkpoint, "--data", tmp, "--split", "test", "--out", args.out,
                        "--num-examples", "4"])
    path = Path(args.out) / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics.setdefault("info", {})["synthetic_split"] = dict(count=args.count, height=args.height, width=args.width,
                                                              seed=args.seed, generator="m3l_core.data.synthetic")
    metrics["info"]["data"] = "fresh synthetic split (see synthetic_split)"
    path.write_text(json.dumps(metrics, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
