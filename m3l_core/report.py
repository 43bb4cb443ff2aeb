"""Evaluation reports: JSON, Markdown, a bar chart and a grid of qualitative examples.

``results`` everywhere is the dict from ``evaluation.summarize_results``:
``{"rgbd": s, "rgb": s, "depth": s, "mm_robust": s}`` where each ``s`` is a
``metrics.summarize`` dict in percent, or None when not evaluated (the
paper's "-", e.g. uni-modal models). Charts use matplotlib's object API
(``Figure`` and its Agg canvas), so no display and no global backend switch is needed.
Paths recorded in reports are relative to the source tree or bare file names, never
machine paths, so reports can be committed.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from m3l_core.vocab import CONDITION_TITLES, CONDITIONS, colorize

log = logging.getLogger(__name__)

ROWS = (*CONDITIONS, "mm_robust")  # the report's rows: every condition, then their mean
SCORES = (("miou", "mIoU"), ("macc", "mAcc"), ("pixel_acc", "Pix. Acc."))
_TREE = Path(__file__).resolve().parents[1]  # the checkout (or site-packages) this package lives in


def portable_path(path: str | os.PathLike) -> str:
    """``path`` as a report may record it: relative to the source tree when inside it, else its file name."""
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    p = p.resolve()
    return p.relative_to(_TREE).as_posix() if p.is_relative_to(_TREE) else p.name


def portable_info(info: Mapping[str, Any]) -> dict[str, Any]:
    """``info`` with every absolute path string replaced by :func:`portable_path`."""
    return {k: portable_path(v) if isinstance(v, str) and os.path.isabs(v) else v for k, v in info.items()}


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _get(results: Mapping[str, Any], row: str, key: str) -> float | None:
    r = results.get(row)
    return None if r is None else r.get(key)


# ---------------------------------------------------------------- tables

def format_table(results: Mapping[str, Any]) -> str:
    """Plain-text table (conditions x mIoU/mAcc/pixel accuracy, percent) for the terminal."""
    head = f"{'condition':<12}" + "".join(f"{name:>11}" for _, name in SCORES)
    lines = [head, "-" * len(head)]
    for row in ROWS:
        lines.append(f"{CONDITION_TITLES[row]:<12}" + "".join(f"{_fmt(_get(results, row, k)):>11}" for k, _ in SCORES))
    return "\n".join(lines)


def markdown_table(results: Mapping[str, Any], *, title: str | None = None, per_class: bool = True) -> str:
    """Markdown: a scores table (percent) and, optionally, per-class IoU per condition."""
    out = []
    if title:
        out += [f"## {title}", ""]
    out += ["| Condition | " + " | ".join(n for _, n in SCORES) + " |",
            "|---|" + "---:|" * len(SCORES)]
    for row in ROWS:
        out.append(f"| {CONDITION_TITLES[row]} | " + " | ".join(_fmt(_get(results, row, k)) for k, _ in SCORES) + " |")
    names = _class_names(results)
    if per_class and names:
        out += ["", "Per-class IoU (%):", "",
                "| Class | " + " | ".join(CONDITION_TITLES[r] for r in ROWS) + " |",
                "|---|" + "---:|" * len(ROWS)]
        for n in names:
            vals = [(results.get(r) or {}).get("per_class_iou", {}).get(n) for r in ROWS]
            out.append(f"| {n} | " + " | ".join(_fmt(v) for v in vals) + " |")
    return "\n".join(out) + "\n"


def _class_names(results: Mapping[str, Any]) -> list[str]:
    for row in ROWS:
        r = results.get(row)
        if r and r.get("per_class_iou"):
            return list(r["per_class_iou"])
    return []


# ---------------------------------------------------------------- images

def colorize_depth(depth: np.ndarray, cmap: str = "turbo") -> np.ndarray:
    """HxW depth (metres, NaN/<=0 invalid) -> HxWx3 uint8, near-to-far colormap, invalid black."""
    import matplotlib

    d = np.asarray(depth, dtype=np.float32)
    valid = np.isfinite(d) & (d > 0)
    out = np.zeros(d.shape + (3,), np.uint8)
    if valid.any():
        lo, hi = float(d[valid].min()), float(d[valid].max())
        norm = (d[valid] - lo) / (hi - lo) if hi > lo else np.zeros(int(valid.sum()), np.float32)
        out[valid] = (matplotlib.colormaps[cmap](norm)[:, :3] * 255).astype(np.uint8)
    return out


def plot_examples(
    examples: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    palette: Sequence[Sequence[int]],
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
) -> Path:
    """Grid: one row per example, columns RGB | depth | ground truth | RGB-D | RGB only | depth only.

    Each example: ``rgb`` HxWx3 uint8, ``depth`` HxW metres (NaN invalid),
    ``label`` HxW ids, ``preds`` {condition: HxW ids} (missing conditions are
    drawn as "not evaluated"), optional ``name``.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if not examples:
        raise ValueError("plot_examples needs at least one example")
    cols = ["RGB", "Depth", "Ground truth"] + [f"Pred. {CONDITION_TITLES[c]}" for c in CONDITIONS]
    h, w = np.asarray(examples[0]["label"]).shape[:2]
    cell = 2.2
    legend_rows = 0 if not class_names else (len(class_names) + 6) // 6
    fig = Figure(figsize=(cell * len(cols) * w / max(h, w) + 0.4,
                          cell * len(examples) * h / max(h, w) + 0.6 + 0.3 * legend_rows))
    axes = fig.subplots(len(examples), len(cols), squeeze=False)
    for i, ex in enumerate(examples):
        panels = [np.asarray(ex["rgb"]), colorize_depth(ex["depth"]),
                  colorize(ex["label"], palette, ignore_index=ignore_index)]
        preds = ex.get("preds") or {}
        panels += [colorize(preds[c], palette, ignore_index=ignore_index) if preds.get(c) is not None else None
                   for c in CONDITIONS]
        for j, img in enumerate(panels):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if img is None:
                ax.set_facecolor("0.85")
                ax.text(0.5, 0.5, "not evaluated", ha="center", va="center", fontsize=7, transform=ax.transAxes)
            else:
                ax.imshow(img, interpolation="nearest")
            if i == 0:
                ax.set_title(cols[j], fontsize=8)
        if ex.get("name"):
            axes[i][0].set_ylabel(str(ex["name"]), fontsize=6)
    if class_names:
        handles = [Patch(color=np.asarray(c) / 255.0, label=n) for n, c in zip(class_names, palette)]
        handles.append(Patch(color="black", label="ignore"))
        fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.04 * legend_rows if legend_rows else 0, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def plot_conditions(results: Mapping[str, Any], path: str | Path, *, title: str = "mIoU per input condition") -> Path:
    """Bar chart of mIoU (percent) for RGB-D, RGB only, depth only and MM-Robust."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 3.2))
    ax = fig.subplots()
    vals = [_get(results, r, "miou") for r in ROWS]
    xs = np.arange(len(ROWS))
    colors = ["#4c72b0", "#dd8452", "#55a868", "#8172b3"]
    bars = ax.bar(xs, [v or 0.0 for v in vals], color=colors)
    for b, v in zip(bars, vals):
        ax.annotate(_fmt(v, 1), (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(xs, [CONDITION_TITLES[r] for r in ROWS])
    ax.set_ylabel("mIoU (%)")
    ax.set_ylim(0, max(100.0, max((v or 0.0) for v in vals) * 1.1))
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


# ---------------------------------------------------------------- files

def _md_value(v: Any) -> Any:
    """Lists read as sizes (``120x160``) when all integers, else joined with ``+`` (``rgb+depth``)."""
    if isinstance(v, (list, tuple)):
        numeric = all(isinstance(x, int) and not isinstance(x, bool) for x in v)
        return ("x" if numeric else "+").join(map(str, v))
    return v


def write_metrics(out_dir: str | Path, results: Mapping[str, Any], *,
                  info: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write ``metrics.json`` (results + ``info``) and ``metrics.md``; paths in ``info`` become portable."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = portable_info(info or {})
    payload = {**{r: results.get(r) for r in ROWS}, "units": "percent", **info}
    paths = {"json": out / "metrics.json", "md": out / "metrics.md"}
    paths["json"].write_text(json.dumps(payload, indent=2) + "\n")
    short = {k: _md_value(v) for k, v in info.items()
             if not isinstance(v, dict) and not (isinstance(v, (list, tuple)) and len(v) > 4)}
    header = "".join(f"- {k}: `{v}`\n" for k, v in short.items()) + "\n" if short else ""
    paths["md"].write_text("# Evaluation\n\n" + header + markdown_table(results))
    return paths


def write_report(
    out_dir: str | Path,
    results: Mapping[str, Any],
    *,
    info: Mapping[str, Any] | None = None,
    examples: Sequence[Mapping[str, Any]] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
) -> dict[str, Path]:
    """Write ``metrics.json``, ``metrics.md``, ``metrics.png`` and (with examples) ``examples.png``."""
    if examples and palette is None:
        raise ValueError("write_report needs a palette to draw examples")
    info = portable_info(info or {})
    paths = write_metrics(out_dir, results, info=info)
    out = paths["json"].parent
    paths["png"] = plot_conditions(results, out / "metrics.png", title=f"mIoU per input condition ({info['split']})"
                                   if "split" in info else "mIoU per input condition")
    if examples:
        paths["examples"] = plot_examples(examples, out / "examples.png", palette=palette,
                                          class_names=class_names, ignore_index=ignore_index)
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths


def load_metrics(path: str | Path) -> dict[str, Any]:
    """Read a ``metrics.json`` written by :func:`write_report`; errors name the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read metrics ({e})") from e
    missing = [r for r in ROWS if r not in data]
    if missing:
        raise ValueError(f"{path}: not an evaluation metrics.json (missing keys {missing})")
    return data


def compare_runs(named_results: Mapping[str, Mapping[str, Any]], out_md: str | Path, out_png: str | Path,
                 *, notes: str = "") -> str:
    """Combine several runs' metrics into one Markdown file and one grouped bar chart.

    ``named_results``: run name -> metrics dict (``metrics.json`` content). The
    table follows the paper's Table 2 columns (RGB, Depth, RGBD, MM-Robust; mIoU
    in percent, "-" where not evaluated) plus mAcc and pixel accuracy of
    MM-Robust. ``notes`` (Markdown) follow the table in the same file, which is
    written once. Returns the Markdown text.
    """
    from matplotlib.figure import Figure

    if not named_results:
        raise ValueError("compare_runs needs at least one run")
    order = ("rgb", "depth", "rgbd", "mm_robust")  # the paper's column order and names
    heads = ("RGB", "Depth", "RGBD", "MM-Robust")
    lines = ["| Method | " + " | ".join(f"{h} mIoU" for h in heads) + " | MM-Robust mAcc | MM-Robust Pix. Acc. |",
             "|---|" + "---:|" * (len(heads) + 2)]
    for name, res in named_results.items():
        vals = [_fmt(_get(res, r, "miou")) for r in order]
        vals += [_fmt(_get(res, "mm_robust", "macc")), _fmt(_get(res, "mm_robust", "pixel_acc"))]
        lines.append(f"| {name} | " + " | ".join(vals) + " |")
    md = "\n".join(lines) + "\n" + (f"\n{notes.rstrip()}\n" if notes.strip() else "")
    Path(out_md).write_text(md)

    names = list(named_results)
    n = len(names)
    width = 0.8 / n
    xs = np.arange(len(order))
    fig = Figure(figsize=(max(6.0, 1.6 * len(order) + 0.25 * n * len(order)), 3.8))
    ax = fig.subplots()
    for i, name in enumerate(names):
        vals = [_get(named_results[name], r, "miou") for r in order]
        pos = xs - 0.4 + width * (i + 0.5)
        ax.bar(pos, [v or 0.0 for v in vals], width, label=name)
        for x, v in zip(pos, vals):
            if v is None:
                ax.annotate("-", (x, 0), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(xs, heads)
    ax.set_ylabel("mIoU (%)")
    top = max((_get(r, c, "miou") or 0.0) for r in named_results.values() for c in order)
    ax.set_ylim(0, max(10.0, top * 1.15))
    ax.legend(fontsize=7, ncol=min(4, n), loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    ax.set_title("mIoU per test-time input condition", fontsize=10)
    fig.tight_layout()
    fig.savefig(Path(out_png), dpi=120, bbox_inches="tight")
    return md
