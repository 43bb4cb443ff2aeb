#!/usr/bin/env python3
"""The synthetic robustness benchmark: the paper's Table 2/5 shape, mean ± std over seeds, matched compute.

    OMP_NUM_THREADS=1 python scripts/benchmark_robustness.py --jobs 2          # everything, ~2 h of CPU
    python scripts/benchmark_robustness.py --variants lf_sup lf_m3l_init --seeds 0 --reuse --out /tmp/quick

One dataset (``m3l_core.data.synthetic``, fixed by the data flags) serves every run; the seeds vary
training only. Each (variant, seed) run trains ``training/train_m3l.py --config config/train/<variant>``
for N iterations (2N for the matched-compute rows; ``lf_m3l_init`` trains N more from the same seed's
``lf_sup`` model), keeps its best validation checkpoint and is evaluated on the test split by
``training/evaluate.py`` (RGB-D, RGB only, depth only, MM-Robust). Every process uses one thread.
A finished run writes ``--work/records/<variant>_seed<S>.json`` (metrics, wall and CPU seconds of
its processes, settings); ``--reuse`` keeps the runs whose settings are identical, so the benchmark
can run in parts. Up to ``--jobs`` runs train at once, a run starting from another waits for it.
Tables (Markdown), chart (PNG) and raw results (JSON) go to ``--out``; paths in them are relative
to ``--work``. The benchmark measures this checkout: it and its processes import the tree's code.
Exit codes: 0 done, 1 a run failed (its log is named; the others continue), 2 usage error, 130 Ctrl-C.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Sequence

from m3l_core import benchmark_robustness
from m3l_core.benchmark_robustness import (
    DEFAULT_VARIANTS, VARIANTS, BenchmarkError, BenchSettings, RunPlan, check_configs, make_record, plan_runs,
    write_json_atomic)
from m3l_core.benchmark_tables import write_outputs
from m3l_core.cli.common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from m3l_core.report import load_metrics, portable_path

ROOT = Path(__file__).resolve().parents[1]
# The runs use this checkout's training/ entry points and config/train files (the package may be installed).
benchmark_robustness.CONFIG_DIR = ROOT / "config" / "train"

PY = sys.executable


class StepFailed(RuntimeError):
    """A data, training or evaluation command failed; the message names its log."""


@dataclass
class _Proc:
    """A started child process: reaped with ``os.wait4`` so its CPU time (and its children's) is known."""

    popen: subprocess.Popen
    log: Path
    handle: IO
    started: float
    plan: RunPlan | None = None
    step: str = ""
    train_times: dict[str, float] | None = None  # of the run's training, kept while it is evaluated


def child_env() -> dict[str, str]:
    """One thread per process; the children import the same ``m3l_core`` as this script (installed, or PYTHONPATH)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def start(cmd: list[str], log: Path, **kw) -> _Proc:
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log, "w")
    popen = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=child_env())
    return _Proc(popen, log, handle, time.monotonic(), **kw)


def reaped(proc: _Proc, status: int, usage: resource.struct_rusage) -> dict[str, float]:
    """Close a reaped process; its wall and CPU seconds, or :class:`StepFailed` naming its log."""
    proc.popen.returncode = code = os.waitstatus_to_exitcode(status)
    proc.handle.close()
    times = {"wall_seconds": time.monotonic() - proc.started, "cpu_seconds": usage.ru_utime + usage.ru_stime}
    if code != 0:
        tail = "".join(proc.log.read_text(errors="replace").splitlines(keepends=True)[-20:])
        raise StepFailed(f"command failed ({code}), see {proc.log}:\n{tail}")
    return times


def run_one(cmd: list[str], log: Path) -> dict[str, float]:
    proc = start(cmd, log)
    _, status, usage = os.wait4(proc.popen.pid, 0)
    return reaped(proc, status, usage)


def make_data(bench: BenchSettings, work: Path) -> dict[str, float] | None:
    """Write the dataset unless ``work/data`` already holds this spec; its times, or None when kept."""
    data, spec = work / "data", bench.data_spec()
    spec_file = data / "benchmark_data.json"
    if _read_json(spec_file) == spec:
        return None
    if data.exists():
        shutil.rmtree(data)
    times = run_one([PY, "-m", "m3l_core.data.synthetic", "--out", str(data), "--train-labeled", str(bench.labeled),
                     "--train-unlabeled", str(bench.unlabeled), "--val", str(bench.val), "--test", str(bench.test),
                     "--height", str(bench.height), "--width", str(bench.width), "--seed", str(bench.data_seed),
                     "--no-progress"], work / "logs" / "data.log")
    write_json_atomic(spec_file, spec)
    return times


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def execute(plans: list[RunPlan], work: Path, jobs: int) -> tuple[list[dict], dict[str, str]]:
    """Train and evaluate every plan not reused, ``jobs`` at a time; (records, failed key -> reason)."""
    records = [p.record for p in plans if p.reuse]
    for p in plans:
        if p.reuse:
            print(f"{p.key}: reusing {p.record_path(work).relative_to(work)}", flush=True)
    pending = [p for p in plans if not p.reuse]
    done = {p.key for p in plans if p.reuse}
    failed: dict[str, str] = {}
    running: dict[int, _Proc] = {}
    total, started = len(pending), 0
    try:
        while pending or running:
            for plan in list(pending):
                if len(running) >= jobs:
                    break
                if plan.depends_on in failed:
                    pending.remove(plan)
                    failed[plan.key] = f"its source run {plan.depends_on} failed"
                    print(f"{plan.key}: skipped, {failed[plan.key]}", flush=True)
                    continue
                if plan.depends_on is not None and plan.depends_on not in done:
                    continue
                pending.remove(plan)
                started += 1
                print(f"[{started}/{total}] {plan.key}: training", flush=True)
                for d in (plan.run_dir(work), plan.eval_dir(work)):
                    if d.exists():
                        shutil.rmtree(d)
                plan.record_path(work).unlink(missing_ok=True)
                proc = start([PY, "training/train_m3l.py", *plan.train_args(work)], plan.log(work, "train"),
                             plan=plan, step="train")
                running[proc.popen.pid] = proc
            if not running:
                break
            pid, status, usage = os.wait4(-1, 0)
            proc = running.pop(pid, None)
            if proc is None:
                continue
            plan = proc.plan
            try:
                times = reaped(proc, status, usage)
            except StepFailed as e:
                failed[plan.key] = f"{proc.step} failed, see {proc.log.relative_to(work)} in --work"
                print(f"{plan.key}: FAILED ({proc.step}) {e}", file=sys.stderr, flush=True)
                continue
            if proc.step == "train":
                nxt = start([PY, "training/evaluate.py", *plan.eval_args(work)], plan.log(work, "eval"),
                            plan=plan, step="eval")
                nxt.train_times = times
                running[nxt.popen.pid] = nxt
                continue
            try:
                rec = make_record(plan, work, load_metrics(plan.eval_dir(work) / "metrics.json"),
                                  train=proc.train_times or {}, evaluation=times,
                                  finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
                write_json_atomic(plan.record_path(work), rec)
            except (ValueError, OSError) as e:  # the others keep running
                failed[plan.key] = f"no record: {e}"
                print(f"{plan.key}: FAILED {failed[plan.key]}", file=sys.stderr, flush=True)
                continue
            records.append(rec)
            done.add(plan.key)
            m = rec["metrics"]
            scores = ", ".join(f"{c} {m[c]['miou']:.1f}" for c in ("rgbd", "rgb", "depth", "mm_robust") if m.get(c))
            print(f"{plan.key}: done, train {rec['train']['wall_seconds'] / 60:.1f} min wall / "
                  f"{rec['train']['cpu_seconds'] / 60:.1f} min CPU; test mIoU {scores}", flush=True)
    except KeyboardInterrupt:
        _stop(running)
        raise
    return records, failed


def _stop(running: dict[int, _Proc]) -> None:
    """Ctrl-C: ask every running child to stop, then make sure it has."""
    for proc in running.values():
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGINT)
    for proc in running.values():
        try:
            proc.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait()
        proc.handle.close()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BenchmarkError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (StepFailed, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("interrupted; finished runs are kept in --work (rerun with --reuse)", file=sys.stderr)
        return EXIT_INTERRUPTED


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    d = BenchSettings()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmark"), help="where the tables, chart and JSON go")
    ap.add_argument("--work", default="/tmp/m3l_robustness", help="data, runs, evaluations, logs and run records")
    ap.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(VARIANTS),
                    metavar="VARIANT", help=f"default: all but lf_cps, lf_cps_md; choices: {', '.join(VARIANTS)}")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds (default 0 1 2)")
    ap.add_argument("--reuse", action="store_true",
                    help="keep every run in --work whose recorded settings are identical; train the rest")
    ap.add_argument("--dry-run", action="store_true",
                    help="list the runs that would train and those --reuse would keep, then stop")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (one thread each)")
    ap.add_argument("--iters", type=int, default=d.iters, help="N: iterations of a single-stage run")
    ap.add_argument("--eval-every", type=int, default=d.eval_every)
    ap.add_argument("--crop", type=int, nargs=2, default=list(d.crop), metavar=("H", "W"), help="training crop")
    ap.add_argument("--labeled", type=int, default=d.labeled, help="labeled training frames")
    ap.add_argument("--unlabeled", type=int, default=d.unlabeled, help="unlabeled training frames")
    ap.add_argument("--val", type=int, default=d.val)
    ap.add_argument("--test", type=int, default=d.test)
    ap.add_argument("--height", type=int, default=d.height)
    ap.add_argument("--width", type=int, default=d.width)
    ap.add_argument("--data-seed", type=int, default=d.data_seed, help="the dataset's seed (one for all runs)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra training override for every run (part of the settings --reuse compares)")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs must be >= 1")
    try:
        args.bench = BenchSettings(labeled=args.labeled, unlabeled=args.unlabeled, val=args.val, test=args.test,
                                   height=args.height, width=args.width, data_seed=args.data_seed, iters=args.iters,
                                   eval_every=args.eval_every, crop=tuple(args.crop), sets=tuple(args.set))
        # Checked before any work: unknown variants, missing or invalid configs and --set values, a
        # two-stage run without its source.
        check_configs(plan_runs(args.variants, args.seeds, args.bench, Path(args.work), reuse=False))
    except BenchmarkError as e:
        ap.error(str(e))
    return args


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    work, out = Path(args.work).resolve(), Path(args.out)
    if args.dry_run:
        # The data spec is part of every run's settings, so the plan does not need the data.
        for plan in plan_runs(args.variants, args.seeds, args.bench, work, reuse=args.reuse):
            after = f" after {plan.depends_on}" if plan.depends_on else ""
            print(f"{plan.key}: {'reuse ' + str(plan.record_path(work)) if plan.reuse else 'train' + after}")
        return EXIT_OK
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    data_times = make_data(args.bench, work)
    if data_times is None:  # kept: count it with the time it took when it was made
        data_times = (_read_json(work / "records" / "data.json") or {}).get("times")
    else:
        write_json_atomic(work / "records" / "data.json", {"spec": args.bench.data_spec(), "times": data_times})
    plans = plan_runs(args.variants, args.seeds, args.bench, work, reuse=args.reuse)
    records, failed = execute(plans, work, args.jobs)
    command = "python scripts/benchmark_robustness.py " + " ".join(
        shlex.quote(a) for a in _portable_args(sys.argv[1:] if argv is None else argv))
    paths = write_outputs(out, records, variants=args.variants, seeds=args.seeds, settings=args.bench.to_dict(),
                          command=command.strip(), data_times=data_times, elapsed_seconds=time.monotonic() - t0,
                          failed=failed)
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    if failed:
        print("failed runs: " + "; ".join(f"{k}: {v}" for k, v in failed.items()),
              file=sys.stderr)
        return EXIT_FAILURE
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


if __name__ == "__main__":
    sys.exit(main())
