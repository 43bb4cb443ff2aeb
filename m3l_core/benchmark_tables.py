"""The robustness benchmark's results: mean ± std over seeds, in the shape of the paper's Tables 2 and 5.

Input: the run records of :mod:`m3l_core.benchmark_robustness` (one per variant and seed). Output:
``robustness.json`` (every run, the aggregates, timings, settings), ``robustness.md`` (the tables)
and ``robustness.png`` (grouped bars with standard-deviation error bars). The std is the sample
standard deviation (ddof=1), so a single run has none and is shown as ``mean (1)``.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from m3l_core.benchmark_robustness import VARIANTS
from m3l_core.report import SCORES

COLUMNS = ("rgb", "depth", "rgbd", "mm_robust")  # the paper's column order
HEADS = ("RGB", "Depth", "RGB-D", "MM-Robust")


def _all(variant: str) -> dict[str, tuple[str, str]]:
    return {c: (variant, c) for c in COLUMNS}


# Table 2 (a): rows as in the paper, then the rows this benchmark adds (matched compute, beyond the paper).
TABLE2_ROWS: tuple[tuple[str, dict[str, tuple[str, str]]], ...] = (
    ("Uni-modal", {"rgb": ("uni_rgb", "rgb"), "depth": ("uni_depth", "depth")}),
    ("Uni-modal + CPS-Seg", {"rgb": ("cps_rgb", "rgb"), "depth": ("cps_depth", "depth")}),
    ("TF", _all("tf")),
    ("URN", _all("urn")),
    ("LF", _all("lf_sup")),
    ("LF + MT", _all("lf_mt")),
    ("LF + M3L", _all("lf_m3l")),
    ("LF, 2x iterations (matched compute)", _all("lf_sup_2x")),
    ("LF + MD, 2x iterations (matched compute)", _all("lf_md_2x")),
    ("LF + M3L, two-stage from LF (2x iterations)", _all("lf_m3l_init")),
    ("LF + M3L + confidence 0.9 / ramp-up (beyond the paper)", _all("lf_m3l_stable")),
)
# Table 5: (row, variant, modality dropout, unlabeled data, M3L).
TABLE5_ROWS: tuple[tuple[str, str, bool, bool, bool], ...] = (
    ("TF", "tf", False, False, False),
    ("URN", "urn", False, False, False),
    ("TF + MD", "tf_md", True, False, False),
    ("URN + MD", "urn_md", True, False, False),
    ("LF", "lf_sup", False, False, False),
    ("LF + MD", "lf_md", True, False, False),
    ("LF + MT (unlabeled)", "lf_mt", False, True, False),
    ("LF + CPS (unlabeled)", "lf_cps", False, True, False),
    ("LF + MD + CPS (unlabeled)", "lf_cps_md", True, True, False),
    ("LF + M3L", "lf_m3l", True, True, True),
)


# The paper's claims as comparisons "A beats B" (docs/benchmark_robustness_plan.md, fixed before the
# runs): (claim, A = (variant, condition), B = (variant, condition)).
_M3L_RIVALS = (("lf_sup", "LF"), ("lf_mt", "LF + MT"), ("tf", "TF"), ("urn", "URN"))
CLAIMS: tuple[tuple[str, tuple[str, str], tuple[str, str]], ...] = (
    *((f"1. LF + M3L beats {name} on MM-Robust (Table 2)", ("lf_m3l", "mm_robust"), (v, "mm_robust"))
      for v, name in _M3L_RIVALS),
    *((f"2. LF + M3L beats {name} with {cond} only (Table 2)", ("lf_m3l", c), (v, c))
      for c, cond in (("rgb", "RGB"), ("depth", "depth")) for v, name in _M3L_RIVALS),
    ("3. LF + M3L keeps RGB-D accuracy: vs LF (Table 2)", ("lf_m3l", "rgbd"), ("lf_sup", "rgbd")),
    ("4. LF + M3L with RGB only beats uni-modal RGB (Table 3)", ("lf_m3l", "rgb"), ("uni_rgb", "rgb")),
    ("4. LF + M3L with RGB only beats uni-modal RGB + CPS-Seg (Table 3)", ("lf_m3l", "rgb"), ("cps_rgb", "rgb")),
    ("4. LF + M3L with depth only beats uni-modal depth (Table 3)", ("lf_m3l", "depth"), ("uni_depth", "depth")),
    ("4. LF + M3L with depth only beats uni-modal depth + CPS-Seg (Table 3)", ("lf_m3l", "depth"),
     ("cps_depth", "depth")),
    ("5. LF beats TF with RGB-D, supervised (Table 4)", ("lf_sup", "rgbd"), ("tf", "rgbd")),
    ("5. LF beats URN with RGB-D, supervised (Table 4)", ("lf_sup", "rgbd"), ("urn", "rgbd")),
    *((f"6. Modality dropout raises MM-Robust: {name} + MD vs {name} (Table 5)", (md, "mm_robust"),
       (base, "mm_robust")) for base, md, name in (("tf", "tf_md", "TF"), ("urn", "urn_md", "URN"),
                                                   ("lf_sup", "lf_md", "LF"))),
    *((f"6. Modality dropout lowers RGB-D: {name} vs {name} + MD (Table 5)", (base, "rgbd"), (md, "rgbd"))
      for base, md, name in (("tf", "tf_md", "TF"), ("urn", "urn_md", "URN"), ("lf_sup", "lf_md", "LF"))),
    ("7. Unlabeled data alone (LF + MT) does not beat LF on MM-Robust (Table 5)", ("lf_mt", "mm_robust"),
     ("lf_sup", "mm_robust")),
    *((f"Matched compute: two-stage LF + M3L beats {name} ({cond})", ("lf_m3l_init", c), (v, c))
      for v, name in (("lf_sup_2x", "LF 2x"), ("lf_md_2x", "LF + MD 2x"))
      for c, cond in (("mm_robust", "MM-Robust"), ("rgb", "RGB"), ("depth", "depth"), ("rgbd", "RGB-D"))),
    *((f"Beyond the paper: confidence 0.9 + ramp-up beats the paper's M3L ({cond})", ("lf_m3l_stable", c),
       ("lf_m3l", c)) for c, cond in (("mm_robust", "MM-Robust"), ("rgbd", "RGB-D"))),
)


def verdict(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The plan's decision rule for "A beats B" from two :func:`stat` results.

    ``"A > B"`` when ``mean(A) - mean(B) > 2 * sqrt(sA^2/nA + sB^2/nB)``, ``"A < B"`` when the
    difference is below minus that bound, ``"not resolved"`` otherwise, and ``"too few runs"``
    without a std on either side. None when A or B was not run.
    """
    if a is None or b is None:
        return None
    diff = a["mean"] - b["mean"]
    if a["std"] is None or b["std"] is None:
        return {"diff": diff, "bound": None, "verdict": "too few runs"}
    bound = 2.0 * math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])
    text = "A > B" if diff > bound else "A < B" if diff < -bound else "not resolved"
    return {"diff": diff, "bound": bound, "verdict": text}


def claims(agg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every :data:`CLAIMS` comparison whose two sides were run, with its :func:`verdict`."""
    rows = []
    for text, a_src, b_src in CLAIMS:
        a, b = cell(agg, a_src), cell(agg, b_src)
        v = verdict(a, b)
        if v is not None:
            rows.append({"claim": text, "a": list(a_src), "b": list(b_src), "a_mean": a["mean"],
                         "b_mean": b["mean"], **v})
    return rows


def markdown_claims(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["| Claim (A beats B) | A | B | A - B | 2 SE | Result |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        bound = "-" if r["bound"] is None else f"{r['bound']:.2f}"
        lines.append(f"| {r['claim']} | {r['a_mean']:.2f} | {r['b_mean']:.2f} | {r['diff']:+.2f} | {bound} | "
                     f"{r['verdict']} |")
    return lines


# ---------------------------------------------------------------- aggregation

def stat(values: Sequence[float]) -> dict[str, Any] | None:
    """Mean, sample std (ddof=1; None for one value) and n of ``values``; None when there are none."""
    vals = [float(v) for v in values]
    if not vals:
        return None
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
    return {"mean": mean, "std": std, "n": len(vals), "values": vals}


def aggregate(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{variant: {condition: {score: stat}}}`` over the records' seeds (conditions not evaluated: None)."""
    by_variant: dict[str, list[Mapping[str, Any]]] = {}
    for rec in sorted(records, key=lambda r: r["seed"]):
        by_variant.setdefault(rec["variant"], []).append(rec)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, recs in by_variant.items():
        out[name] = {}
        for cond in COLUMNS:
            results = [r["metrics"].get(cond) for r in recs if r["metrics"].get(cond)]
            out[name][cond] = {k: stat([res[k] for res in results]) for k, _ in SCORES} if results else None
    return out


def cell(agg: Mapping[str, Any], source: tuple[str, str] | None, score: str = "miou") -> dict[str, Any] | None:
    if source is None:
        return None
    conds = agg.get(source[0]) or {}
    return (conds.get(source[1]) or {}).get(score)


def fmt_cell(s: Mapping[str, Any] | None) -> str:
    """``"mean ± std (n)"``, ``"mean (1)"`` for one run, ``"-"`` when not applicable."""
    if s is None:
        return "-"
    if s["std"] is None:
        return f"{s['mean']:.2f} ({s['n']})"
    return f"{s['mean']:.2f} ± {s['std']:.2f} ({s['n']})"


# ---------------------------------------------------------------- tables

def table2(agg: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """Table 2-shaped rows ``{"method", "cells": {column: stat|None}}`` with data, and the rows left out."""
    rows, left_out = [], []
    for label, sources in TABLE2_ROWS:
        cells = {c: cell(agg, sources.get(c)) for c in COLUMNS}
        if any(v is not None for v in cells.values()):
            rows.append({"method": label, "cells": cells, "variants": sorted({v for v, _ in sources.values()})})
        else:
            left_out.append(label)
    return rows, left_out


def table5(agg: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """Table 5-shaped rows with the check-mark columns, and the rows left out."""
    rows, left_out = [], []
    for label, variant, md, unlabeled, m3l in TABLE5_ROWS:
        cells = {c: cell(agg, (variant, c)) for c in COLUMNS}
        if variant in agg:
            rows.append({"method": label, "variant": variant, "modality_dropout": md, "unlabeled": unlabeled,
                         "m3l": m3l, "cells": cells})
        else:
            left_out.append(label)
    return rows, left_out


def markdown_table2(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["| Method | " + " | ".join(HEADS) + " |", "|---|" + "---:|" * len(HEADS)]
    lines += [f"| {r['method']} | " + " | ".join(fmt_cell(r["cells"][c]) for c in COLUMNS) + " |" for r in rows]
    return lines


def markdown_table5(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    mark = lambda b: "✓" if b else "-"  # noqa: E731
    lines = ["| Method | Modality Dropout | Unlabeled | M3L | " + " | ".join(HEADS) + " |",
             "|---|:---:|:---:|:---:|" + "---:|" * len(HEADS)]
    lines += [f"| {r['method']} | {mark(r['modality_dropout'])} | {mark(r['unlabeled'])} | {mark(r['m3l'])} | "
              + " | ".join(fmt_cell(r["cells"][c]) for c in COLUMNS) + " |" for r in rows]
    return lines


def markdown_runs(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per run: each condition's test mIoU, the CPU minutes of training and evaluation, wall minutes."""
    lines = ["| Variant | Seed | " + " | ".join(HEADS) + " | Train CPU min | Eval CPU min | Wall min |",
             "|---|---:|" + "---:|" * (len(HEADS) + 3)]
    for r in sorted(records, key=lambda r: (list(VARIANTS).index(r["variant"]) if r["variant"] in VARIANTS
                                            else len(VARIANTS), r["seed"])):
        m = r["metrics"]
        vals = ["-" if not m.get(c) else f"{m[c]['miou']:.2f}" for c in COLUMNS]
        wall = r["train"]["wall_seconds"] + r["eval"]["wall_seconds"]
        lines.append(f"| {r['variant']} | {r['seed']} | " + " | ".join(vals)
                     + f" | {r['train']['cpu_seconds'] / 60:.1f} | {r['eval']['cpu_seconds'] / 60:.1f}"
                     f" | {wall / 60:.1f} |")
    return lines


def timings(records: Sequence[Mapping[str, Any]], data_times: Mapping[str, float] | None) -> dict[str, float]:
    """CPU and wall seconds summed over the runs (and the data), whether trained now or reused."""
    data = dict(data_times or {})
    t = {"train_cpu_seconds": sum(r["train"]["cpu_seconds"] for r in records),
         "eval_cpu_seconds": sum(r["eval"]["cpu_seconds"] for r in records),
         "runs_wall_seconds": sum(r["train"]["wall_seconds"] + r["eval"]["wall_seconds"] for r in records),
         "data_cpu_seconds": data.get("cpu_seconds", 0.0), "data_wall_seconds": data.get("wall_seconds", 0.0)}
    t["total_cpu_seconds"] = t["train_cpu_seconds"] + t["eval_cpu_seconds"] + t["data_cpu_seconds"]
    t["total_wall_seconds"] = t["runs_wall_seconds"] + t["data_wall_seconds"]
    return t


# ---------------------------------------------------------------- chart

def plot_table2(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Grouped bars (one group per test condition, one bar per Table 2 row), error bars = std over seeds."""
    from matplotlib.figure import Figure

    n = max(1, len(rows))
    width = 0.84 / n
    xs = np.arange(len(COLUMNS))
    fig = Figure(figsize=(max(7.0, 1.1 * n + 3), 4.2))
    ax = fig.subplots()
    cmap = __import__("matplotlib").colormaps["tab20"]
    top = 10.0
    for i, row in enumerate(rows):
        stats = [row["cells"][c] for c in COLUMNS]
        means = [s["mean"] if s else 0.0 for s in stats]
        errs = [(s["std"] or 0.0) if s else 0.0 for s in stats]
        pos = xs - 0.42 + width * (i + 0.5)
        ax.bar(pos, means, width, yerr=errs, capsize=2, label=row["method"], color=cmap((2 * i) % 20 + (i // 10) % 2),
               error_kw={"elinewidth": 0.8})
        for x, s in zip(pos, stats):
            if s is None:
                ax.annotate("-", (x, 0), ha="center", va="bottom", fontsize=7)
        top = max(top, *(m + e for m, e in zip(means, errs)))
    ax.set_xticks(xs, HEADS)
    ax.set_ylabel("test mIoU (%), mean ± std over seeds")
    ax.set_ylim(0, top * 1.15)
    if rows:
        ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.08), frameon=False)
    ax.set_title("Synthetic robustness benchmark (Table 2 shape)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


# ---------------------------------------------------------------- files

def write_outputs(out: str | Path, records: Sequence[Mapping[str, Any]], *, variants: Sequence[str],
                  seeds: Sequence[int], settings: Mapping[str, Any], command: str,
                  data_times: Mapping[str, float] | None = None, elapsed_seconds: float | None = None,
                  failed: Mapping[str, str] | None = None, machine: str | None = None) -> dict[str, Path]:
    """Write ``robustness.json``, ``robustness.md`` and ``robustness.png`` to ``out``; return their paths."""
    from m3l_core.machine import describe_machine

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine or describe_machine()
    failed = dict(failed or {})
    agg = aggregate(records)
    t2, left2 = table2(agg)
    t5, left5 = table5(agg)
    times = timings(records, data_times)
    if elapsed_seconds is not None:
        times["elapsed_seconds"] = elapsed_seconds
    runs: dict[str, dict[str, Any]] = {}
    for r in records:
        runs.setdefault(r["variant"], {})[str(r["seed"])] = {k: v for k, v in r.items() if k != "settings"}
    summary = dict(
        command=command, machine=machine, settings=dict(settings), seeds=list(seeds), variants=list(variants),
        definitions={n: dataclasses.asdict(VARIANTS[n]) for n in variants if n in VARIANTS},
        runs=runs, aggregates=agg, table2=t2, table5=t5, claims=claims(agg),
        left_out={"table2": left2, "table5": left5},
        failed=failed, timings=times, units="percent")
    paths = {"json": out / "robustness.json", "md": out / "robustness.md", "png": out / "robustness.png"}
    paths["json"].write_text(json.dumps(summary, indent=2) + "\n")

    s = settings
    md = ["# Synthetic robustness benchmark", "", f"Command: `{command}`", "", f"Machine: {machine}", "",
          f"Settings (fixed before the runs): {s['labeled']} labeled + {s['unlabeled']} unlabeled training frames, "
          f"{s['val']} validation, {s['test']} test, {s['height']}x{s['width']} pixels, data seed {s['data_seed']}; "
          f"N = {s['iters']} iterations per single-stage run (2N for the 2x and two-stage rows), validation every "
          f"{s['eval_every']}, crop {s['crop'][0]}x{s['crop'][1]}, training seeds {', '.join(map(str, seeds))}"
          + (f", extra `--set` {', '.join(s['sets'])}" if s["sets"] else "") + ".", "",
          "## Table 2 shape: test mIoU (%), mean ± std over seeds (n runs)", ""]
    md += markdown_table2(t2)
    if left2:
        md += ["", "Left out (no finished runs): " + "; ".join(left2) + "."]
    md += ["", "## Table 5 shape: test mIoU (%), mean ± std over seeds (n runs)", ""] + markdown_table5(t5)
    if left5:
        md += ["", "Left out (no finished runs): " + "; ".join(left5) + "."]
    cl = claims(agg)
    if cl:
        md += ["", "## The paper's claims (decision rule fixed before the runs)", "",
               "A > B: mean(A) - mean(B) > 2 SE, SE = sqrt(sA²/nA + sB²/nB) over seeds; A < B: the reverse; "
               "otherwise not resolved.", ""] + markdown_claims(cl)
    md += ["", "## Runs", ""] + markdown_runs(records)
    md += ["", "## Time", "",
           f"Total CPU time: {times['total_cpu_seconds'] / 60:.1f} min (training "
           f"{times['train_cpu_seconds'] / 60:.1f}, evaluation {times['eval_cpu_seconds'] / 60:.1f}, data "
           f"{times['data_cpu_seconds'] / 60:.1f}; user + system time of each process and its children, from "
           "`os.wait4`, reused runs with the time they took). Total wall time: "
           f"{times['total_wall_seconds'] / 60:.1f} min (the sum of the runs)"
           + (f"; this invocation took {elapsed_seconds / 60:.1f} min." if elapsed_seconds is not None else ".")]
    if failed:
        md += ["", "Failed runs: "
               + "; ".join(f"{k}: {v}" for k, v in failed.items()) + "."]
    paths["md"].write_text("\n".join(md) + "\n")
    plot_table2(t2, paths["png"])
    return paths
