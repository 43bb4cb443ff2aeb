"""Evaluate the segmentation node live while a bag replays: accuracy per mode, switch and end-to-end latency.

    python -m m3l_ros.replay_eval --out DIR [--labels-topic /segment_node/labels]
        [--mode-topic /segment_node/mode] [--gt-topic /camera/camera/ground_truth/labels]
        [--events-topic /m3l_replay/events] [--class-names-topic /segment_node/class_names]
        [--classes classes.yaml | --num-classes N]
        [--duration 120] [--grace 1.0]

Start it (and the node) before ``python -m m3l_ros.replay BAG --drop ...``. It
subscribes to the node's label and mode outputs, to the bag's ground truth and
to the replay's events, and stops when the replay reports ``finished`` (plus
``--grace`` seconds for frames still in flight) or after ``--duration``.

How things are measured (all on this host's ``time.time()``; run it on the
replay's machine):

* **Matching.** A label image is matched to the ground-truth message with the
  same header stamp whose arrival is closest in time (so ``--loop`` without
  ``--restamp`` still matches correctly).
* **End-to-end latency** = label arrival minus arrival of the matching ground
  truth. The replay publishes a frame's ground truth just before its RGB and
  depth, so this is the time from the frame entering ROS to its labels coming
  out, and it needs no re-stamping or clock sync with the node.
* **Class names** come from ``--classes``, else from the node's latched
  ``~/class_names`` (JSON), else ``class_<i>``.
* **Mode of a frame** = the last ``~/mode`` message received up to
  ``--mode-slack`` seconds after its labels (the node publishes both from the
  same callback, in either order).
* **Switch latency.** At each ``drop_start``/``drop_end`` event the expected
  mode follows from which of RGB and depth are withheld (``--rgb-topic``,
  ``--depth-topic``); the latency is the time from the event's ``wall_time``
  to the first ``~/mode`` message with that mode, searched until the next
  event. Windows cut by the bag's end are not measured.

Writes ``replay_report.json``, ``replay_report.md`` and ``replay_timeline.png``
to ``--out`` and prints a summary.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from m3l_ros.watchdog import mode_for

log = logging.getLogger("m3l_ros.replay_eval")

MODES = ("rgbd", "rgb_only", "depth_only", "no_input")
DEFAULT_LABELS_TOPIC = "/segment_node/labels"
DEFAULT_MODE_TOPIC = "/segment_node/mode"
DEFAULT_CLASS_NAMES_TOPIC = "/segment_node/class_names"
DEFAULT_GT_TOPIC = "/camera/camera/ground_truth/labels"
DEFAULT_EVENTS_TOPIC = "/m3l_replay/events"
DEFAULT_RGB_TOPIC = "/camera/camera/color/image_raw"
DEFAULT_DEPTH_TOPIC = "/camera/camera/aligned_depth_to_color/image_raw"


# =============================================================================================
# Pure analysis (no ROS)
# =============================================================================================

def expected_mode(rgb: bool, depth: bool) -> str:
    """The mode a correct node is in when these inputs arrive (the node's own rule)."""
    return mode_for(rgb=rgb, depth=depth)


@dataclass
class Match:
    stamp_ns: int
    t_gt: float
    t_pred: float
    gt: np.ndarray
    pred: np.ndarray


class FrameMatcher:
    """Pairs predicted label images with ground truth by header stamp.

    Among ground-truth messages with the prediction's stamp, the one whose arrival is
    closest to the prediction's wins; a prediction that arrives before its ground truth
    waits. Entries older than ``max_age_s`` (relative to the newest arrival) are dropped,
    so memory stays bounded on long replays.
    """

    def __init__(self, max_age_s: float = 10.0) -> None:
        self.max_age_s = max_age_s
        self._gt: dict[int, list[tuple[float, np.ndarray]]] = {}
        self._pending: dict[int, list[tuple[float, np.ndarray]]] = {}
        self._latest = -math.inf
        self.unmatched_pred = 0

    def _prune(self, t: float) -> None:
        self._latest = max(self._latest, t)
        cutoff = self._latest - self.max_age_s
        for store, count in ((self._gt, False), (self._pending, True)):
            for stamp in list(store):
                keep = [e for e in store[stamp] if e[0] >= cutoff]
                if count:
                    self.unmatched_pred += len(store[stamp]) - len(keep)
                if keep:
                    store[stamp] = keep
                else:
                    del store[stamp]

    def add_gt(self, stamp_ns: int, t: float, label: np.ndarray) -> list[Match]:
        self._gt.setdefault(stamp_ns, []).append((t, label))
        out = [Match(stamp_ns, t, tp, label, pred) for tp, pred in self._pending.pop(stamp_ns, [])]
        self._prune(t)
        return out

    def add_pred(self, stamp_ns: int, t: float, label: np.ndarray) -> list[Match]:
        cands = self._gt.get(stamp_ns)
        self._prune(t)
        if not cands:
            self._pending.setdefault(stamp_ns, []).append((t, label))
            return []
        tg, gt = min(cands, key=lambda e: abs(e[0] - t))
        return [Match(stamp_ns, tg, t, gt, label)]

    def finish(self) -> int:
        """Count predictions still waiting for ground truth as unmatched; returns the total unmatched."""
        self.unmatched_pred += sum(len(v) for v in self._pending.values())
        self._pending.clear()
        return self.unmatched_pred


def frame_confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """``(C, C)`` int64 confusion matrix of one frame via ``m3l_core.metrics`` (pred resized to gt by nearest)."""
    import torch

    from m3l_core.metrics import confusion_matrix
    from m3l_ros.image_codec import resize_nearest

    pred = np.asarray(pred)
    if pred.shape != gt.shape:
        pred = resize_nearest(pred, gt.shape[0], gt.shape[1])
    cm = confusion_matrix(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(gt.astype(np.int64)),
                          num_classes, ignore_index=ignore_index)
    return cm.numpy()


def frame_miou(cm: np.ndarray) -> float | None:
    """mIoU in percent of one confusion matrix (classes in neither pred nor GT excluded); None if undefined."""
    import torch

    from m3l_core.metrics import miou

    v = miou(torch.from_numpy(cm))
    return None if math.isnan(v) else 100.0 * v


def pad_cm(cm: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, n), dtype=np.int64)
    out[: cm.shape[0], : cm.shape[1]] = cm
    return out


@dataclass
class FrameRecord:
    """One evaluated output frame."""

    stamp_ns: int
    t_gt: float  # arrival of the ground truth (the frame entering ROS)
    t_pred: float  # arrival of the node's labels
    cm: np.ndarray
    miou: float | None  # percent
    mode: str | None = None

    @property
    def latency_s(self) -> float:
        return self.t_pred - self.t_gt


def mode_at(mode_obs: Sequence[tuple[float, str]], t: float, slack: float = 0.0) -> str | None:
    """The last mode received at or before ``t + slack`` (``mode_obs`` sorted by time); None if none yet."""
    best = None
    for tm, m in mode_obs:
        if tm <= t + slack:
            best = m
        else:
            break
    return best


def assign_modes(records: Sequence[FrameRecord], mode_obs: Sequence[tuple[float, str]], slack: float) -> None:
    obs = sorted(mode_obs)
    for r in records:
        r.mode = mode_at(obs, r.t_pred, slack) or "unknown"


def _topic_of(event: dict, topics: set[str]) -> bool:
    return event.get("topic") in topics or event.get("published_topic") in topics


def switch_latencies(
    events: Sequence[dict],
    mode_obs: Sequence[tuple[float, str]],
    *,
    rgb_topics: set[str],
    depth_topics: set[str],
) -> list[dict]:
    """One record per dropout boundary: which mode a correct node must switch to and how long it took.

    ``latency_s`` is None when no switch is expected (e.g. a camera_info window),
    when the window was cut by the end of the bag (``truncated``), or when the
    node never reported the expected mode before the next boundary (``reached`` False).
    It is 0 with ``already`` True when the node was in the expected mode before the event.
    """
    obs = sorted(mode_obs)
    bounds = sorted((e for e in events if e.get("event") in ("drop_start", "drop_end")), key=lambda e: e["wall_time"])
    active: dict[str, int] = {"rgb": 0, "depth": 0}
    prev = "rgbd"
    out = []
    for i, e in enumerate(bounds):
        delta = 1 if e["event"] == "drop_start" else -1
        if _topic_of(e, rgb_topics):
            active["rgb"] = max(0, active["rgb"] + delta)
        if _topic_of(e, depth_topics):
            active["depth"] = max(0, active["depth"] + delta)
        exp = expected_mode(active["rgb"] == 0, active["depth"] == 0)
        t0 = float(e["wall_time"])
        t_next = float(bounds[i + 1]["wall_time"]) if i + 1 < len(bounds) else math.inf
        rec = {
            "event": e["event"],
            "topic": e.get("topic"),
            "bag_time": e.get("bag_time"),
            "wall_time": t0,
            "iteration": e.get("iteration", 0),
            "expected_mode": exp,
            "switch_expected": exp != prev,
            "truncated": bool(e.get("truncated", False)),
            "latency_s": None,
            "reached": None,
            "already": False,
        }
        if rec["switch_expected"] and not rec["truncated"]:
            if mode_at(obs, t0) == exp:
                rec.update(reached=True, already=True, latency_s=0.0)
            else:
                hit = next((tm for tm, m in obs if t0 <= tm < t_next and m == exp), None)
                rec["reached"] = hit is not None
                rec["latency_s"] = None if hit is None else hit - t0
        out.append(rec)
        prev = exp
    return out


def dropout_spans(events: Sequence[dict], t_end: float) -> list[tuple[str, float, float]]:
    """(topic, start wall time, end wall time) of each suppression, for plotting; open ones end at ``t_end``."""
    open_: dict[tuple, float] = {}
    spans = []
    for e in sorted(events, key=lambda e: e["wall_time"]):
        key = (e.get("topic"), json.dumps(e.get("window"), sort_keys=True), e.get("iteration", 0))
        if e.get("event") == "drop_start":
            open_[key] = e["wall_time"]
        elif e.get("event") == "drop_end" and key in open_:
            spans.append((key[0], open_.pop(key), e["wall_time"]))
    spans += [(k[0], t, t_end) for k, t in open_.items()]
    return sorted(spans, key=lambda s: s[1])


def _percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None


def build_report(
    records: Sequence[FrameRecord],
    mode_obs: Sequence[tuple[float, str]],
    events: Sequence[dict],
    *,
    class_names: Sequence[str] | None = None,
    frames_gt: int,
    frames_out: int,
    unmatched_out: int = 0,
    rgb_topics: set[str] = frozenset({DEFAULT_RGB_TOPIC}),
    depth_topics: set[str] = frozenset({DEFAULT_DEPTH_TOPIC}),
    mode_slack: float = 0.02,
) -> dict:
    """Everything the evaluator reports, as a JSON-safe dict. ``records`` get their ``mode`` assigned."""
    from m3l_core.metrics import summarize
    import torch

    assign_modes(records, mode_obs, mode_slack)
    k = max([r.cm.shape[0] for r in records] + [len(class_names or [])] + [1])
    names = list(class_names) if class_names and len(class_names) >= k else [
        *(class_names or []), *[f"class_{i}" for i in range(len(class_names or []), k)]]

    def summary_of(rs: Sequence[FrameRecord]) -> dict:
        cm = sum((pad_cm(r.cm, k) for r in rs), np.zeros((k, k), dtype=np.int64))
        s = summarize(torch.from_numpy(cm), names)
        lat = [r.latency_s * 1e3 for r in rs]
        s.update(frames=len(rs), latency_ms_p50=_percentile(lat, 50), latency_ms_p95=_percentile(lat, 95))
        return s

    by_mode: dict[str, list[FrameRecord]] = {}
    for r in records:
        by_mode.setdefault(r.mode, []).append(r)
    order = [m for m in MODES if m in by_mode] + sorted(m for m in by_mode if m not in MODES)
    start = next((e for e in events if e.get("event") == "start"), None)
    finished = next((e for e in events if e.get("event") == "finished"), None)
    times = [r.t_gt for r in records] + [t for t, _ in mode_obs] + [e["wall_time"] for e in events]
    t0 = start["wall_time"] if start else (min(times) if times else 0.0)
    switches = switch_latencies(events, mode_obs, rgb_topics=set(rgb_topics), depth_topics=set(depth_topics))
    for s in switches:
        s["time_s"] = s["wall_time"] - t0
    measured = [s["latency_s"] for s in switches if s["latency_s"] is not None]
    lat = [r.latency_s * 1e3 for r in records]
    mode_changes = []
    for t, m in sorted(mode_obs):
        if not mode_changes or mode_changes[-1]["mode"] != m:
            mode_changes.append({"time_s": t - t0, "mode": m})
    return {
        "frames": {
            "ground_truth_in": frames_gt,
            "labels_out": frames_out,
            "matched": len(records),
            "unmatched_out": unmatched_out,
            "out_per_in": (frames_out / frames_gt) if frames_gt else None,
        },
        "replay": ({k2: finished[k2] for k2 in ("published", "suppressed", "iterations", "interrupted")
                    if k2 in finished} if finished else None),
        "classes": names,
        "overall": summary_of(records) if records else None,
        "per_mode": {m: summary_of(by_mode[m]) for m in order},
        "latency_ms": {"p50": _percentile(lat, 50), "p95": _percentile(lat, 95),
                       "mean": float(np.mean(lat)) if lat else None, "max": float(np.max(lat)) if lat else None,
                       "n": len(lat)},
        "switches": switches,
        "switch_latency_s": {"max": max(measured) if measured else None,
                             "mean": float(np.mean(measured)) if measured else None, "n": len(measured),
                             "missed": sum(1 for s in switches if s["reached"] is False)},
        "mode_changes": mode_changes,
        "frames_detail": [
            {"time_s": r.t_gt - t0, "stamp_ns": r.stamp_ns, "mode": r.mode, "miou": r.miou,
             "latency_ms": r.latency_s * 1e3} for r in records],
        "t0_wall": t0,
    }


def _fmt(v: Any, spec: str = ".1f") -> str:
    return "n/a" if v is None else format(v, spec)


def format_summary(report: dict) -> str:
    """The printed summary: per-mode mIoU, switch latencies, end-to-end latency, frame counts."""
    f = report["frames"]
    lines = ["M3L replay evaluation",
             f"frames: ground truth in {f['ground_truth_in']}, labels out {f['labels_out']}, matched {f['matched']}",
             "", f"{'mode':<12} {'frames':>6} {'mIoU %':>7} {'p50 ms':>7} {'p95 ms':>7}"]
    rows = list(report["per_mode"].items()) + ([("all", report["overall"])] if report["overall"] else [])
    for m, s in rows:
        lines.append(f"{m:<12} {s['frames']:>6} {_fmt(s['miou']):>7} "
                     f"{_fmt(s['latency_ms_p50']):>7} {_fmt(s['latency_ms_p95']):>7}")
    lat = report["latency_ms"]
    lines += ["", f"end-to-end latency: p50 {_fmt(lat['p50'])} ms, p95 {_fmt(lat['p95'])} ms (n={lat['n']})", ""]
    if report["switches"]:
        lines.append(f"{'t (s)':>6}  {'event':<10} {'topic':<48} {'expect':<10} {'switch latency':>14}")
        for s in report["switches"]:
            res = switch_result(s, unit=" ms")
            lines.append(f"{s['time_s']:>6.2f}  {s['event']:<10} {str(s['topic']):<48} "
                         f"{s['expected_mode']:<10} {res:>14}")
    else:
        lines.append("no dropout events received")
    return "\n".join(lines)


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


def format_markdown(report: dict) -> str:
    f = report["frames"]
    out = ["# Replay evaluation", "",
           f"Frames: {f['ground_truth_in']} ground truth in, {f['labels_out']} label images out, "
           f"{f['matched']} matched, {f['unmatched_out']} unmatched.", "",
           "## Accuracy and latency per mode", "",
           "| mode | frames | mIoU (%) | pixel acc (%) | latency p50 (ms) | latency p95 (ms) |",
           "|---|---:|---:|---:|---:|---:|"]
    rows = list(report["per_mode"].items()) + ([("**all**", report["overall"])] if report["overall"] else [])
    for m, s in rows:
        out.append(f"| {m} | {s['frames']} | {_fmt(s['miou'])} | {_fmt(s['pixel_acc'])} | "
                   f"{_fmt(s['latency_ms_p50'])} | {_fmt(s['latency_ms_p95'])} |")
    lat = report["latency_ms"]
    out += ["", f"End-to-end latency (ground truth published -> labels received): p50 {_fmt(lat['p50'])} ms, "
            f"p95 {_fmt(lat['p95'])} ms over {lat['n']} frames.", "", "## Mode switches after dropout boundaries", ""]
    if report["switches"]:
        out += ["| t (s) | event | topic | expected mode | switch latency (ms) |", "|---:|---|---|---|---:|"]
        for s in report["switches"]:
            res = switch_result(s)
            out.append(f"| {s['time_s']:.2f} | {s['event']} | `{s['topic']}` | {s['expected_mode']} | {res} |")
    else:
        out.append("No dropout events were received.")
    if report["overall"]:
        out += ["", "## Per-class IoU (%) per mode", "",
                "| class | " + " | ".join(report["per_mode"]) + " |", "|---|" + "---:|" * len(report["per_mode"])]
        for c in report["classes"]:
            cells = " | ".join(_fmt(s["per_class_iou"].get(c)) for s in report["per_mode"].values())
            out.append(f"| {c} | {cells} |")
    return "\n".join(out) + "\n"


def plot_timeline(report: dict, events: Sequence[dict], path: Path) -> None:
    """Mode over time and per-frame mIoU, with dropout windows shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = report["t0_wall"]
    frames = report["frames_detail"]
    changes = report["mode_changes"]
    t_end = max([d["time_s"] for d in frames] + [c["time_s"] for c in changes] +
                [e["wall_time"] - t0 for e in events] + [0.0])
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 5), sharex=True, gridspec_kw={"height_ratios": [1, 2]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    topic_color: dict[str, str] = {}
    for topic, a, b in dropout_spans(events, t_end + t0):
        label = None if topic in topic_color else f"dropped: {topic}"
        c = topic_color.setdefault(topic, colors[(len(topic_color) + 4) % len(colors)])
        for ax in (ax1, ax2):
            ax.axvspan(a - t0, b - t0, color=c, alpha=0.2, label=label if ax is ax2 else None)
    levels = {m: i for i, m in enumerate(MODES)}
    if changes:
        xs = [c["time_s"] for c in changes] + [t_end]
        ys = [levels.get(c["mode"], len(MODES)) for c in changes]
        ax1.step(xs, ys + ys[-1:], where="post", color="k")
    ax1.set_yticks(range(len(MODES)), MODES)
    ax1.set_ylim(-0.5, len(MODES) - 0.5)
    ax1.set_ylabel("mode")
    for m in MODES:
        pts = [(d["time_s"], d["miou"]) for d in frames if d["mode"] == m and d["miou"] is not None]
        if pts:
            ax2.plot(*zip(*pts), ".", label=m, color=colors[levels[m] % len(colors)])
    ax2.set_ylim(0, 100)
    ax2.set_ylabel("per-frame mIoU (%)")
    ax2.set_xlabel("time since replay start (s)")
    ax2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=8, ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def write_report(report: dict, events: Sequence[dict], out_dir: str | Path) -> dict[str, Path]:
    """Write JSON, Markdown and the timeline PNG; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "replay_report.json", "md": out / "replay_report.md", "png": out / "replay_timeline.png"}
    paths["json"].write_text(json.dumps({**report, "events": list(events)}, indent=2))
    paths["md"].write_text(format_markdown(report))
    plot_timeline(report, events, paths["png"])
    return paths


# =============================================================================================
# ROS plumbing
# =============================================================================================

@dataclass
class EvalConfig:
    labels_topic: str = DEFAULT_LABELS_TOPIC
    mode_topic: str = DEFAULT_MODE_TOPIC
    gt_topic: str = DEFAULT_GT_TOPIC
    events_topic: str = DEFAULT_EVENTS_TOPIC
    class_names_topic: str = DEFAULT_CLASS_NAMES_TOPIC  # the node's latched JSON {"class_names": [...]}
    rgb_topics: set[str] = field(default_factory=lambda: {DEFAULT_RGB_TOPIC})
    depth_topics: set[str] = field(default_factory=lambda: {DEFAULT_DEPTH_TOPIC})
    class_names: list[str] | None = None  # None: taken from class_names_topic when the node publishes it
    num_classes: int | None = None  # None: grows with the largest class id seen
    ignore_index: int = 255
    qos: str = "reliable"  # the node's outputs are reliable; best-effort would lose frames on loopback
    mode_slack: float = 0.02
    max_age_s: float = 10.0


class ReplayEvaluator:
    """Subscribes through an rclpy node and accumulates per-frame results; the clock is injected.

    Callbacks only take the arrival time, decode and match; confusion matrices are computed
    on a worker thread so a slow frame never delays the arrival times of the next ones.
    """

    def __init__(self, node: Any, config: EvalConfig, *, clock=time.time) -> None:
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        self.node = node
        self.config = config
        self.clock = clock
        self.matcher = FrameMatcher(max_age_s=config.max_age_s)
        self.records: list[FrameRecord] = []
        self.mode_obs: list[tuple[float, str]] = []
        self.events: list[dict] = []
        self.frames_gt = 0
        self.frames_out = 0
        self.finished_at: float | None = None
        self.lock = threading.Lock()
        self.num_classes = config.num_classes or (len(config.class_names) if config.class_names else 1)
        frame_miou(frame_confusion(np.zeros((1, 1), np.uint8), np.zeros((1, 1), np.uint8), 1))  # import torch now
        self._queue: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="replay_eval_scoring", daemon=True)
        self._worker.start()
        reliability = ReliabilityPolicy.RELIABLE if config.qos == "reliable" else ReliabilityPolicy.BEST_EFFORT
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=reliability)
        self.class_names = list(config.class_names) if config.class_names else None
        node.create_subscription(Image, config.labels_topic, self._on_labels, qos)
        node.create_subscription(Image, config.gt_topic, self._on_gt, qos)
        # ~/mode and ~/class_names are latched (transient local) by the node: we get the current value on joining.
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        node.create_subscription(String, config.mode_topic, self._on_mode, latched)
        node.create_subscription(String, config.events_topic, self._on_event, latched)
        if self.class_names is None and config.class_names_topic:
            node.create_subscription(String, config.class_names_topic, self._on_class_names, latched)

    @staticmethod
    def _stamp(msg) -> int:
        return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec

    def _decode(self, msg, topic: str) -> np.ndarray | None:
        from m3l_ros.image_codec import LABEL_ENCODINGS, ImageCodecError, decode_message

        try:
            return decode_message(msg, allowed=LABEL_ENCODINGS)
        except ImageCodecError as err:
            log.warning("%s: %s (field %s)", topic, err, err.field)
            return None

    def _work(self) -> None:
        while True:
            m = self._queue.get()
            try:
                if m is not None:
                    self._score(m)
            except Exception:  # a bad frame must not kill scoring of the rest
                log.exception("scoring frame %s failed", getattr(m, "stamp_ns", "?"))
            finally:
                self._queue.task_done()
            if m is None:
                return

    def _enqueue(self, matches: list[Match]) -> None:
        for m in matches:
            self._queue.put(m)

    def _score(self, m: Match) -> None:
        ids = [int(m.pred.max(initial=0))]
        valid = m.gt[m.gt != self.config.ignore_index]
        if valid.size:
            ids.append(int(valid.max()))
        if self.config.num_classes is None:
            self.num_classes = max(self.num_classes, max(ids) + 1)
        elif max(ids) >= self.num_classes:
            log.warning("frame %d: class id %d >= num_classes %d; skipped", m.stamp_ns, max(ids), self.num_classes)
            return
        cm = frame_confusion(m.pred, m.gt, self.num_classes, self.config.ignore_index)
        record = FrameRecord(m.stamp_ns, m.t_gt, m.t_pred, cm, frame_miou(cm))
        with self.lock:
            self.records.append(record)

    def _on_gt(self, msg) -> None:
        t = self.clock()
        label = self._decode(msg, self.config.gt_topic)
        with self.lock:
            self.frames_gt += 1
            if label is not None:
                self._enqueue(self.matcher.add_gt(self._stamp(msg), t, label))

    def _on_labels(self, msg) -> None:
        t = self.clock()
        label = self._decode(msg, self.config.labels_topic)
        with self.lock:
            self.frames_out += 1
            if label is not None:
                self._enqueue(self.matcher.add_pred(self._stamp(msg), t, label))

    def _on_mode(self, msg) -> None:
        with self.lock:
            self.mode_obs.append((self.clock(), str(msg.data)))

    def _on_class_names(self, msg) -> None:
        try:
            names = json.loads(msg.data)["class_names"]
        except (json.JSONDecodeError, KeyError, TypeError):
            log.warning("%s: expected JSON with a 'class_names' list, got %r",
                        self.config.class_names_topic, msg.data[:80])
            return
        with self.lock:
            self.class_names = [str(n) for n in names]

    def _on_event(self, msg) -> None:
        t = self.clock()
        try:
            event = json.loads(msg.data)
        except json.JSONDecodeError:
            log.warning("%s: not JSON: %r", self.config.events_topic, msg.data[:80])
            return
        event.setdefault("wall_time", t)
        with self.lock:
            self.events.append(event)
            if event.get("event") == "finished":
                self.finished_at = t
            elif event.get("event") == "start" and any(e.get("event") == "finished" for e in self.events[:-1]):
                log.warning("a new replay started after one finished; results mix both")

    def report(self) -> dict:
        """Finish scoring (stops the worker) and build the report."""
        self._queue.put(None)
        self._queue.join()
        with self.lock:
            unmatched = self.matcher.finish()
            return build_report(
                self.records, list(self.mode_obs), list(self.events), class_names=self.class_names,
                frames_gt=self.frames_gt, frames_out=self.frames_out, unmatched_out=unmatched,
                rgb_topics=self.config.rgb_topics, depth_topics=self.config.depth_topics,
                mode_slack=self.config.mode_slack)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m m3l_ros.replay_eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True,
                   help="directory for replay_report.{json,md} and replay_timeline.png")
    p.add_argument("--labels-topic", default=DEFAULT_LABELS_TOPIC,
                   help=f"node's label output (default {DEFAULT_LABELS_TOPIC})")
    p.add_argument("--mode-topic", default=DEFAULT_MODE_TOPIC,
                   help=f"node's mode output (default {DEFAULT_MODE_TOPIC})")
    p.add_argument("--gt-topic", default=DEFAULT_GT_TOPIC,
                   help=f"ground truth from the bag (default {DEFAULT_GT_TOPIC})")
    p.add_argument("--events-topic", default=DEFAULT_EVENTS_TOPIC,
                   help=f"replay events (default {DEFAULT_EVENTS_TOPIC})")
    p.add_argument("--class-names-topic", default=DEFAULT_CLASS_NAMES_TOPIC,
                   help="node's latched class list, used unless --classes is given "
                        f"(default {DEFAULT_CLASS_NAMES_TOPIC})")
    p.add_argument("--rgb-topic", action="append", default=None,
                   help="bag or published name of the RGB topic, for expected modes (repeatable)")
    p.add_argument("--depth-topic", action="append", default=None, help="same for depth (repeatable)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--classes", type=Path, help="classes.yaml of the dataset (names for per-class IoU)")
    g.add_argument("--num-classes", type=int, help="number of classes (default: largest id seen + 1)")
    p.add_argument("--duration", type=float, default=120.0, help="stop after this many seconds at most (default 120)")
    p.add_argument("--grace", type=float, default=1.0, help="seconds to keep listening after the replay finished")
    p.add_argument("--mode-slack", type=float, default=0.02, help="mode messages this late still count for a frame (s)")
    p.add_argument("--qos", choices=("reliable", "best_effort"), default="reliable", help="subscription reliability")
    return p


def main(args: list[str] | None = None) -> int:
    import rclpy
    from m3l_ros.ros_session import ros_session
    from rclpy.utilities import remove_ros_args

    argv = sys.argv if args is None else [sys.argv[0], *args]
    parser = build_parser()
    ns = parser.parse_args(remove_ros_args(argv)[1:])
    logging.basicConfig(level=logging.INFO, format="[replay_eval] %(message)s")
    names = None
    if ns.classes is not None:
        from m3l_core.data.folder import load_classes

        try:
            info = load_classes(ns.classes)
        except (OSError, ValueError) as err:
            parser.error(f"--classes {ns.classes}: {err}")
        names = list(info.names)
    if ns.num_classes is not None and ns.num_classes <= 0:
        parser.error(f"--num-classes must be > 0, got {ns.num_classes}")
    config = EvalConfig(
        labels_topic=ns.labels_topic, mode_topic=ns.mode_topic, gt_topic=ns.gt_topic, events_topic=ns.events_topic,
        class_names_topic=ns.class_names_topic,
        rgb_topics=set(ns.rgb_topic or [DEFAULT_RGB_TOPIC]), depth_topics=set(ns.depth_topic or [DEFAULT_DEPTH_TOPIC]),
        class_names=names,
        num_classes=ns.num_classes if ns.num_classes is not None else (len(names) if names else None),
        qos=ns.qos, mode_slack=ns.mode_slack)

    with ros_session("m3l_replay_eval", argv) as (node, stop):
        ev = ReplayEvaluator(node, config)
        t_end = time.monotonic() + ns.duration
        while not stop.is_set() and time.monotonic() < t_end:
            rclpy.spin_once(node, timeout_sec=0.05)
            if ev.finished_at is not None and time.time() - ev.finished_at >= ns.grace:
                break
        if ev.finished_at is None:
            log.warning("the replay did not report 'finished' (stopped after %s)",
                        "a signal" if stop.is_set() else f"--duration {ns.duration} s")
        report = ev.report()
    paths = write_report(report, ev.events, ns.out)
    print(format_summary(report), flush=True)
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
