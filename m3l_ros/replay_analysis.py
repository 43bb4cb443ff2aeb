"""What ``replay_eval`` measures, as pure functions of arrival times (no ROS; tests inject the times).

Every time here is an arrival on ONE clock, the evaluator's (seconds): ground
truth, inputs, labels, modes and the replay's events all get their time where
they are received, so no clock of another process is ever subtracted.

* **Frame matching (accuracy).** A label image is scored against the ground truth
  with the same header stamp; among several (a looped bag), the one that arrived
  closest in time (:class:`FrameMatcher`).
* **Latency** of an output = its arrival minus the arrival of the latest input
  (ground truth, RGB or depth) with the same stamp received up to then
  (:func:`output_latencies`). An output that arrives before any input with its
  stamp (reordering between publishers) would give a negative value: it is
  excluded from the statistics and counted as ``negative_excluded``.
* **Mode of an output** = the last ``~/mode`` received up to ``slack`` after it.
* **Switch latency** = from a dropout boundary's arrival to the first mode with
  the expected presence (:func:`switch_latencies`); any mode with the same
  presence in ``m3l_core.vocab.MODE_PRESENCE`` counts.

Without ground truth, :func:`build_report` still gives per-mode frame counts,
output rates, latencies and switch latencies.
"""
from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from m3l_core.vocab import MODE_PRESENCE, MODES, mode_for

DEFAULT_RGB_TOPIC = "/camera/camera/color/image_raw"
DEFAULT_DEPTH_TOPIC = "/camera/camera/aligned_depth_to_color/image_raw"


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
    from m3l_core.preprocess import resize_nearest

    pred = np.asarray(pred)
    if pred.shape != gt.shape:
        pred = resize_nearest(pred, gt.shape[:2])
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
    """One output frame scored against its ground truth."""

    stamp_ns: int
    t_gt: float  # arrival of the ground truth
    t_pred: float  # arrival of the node's labels
    cm: np.ndarray
    miou: float | None  # percent
    mode: str | None = None

    @property
    def latency_s(self) -> float:
        return self.t_pred - self.t_gt


@dataclass
class Output:
    """One label image received from the node (scored or not)."""

    stamp_ns: int
    t: float
    latency_s: float | None = None  # None: no input with this stamp received, or negative (excluded)
    mode: str | None = None
    record: FrameRecord | None = None


def output_latencies(outputs: Sequence[tuple[int, float]], inputs: Mapping[int, Sequence[float]]) -> dict:
    """Latency of every output against the latest earlier input arrival with its stamp.

    Returns ``{"latency_s": [float | None per output], "negative_excluded": n, "no_input": n}``.
    """
    sorted_inputs = {s: sorted(ts) for s, ts in inputs.items()}
    lat: list[float | None] = []
    negative = no_input = 0
    for stamp, t in outputs:
        ts = sorted_inputs.get(stamp)
        if not ts:
            no_input += 1
            lat.append(None)
            continue
        i = bisect.bisect_right(ts, t)
        if i == 0:  # every input copy of this frame arrived after its labels: reordered delivery
            negative += 1
            lat.append(None)
        else:
            lat.append(t - ts[i - 1])
    return {"latency_s": lat, "negative_excluded": negative, "no_input": no_input}


def mode_at(mode_obs: Sequence[tuple[float, str]], t: float, slack: float = 0.0) -> str | None:
    """The last mode received at or before ``t + slack`` (``mode_obs`` sorted by time); None if none yet."""
    best = None
    for tm, m in mode_obs:
        if tm <= t + slack:
            best = m
        else:
            break
    return best


def _same_presence(observed: str | None, expected: str) -> bool:
    if observed is None:
        return False
    return observed == expected or MODE_PRESENCE.get(observed, ()) == MODE_PRESENCE[expected]


def _topic_of(event: dict, topics: set[str]) -> bool:
    return event.get("topic") in topics or event.get("published_topic") in topics


def switch_latencies(
    events: Sequence[dict],
    mode_obs: Sequence[tuple[float, str]],
    *,
    rgb_topics: set[str],
    depth_topics: set[str],
) -> list[dict]:
    """One record per dropout boundary (event times in ``wall_time``, on the evaluator's clock).

    ``latency_s`` is None when no switch is expected (e.g. a camera_info window),
    when the window was cut by the end of the bag (``truncated``), or when the
    node never reported a mode with the expected presence before the next boundary
    (``reached`` False). It is 0 with ``already`` True when the node was there before the event.
    """
    obs = sorted(mode_obs)
    bounds = sorted((e for e in events if e.get("event") in ("drop_start", "drop_end")), key=lambda e: e["wall_time"])
    active: dict[str, int] = {"rgb": 0, "depth": 0}
    prev = mode_for(rgb=True, depth=True)
    out = []
    for i, e in enumerate(bounds):
        delta = 1 if e["event"] == "drop_start" else -1
        if _topic_of(e, rgb_topics):
            active["rgb"] = max(0, active["rgb"] + delta)
        if _topic_of(e, depth_topics):
            active["depth"] = max(0, active["depth"] + delta)
        exp = mode_for(rgb=active["rgb"] == 0, depth=active["depth"] == 0)
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
            if _same_presence(mode_at(obs, t0), exp):
                rec.update(reached=True, already=True, latency_s=0.0)
            else:
                hit = next((tm for tm, m in obs if t0 <= tm < t_next and _same_presence(m, exp)), None)
                rec["reached"] = hit is not None
                rec["latency_s"] = None if hit is None else hit - t0
        out.append(rec)
        prev = exp
    return out


def dropout_spans(events: Sequence[dict], t_end: float) -> list[tuple[str, float, float]]:
    """(topic, start time, end time) of each suppression, for plotting; open ones end at ``t_end``."""
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


def latency_stats(latencies_ms: Sequence[float], **counts: int) -> dict:
    lat = list(latencies_ms)
    return {"p50": _percentile(lat, 50), "p95": _percentile(lat, 95),
            "mean": float(np.mean(lat)) if lat else None, "min": float(np.min(lat)) if lat else None,
            "max": float(np.max(lat)) if lat else None, "n": len(lat), **counts}


def mode_durations(mode_changes: Sequence[dict], t_end: float) -> dict[str, float]:
    """Seconds spent in each mode between the first mode message and ``t_end`` (both relative times)."""
    out: dict[str, float] = {}
    for i, c in enumerate(mode_changes):
        end = mode_changes[i + 1]["time_s"] if i + 1 < len(mode_changes) else max(t_end, c["time_s"])
        out[c["mode"]] = out.get(c["mode"], 0.0) + (end - c["time_s"])
    return out


def _mode_order(modes: Iterable[str]) -> list[str]:
    modes = set(modes)
    return [m for m in MODES if m in modes] + sorted(m for m in modes if m not in MODES)


def build_report(
    records: Sequence[FrameRecord],
    mode_obs: Sequence[tuple[float, str]],
    events: Sequence[dict],
    *,
    class_names: Sequence[str] | None = None,
    frames_gt: int,
    frames_out: int,
    unmatched_out: int = 0,
    outputs: Sequence[tuple[int, float]] | None = None,
    inputs: Mapping[int, Sequence[float]] | None = None,
    rgb_topics: set[str] = frozenset({DEFAULT_RGB_TOPIC}),
    depth_topics: set[str] = frozenset({DEFAULT_DEPTH_TOPIC}),
    mode_slack: float = 0.02,
) -> dict:
    """Everything the evaluator reports, as a JSON-safe dict.

    ``records`` are the scored frames (empty without ground truth). ``outputs`` are all
    label arrivals ``(stamp_ns, t)`` and ``inputs`` the input arrivals per stamp; both
    default to what ``records`` hold (ground-truth arrivals as inputs).
    """
    from m3l_core.metrics import summarize
    import torch

    if outputs is None:
        outputs = [(r.stamp_ns, r.t_pred) for r in records]
    if inputs is None:
        inputs = {}
        for r in records:
            inputs.setdefault(r.stamp_ns, []).append(r.t_gt)
    obs = sorted(mode_obs)
    by_key = {(r.stamp_ns, r.t_pred): r for r in records}
    outputs = sorted(outputs, key=lambda o: o[1])
    lat_info = output_latencies(outputs, inputs)
    outs = []
    for (stamp, t), lat in zip(outputs, lat_info["latency_s"]):
        rec = by_key.get((stamp, t))
        mode = mode_at(obs, t, mode_slack) or "unknown"
        if rec is not None:
            rec.mode = mode
        outs.append(Output(stamp, t, lat, mode, rec))

    k = max([r.cm.shape[0] for r in records] + [len(class_names or [])] + [1])
    names = list(class_names) if class_names and len(class_names) >= k else [
        *(class_names or []), *[f"class_{i}" for i in range(len(class_names or []), k)]]

    start = next((e for e in events if e.get("event") == "start"), None)
    finished = next((e for e in events if e.get("event") == "finished"), None)
    times = [t for _, t in outputs] + [t for ts in inputs.values() for t in ts] + [t for t, _ in obs] + [
        e["wall_time"] for e in events]
    t0 = start["wall_time"] if start else (min(times) if times else 0.0)
    t_end = (max(times) if times else t0) - t0
    mode_changes = []
    for t, m in obs:
        if not mode_changes or mode_changes[-1]["mode"] != m:
            mode_changes.append({"time_s": t - t0, "mode": m})
    durations = mode_durations(mode_changes, t_end)

    def summary_of(os_: Sequence[Output]) -> dict:
        scored = [o.record for o in os_ if o.record is not None]
        lat = [o.latency_s * 1e3 for o in os_ if o.latency_s is not None]
        if scored:
            cm = sum((pad_cm(r.cm, k) for r in scored), np.zeros((k, k), dtype=np.int64))
            s = summarize(torch.from_numpy(cm), names)
        else:
            s = {"miou": None, "macc": None, "pixel_acc": None, "per_class_iou": {}, "num_pixels": 0}
        s.update(frames=len(os_), scored=len(scored), latency_ms_p50=_percentile(lat, 50),
                 latency_ms_p95=_percentile(lat, 95))
        return s

    by_mode: dict[str, list[Output]] = {}
    for o in outs:
        by_mode.setdefault(o.mode, []).append(o)
    per_mode = {}
    for m in _mode_order(by_mode):
        s = summary_of(by_mode[m])
        dur = durations.get(m)
        s.update(time_s=dur, rate_hz=(len(by_mode[m]) / dur) if dur else None)
        per_mode[m] = s

    switches = switch_latencies(events, obs, rgb_topics=set(rgb_topics), depth_topics=set(depth_topics))
    for s in switches:
        s["time_s"] = s["wall_time"] - t0
    measured = [s["latency_s"] for s in switches if s["latency_s"] is not None]
    out_times = [t for _, t in outputs]
    span = out_times[-1] - out_times[0] if len(out_times) > 1 else None
    all_lat = [o.latency_s * 1e3 for o in outs if o.latency_s is not None]
    rate = (len(out_times) - 1) / span if span else None
    overall = None
    if records:
        overall = summary_of(outs)
        overall.update(time_s=span, rate_hz=rate)
    return {
        "frames": {
            "ground_truth_in": frames_gt,
            "labels_out": frames_out,
            "matched": len(records),
            "unmatched_out": unmatched_out,
            "out_per_in": (frames_out / frames_gt) if frames_gt else None,
        },
        "output": {"frames": len(outs), "span_s": span, "rate_hz": rate},
        "replay": ({k2: finished[k2] for k2 in ("published", "suppressed", "iterations", "interrupted")
                    if k2 in finished} if finished else None),
        "classes": names,
        "overall": overall,
        "per_mode": per_mode,
        "latency_ms": latency_stats(all_lat, negative_excluded=lat_info["negative_excluded"],
                                    no_input=lat_info["no_input"]),
        "switches": switches,
        "switch_latency_s": {"max": max(measured) if measured else None,
                             "mean": float(np.mean(measured)) if measured else None, "n": len(measured),
                             "missed": sum(1 for s in switches if s["reached"] is False)},
        "mode_changes": mode_changes,
        "frames_detail": [
            {"time_s": o.t - t0, "stamp_ns": o.stamp_ns, "mode": o.mode,
             "miou": o.record.miou if o.record else None,
             "latency_ms": None if o.latency_s is None else o.latency_s * 1e3} for o in outs],
        "t0_wall": t0,
    }
