#!/usr/bin/env python3
"""The synthetic robustness benchmark: the shape of the paper's Table 2/5 ablation, rerunnable by anyone.

    python scripts/benchmark_robustness.py                 # ~1 h on a 2-core CPU
    python scripts/benchmark_robustness.py --iters 100 --variants lf_sup lf_m3l --out /tmp/quick

Every variant trains with the same data, iterations, seed and model size
(``config/train/synthetic_*.yaml``) through ``training/train_m3l.py``, keeps its
best checkpoint on the validation split, and is evaluated on the test split by
``training/evaluate.py`` under RGB-D, RGB only and depth only. The combined
table (Markdown), chart (PNG) and raw results (JSON) go to ``--out``, together
with the exact command, the machine and the time each run took; paths in the results
are relative to ``--work``.
Exit codes: 0 done, 1 a step failed (its log is named), 2 usage error, 130 Ctrl-C.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from m3l_core.cli.common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK
from m3l_core.machine import describe_machine
from m3l_core.report import compare_runs, load_metrics, portable_path

ROOT = Path(__file__).resolve().parents[1]

# name -> (label in the table, training config)
VARIANTS = {
    "uni_rgb": ("Uni-modal RGB (supervised)", "synthetic_uni_rgb.yaml"),
    "uni_depth": ("Uni-modal depth (supervised)", "synthetic_uni_depth.yaml"),
    "lf_sup": ("LF supervised", "synthetic_sup.yaml"),
    "lf_md": ("LF + modality dropout", "synthetic_md.yaml"),
    "lf_mt": ("LF + mean teacher", "synthetic_mt.yaml"),
    "lf_m3l": ("LF + M3L", "synthetic_m3l.yaml"),
    # Two-stage: M3L started from the LF supervised run at the paper's lr for initialised weights
    # (1e-4), our stand-in for the paper's ImageNet initialisation (lf_sup's iterations plus its own).
    "lf_m3l_init": ("LF + M3L from LF supervised (two-stage)", "synthetic_m3l.yaml"),
}
INIT_FROM = {"lf_m3l_init": "lf_sup"}  # variant -> variant whose best checkpoint it starts from


class StepFailed(RuntimeError):
    """A data, training or evaluation command failed; the message names its log."""


def run(cmd: list[str], log: Path) -> float:
    """Run a command with its output in ``log``; return the seconds taken; raise :class:`StepFailed`."""
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    t0 = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    dt = time.monotonic() - t0
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise StepFailed(f"command failed ({proc.returncode}), see {log}:\n{tail}")
    return dt


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except (StepFailed, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv: Sequence[str] | None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmark"), help="where the table, chart and JSON go")
    ap.add_argument("--work", default="/tmp/m3l_robustness", help="data, runs and evaluations")
    ap.add_argument("--variants", nargs="+", default=[v for v in VARIANTS if v not in INIT_FROM],
                    choices=list(VARIANTS),
                    help="default: the six single-stage runs; add lf_m3l_init for the two-stage one")
    ap.add_argument("--iters", type=int, default=600, help="training iterations, the same for every variant")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--labeled", type=int, default=24, help="labeled training frames (small, as in the paper)")
    ap.add_argument("--unlabeled", type=int, default=400, help="unlabeled training frames")
    ap.add_argument("--val", type=int, default=48)
    ap.add_argument("--test", type=int, default=120)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra training override for every variant")
    ap.add_argument("--reuse", action="store_true",
                    help="keep variants already trained and evaluated in --work with the same settings")
    args = ap.parse_args(argv)
    for name in args.variants:
        if name in INIT_FROM and INIT_FROM[name] not in args.variants:
            ap.error(f"variant {name} starts from {INIT_FROM[name]}: include it in --variants")

    py = sys.executable
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    data_spec = dict(labeled=args.labeled, unlabeled=args.unlabeled, val=args.val, test=args.test,
                     height=args.height, width=args.width, seed=args.seed)
    spec_file = data / "benchmark_data.json"
    timings: dict[str, dict[str, float]] = {}
    if not (spec_file.exists() and json.loads(spec_file.read_text()) == data_spec):
        dt = run([py, "-m", "m3l_core.data.synthetic", "--out", str(data), "--train-labeled", str(args.labeled),
                  "--train-unlabeled", str(args.unlabeled), "--val", str(args.val), "--test", str(args.test),
                  "--height", str(args.height), "--width", str(args.width), "--seed", str(args.seed),
                  "--no-progress"], work / "data.log")
        spec_file.write_text(json.dumps(data_spec))
        timings["data"] = {"seconds": dt}

    args.variants = sorted(args.variants, key=lambda n: n in INIT_FROM)  # their sources first
    timings_file = work / "timings.json"
    settings = dict(data=data_spec, iters=args.iters, eval_every=args.eval_every, set=args.set)
    done = json.loads(timings_file.read_text()) if args.reuse and timings_file.exists() else {}
    results = {}
    for name in args.variants:
        label, config = VARIANTS[name]
        run_dir = work / "runs" / name
        eval_dir = work / "eval" / name
        if name in done and done[name].get("settings") == settings and (eval_dir / "metrics.json").exists():
            timings[name] = done[name]
            results[label] = _relative_to_work(load_metrics(eval_dir / "metrics.json"), name)
            print(f"{label}: reusing {run_dir}", flush=True)
            continue
        train_cmd = [py, "training/train_m3l.py", "--config", f"config/train/{config}", "--data", str(data),
                     "--out", str(run_dir), "--set", f"max_iters={args.iters}",
                     "--set", f"eval_every={args.eval_every}",
                     "--set", f"seed={args.seed}", "--set", "progress=false"]
        for s in args.set:
            train_cmd += ["--set", s]
        if name in INIT_FROM:  # from trained weights: the paper's fine-tuning learning rate
            train_cmd += ["--set", f"model.init={work / 'runs' / INIT_FROM[name] / 'model.safetensors'}",
                          "--set", "optim.lr=1e-4"]
        if run_dir.exists():
            shutil.rmtree(run_dir)
        t_train = run(train_cmd, work / f"train_{name}.log")
        t_eval = run([py, "training/evaluate.py", "--checkpoint", str(run_dir / "model.safetensors"),
                      "--data", str(data), "--split", "test", "--out", str(eval_dir), "--num-examples", "4"],
                     work / f"eval_{name}.log")
        timings[name] = {"train_seconds": t_train, "eval_seconds": t_eval, "settings": settings}
        done[name] = timings[name]
        timings_file.write_text(json.dumps(done, indent=2))
        results[label] = _relative_to_work(load_metrics(eval_dir / "metrics.json"), name)
        print(f"{label}: trained in {t_train / 60:.1f} min, evaluated in {t_eval:.0f} s", flush=True)

    # The sum of the measured steps, so that reused runs count with the time they took.
    total = sum(t.get("seconds", 0.0) + t.get("train_seconds", 0.0) + t.get("eval_seconds", 0.0)
                for t in timings.values())
    command = "python scripts/benchmark_robustness.py " + " ".join(
        shlex.quote(a) for a in _portable_args(sys.argv[1:] if argv is None else argv))
    summary = dict(command=command.strip(), machine=describe_machine(), data=data_spec, iters=args.iters,
                   timings=timings, total_seconds=total, results=results)
    (out / "robustness.json").write_text(json.dumps(summary, indent=2))
    notes = [f"Command: `{summary['command']}`", "", f"Machine: {summary['machine']}", "",
             f"Total time: {total / 60:.1f} min (data, {len(args.variants)} trainings of {args.iters} iterations, "
             "evaluations; the sum of the runs below).", "", "| run | train min | eval s |", "|---|---|---|"]
    for name, t in timings.items():
        if name != "data":
            notes.append(f"| {VARIANTS[name][0]} | {t['train_seconds'] / 60:.1f} | {t['eval_seconds']:.0f} |")
    md = compare_runs(results, out / "robustness.md", out / "robustness.png", notes="\n".join(notes))
    print(md)
    print(f"wrote {out / 'robustness.md'}, {out / 'robustness.png'}, {out / 'robustness.json'}")
    return EXIT_OK


def _portable_args(argv: Sequence[str]) -> list[str]:
    """The command line as recorded: directory arguments without machine paths."""
    out, previous = [], ""
    for arg in argv:
        flag, eq, value = arg.partition("=")
        if previous in ("--work", "--out"):
            arg = portable_path(arg)
        elif eq and flag in ("--work", "--out"):
            arg = f"{flag}={portable_path(value)}"
        out.append(arg)
        previous = arg
    return out


def _relative_to_work(metrics: dict, name: str) -> dict:
    """A variant's metrics with its checkpoint and data named as in --work (no machine paths)."""
    return {**metrics, "checkpoint": f"runs/{name}/model.safetensors", "data": "data"}


if __name__ == "__main__":
    sys.exit(main())
