#!/usr/bin/env python3
"""Evaluate the bundled demo model on a freshly generated synthetic test split.

    python scripts/evaluate_demo_model.py                       # writes docs/demo_model/
    python scripts/evaluate_demo_model.py --count 200 --out /tmp/demo_eval

Generates ``--count`` test frames with the synthetic generator (deterministic for
``--seed``; the seed differs from every training seed), evaluates the checkpoint on them
with ``m3l-evaluate`` (RGB-D, RGB only, depth only, MM-Robust), and writes the report to
``--out`` with the split's settings under ``synthetic_split`` in ``metrics.json``, so that
``test/test_demo_model.py`` can regenerate the same split and check the committed numbers.
Exit codes: 0 done, 1 evaluation or writing failed, 2 usage error, 130 Ctrl-C.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from m3l_core.cli.common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK
from m3l_core.cli.evaluate import main as evaluate_main
from m3l_core.data.synthetic import write_folder_dataset
from m3l_core.report import ROWS, load_metrics, write_metrics

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = "m3l_core.data.synthetic"


def main(args: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "m3l_ros" / "models" / "demo.safetensors"))
    ap.add_argument("--count", type=int, default=32, help="test frames to generate")
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", default=str(ROOT / "docs" / "demo_model"))
    ns = ap.parse_args(args)
    if ns.count < 1:
        ap.error("--count must be >= 1")
    split = dict(count=ns.count, height=ns.height, width=ns.width, seed=ns.seed, generator=GENERATOR)
    out = Path(ns.out)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data, scratch = Path(tmp) / "data", Path(tmp) / "eval"
            write_folder_dataset(data, counts={"test": ns.count}, height=ns.height, width=ns.width, seed=ns.seed,
                                 progress=False)
            rc = evaluate_main(["--checkpoint", ns.checkpoint, "--data", str(data), "--split", "test",
                                "--out", str(scratch), "--num-examples", "4"])
            if rc != EXIT_OK:
                return rc
            # The report once, in --out: the evaluator's numbers and plots; the split described, not its temp path.
            metrics = load_metrics(scratch / "metrics.json")
            results = {r: metrics.pop(r) for r in ROWS}
            metrics.pop("units", None)
            metrics["data"] = f"synthetic test split ({ns.count} frames, {ns.height}x{ns.width}, seed {ns.seed})"
            paths = write_metrics(out, results, info={**metrics, "synthetic_split": split})
            for name in ("metrics.png", "examples.png"):
                shutil.copyfile(scratch / name, out / name)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"wrote {paths['json']}, {paths['md']}, {out / 'metrics.png'}, {out / 'examples.png'}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
