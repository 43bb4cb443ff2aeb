"""The replay report as text, Markdown and a timeline plot (from the dict of ``replay_analysis.build_report``).

Plots use matplotlib's object API (``matplotlib.figure.Figure``), so no global
backend is selected and nothing depends on a display.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from m3l_core.vocab import MODES
from m3l_ros.replay_analysis import dropout_spans


def _fmt(v: Any, spec: str = ".1f") -> str:
    return "n/a" if v is None else format(v, spec)


def switch_result(s: dict, unit: str = "") -> str:
    """How one dropout boundary ended, for the printed and Markdown reports."""
    if s["truncated"]:
        return "bag ended"
    if not s["switch_expected"]:
        return "no switch expected"
    if s.get("already"):
        return f"0{unit} (already in mode)"
    if s["reached"]:
        return f"{s['latency_s'] * 1e3:.0f}{unit}"
    return "NOT REACHED"


def _mode_rows(report: dict, all_label: str) -> list[tuple[str, dict]]:
    return list(report["per_mode"].items()) + ([(all_label, report["overall"])] if report["overall"] else [])


def accuracy_note(report: dict) -> str | None:
    """Why there is no accuracy, when there is none."""
    if report["overall"] is not None:
        return None
    if not report["frames"]["ground_truth_in"]:
        return "no ground truth received: accuracy not measured"
    return "no label image matched a ground-truth stamp: accuracy not measured"


def latency_sentence(report: dict) -> str:
    lat = report["latency_ms"]
    text = (f"p50 {_fmt(lat['p50'])} ms, p95 {_fmt(lat['p95'])} ms, max {_fmt(lat['max'])} ms over "
            f"{lat['n']} frames")
    notes = []
    if lat.get("negative_excluded"):
        notes.append(f"{lat['negative_excluded']} excluded: labels arrived before any input of their frame")
    if lat.get("no_input"):
        notes.append(f"{lat['no_input']} without a received input of the same stamp")
    return text + (f" ({'; '.join(notes)})" if notes else "")


def format_summary(report: dict) -> str:
    """The printed summary: per-mode counts, rate, mIoU and latency; switch latencies; frame counts."""
    f, o = report["frames"], report["output"]
    lines = ["M3L replay evaluation",
             f"frames: ground truth in {f['ground_truth_in']}, labels out {f['labels_out']}, matched {f['matched']}",
             f"output rate: {_fmt(o['rate_hz'])} Hz over {_fmt(o['span_s'], '.2f')} s",
             "", f"{'mode':<12} {'frames':>6} {'rate Hz':>7} {'mIoU %':>7} {'p50 ms':>7} {'p95 ms':>7}"]
    for m, s in _mode_rows(report, "all"):
        lines.append(f"{m:<12} {s['frames']:>6} {_fmt(s.get('rate_hz')):>7} {_fmt(s['miou']):>7} "
                     f"{_fmt(s['latency_ms_p50']):>7} {_fmt(s['latency_ms_p95']):>7}")
    if not report["per_mode"]:
        lines.append("(no label images received)")
    lines += ["", f"end-to-end latency: {latency_sentence(report)}", ""]
    if report["switches"]:
        lines.append(f"{'t (s)':>6}  {'event':<10} {'topic':<48} {'expect':<10} {'switch latency':>14}")
        for s in report["switches"]:
            lines.append(f"{s['time_s']:>6.2f}  {s['event']:<10} {str(s['topic']):<48} "
                         f"{s['expected_mode']:<10} {switch_result(s, unit=' ms'):>14}")
    else:
        lines.append("no dropout events received")
    if accuracy_note(report):
        lines.append(accuracy_note(report))
    return "\n".join(lines)


def format_markdown(report: dict) -> str:
    f, o = report["frames"], report["output"]
    out = ["# Replay evaluation", "",
           f"Frames: {f['ground_truth_in']} ground truth in, {f['labels_out']} label images out, "
           f"{f['matched']} matched, {f['unmatched_out']} unmatched. "
           f"Output rate {_fmt(o['rate_hz'])} Hz over {_fmt(o['span_s'], '.2f')} s.", "",
           "## Frames, accuracy and latency per mode", ""]
    if accuracy_note(report):
        out += [accuracy_note(report).capitalize() + ".", ""]
    out += ["| mode | frames | mIoU (%) | pixel acc (%) | latency p50 (ms) | latency p95 (ms) | output rate (Hz) |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for m, s in _mode_rows(report, "**all**"):
        out.append(f"| {m} | {s['frames']} | {_fmt(s['miou'])} | {_fmt(s['pixel_acc'])} | "
                   f"{_fmt(s['latency_ms_p50'])} | {_fmt(s['latency_ms_p95'])} | {_fmt(s.get('rate_hz'))} |")
    if not report["per_mode"]:
        out.append("| (no label images received) | 0 | | | | | |")
    out += ["", f"End-to-end latency (latest input of a frame received -> its labels received, one clock): "
            f"{latency_sentence(report)}.", "", "## Mode switches after dropout boundaries", ""]
    if report["switches"]:
        out += ["| t (s) | event | topic | expected mode | switch latency (ms) |", "|---:|---|---|---|---:|"]
        for s in report["switches"]:
            out.append(f"| {s['time_s']:.2f} | {s['event']} | `{s['topic']}` | {s['expected_mode']} | "
                       f"{switch_result(s)} |")
    else:
        out.append("No dropout events were received.")
    if report["overall"]:
        scored = {m: s for m, s in report["per_mode"].items() if s["scored"]}
        out += ["", "## Per-class IoU (%) per mode", "",
                "| class | " + " | ".join(scored) + " |", "|---|" + "---:|" * len(scored)]
        for c in report["classes"]:
            cells = " | ".join(_fmt(s["per_class_iou"].get(c)) for s in scored.values())
            out.append(f"| {c} | {cells} |")
    return "\n".join(out) + "\n"


def plot_timeline(report: dict, events: Sequence[dict], path: Path) -> None:
    """Mode over time and per-frame mIoU (or latency without ground truth), with dropout windows shaded."""
    from matplotlib import rcParams
    from matplotlib.figure import Figure

    t0 = report["t0_wall"]
    frames = report["frames_detail"]
    changes = report["mode_changes"]
    modes = list(MODES) + sorted({c["mode"] for c in changes} - set(MODES))
    t_end = max([d["time_s"] for d in frames] + [c["time_s"] for c in changes] +
                [e["wall_time"] - t0 for e in events] + [0.0])
    fig = Figure(figsize=(10, 5))
    ax1, ax2 = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 2]})
    colors = rcParams["axes.prop_cycle"].by_key()["color"]
    topic_color: dict[str, str] = {}
    for topic, a, b in dropout_spans(events, t_end + t0):
        label = None if topic in topic_color else f"dropped: {topic}"
        c = topic_color.setdefault(topic, colors[(len(topic_color) + 5) % len(colors)])
        for ax in (ax1, ax2):
            ax.axvspan(a - t0, b - t0, color=c, alpha=0.2, label=label if ax is ax2 else None)
    levels = {m: i for i, m in enumerate(modes)}
    if changes:
        xs = [c["time_s"] for c in changes] + [t_end]
        ys = [levels[c["mode"]] for c in changes]
        ax1.step(xs, ys + ys[-1:], where="post", color="k")
    ax1.set_yticks(range(len(modes)), modes)
    ax1.set_ylim(-0.5, len(modes) - 0.5)
    ax1.set_ylabel("mode")
    scored = report["overall"] is not None
    key, ylabel = ("miou", "per-frame mIoU (%)") if scored else ("latency_ms", "latency (ms)")
    for m in modes:
        pts = [(d["time_s"], d[key]) for d in frames if d["mode"] == m and d[key] is not None]
        if pts:
            ax2.plot(*zip(*pts), ".", label=m, color=colors[levels[m] % len(colors)])
    if scored:
        ax2.set_ylim(0, 100)
    ax2.set_ylabel(ylabel)
    ax2.set_xlabel("time since replay start (s)")
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=8, ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")


def write_report(report: dict, events: Sequence[dict], out_dir: str | Path) -> dict[str, Path]:
    """Write JSON, Markdown and the timeline PNG; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "replay_report.json", "md": out / "replay_report.md", "png": out / "replay_timeline.png"}
    paths["json"].write_text(json.dumps({**report, "events": list(events)}, indent=2))
    paths["md"].write_text(format_markdown(report))
    plot_timeline(report, events, paths["png"])
    return paths
