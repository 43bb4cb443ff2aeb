"""segment_node's health report: the level and message for a mode, the values, the /diagnostics message.

:func:`health` and :func:`diagnostic_values` are ROS-free. A mode is OK when it uses every stream the model has (``rgbd``,
or a uni-modal checkpoint's own mode), WARN when a stream the model uses is missing or
``unsynced``, ERROR in ``no_input``. A node clock that stands still while frames keep coming
(``use_sim_time`` without ``/clock``) is at least WARN: the watchdog is frozen with it.
"""
from __future__ import annotations

from typing import Any

from m3l_core.vocab import DEPTH_ONLY, MODALITIES, NO_INPUT, RGB_ONLY, RGBD, UNSYNCED
from m3l_ros.node_model import backend_name

OK, WARN, ERROR = "OK", "WARN", "ERROR"
CLOCK_STALL_S = 3.0  # wall seconds without node-clock progress before it is reported

_MESSAGES = {
    RGBD: "RGB-D",
    RGB_ONLY: "depth missing: RGB only (learned depth token)",
    DEPTH_ONLY: "RGB missing: depth only (learned RGB token)",
    NO_INPUT: "no usable input: nothing published",
}
_HEALTHY = {RGBD: "RGB-D", RGB_ONLY: "RGB (a uni-modal RGB model: its only input)",
            DEPTH_ONLY: "depth (a uni-modal depth model: its only input)"}


def health(mode: str, *, healthy_mode: str, offset: float | None = None, slop: float = 0.0,
           clock_stalled_s: float = 0.0, active: bool = True) -> tuple[str, str]:
    """(level, message) for the current state."""
    if not active:
        return OK, "inactive (lifecycle): not subscribed, nothing published"
    if mode == UNSYNCED:
        off = "unknown" if offset is None else f"{offset:+.3f} s"
        level, message = WARN, (f"RGB and depth stamps never pair (RGB - depth stamp offset {off}, sync_slop {slop:g} s): "
                                "RGB only with the learned depth token")
    elif mode == healthy_mode:
        level, message = OK, _HEALTHY[mode]
    else:
        level, message = (ERROR if mode == NO_INPUT else WARN), _MESSAGES[mode]
    if clock_stalled_s >= CLOCK_STALL_S:
        message += (f"; node clock has not moved for {clock_stalled_s:.0f} s (use_sim_time without /clock?): "
                    "stream timeouts are frozen")
        level = ERROR if level == ERROR else WARN
    return level, message


def fmt(value: float | None, scale: float = 1.0) -> str:
    return "nan" if value is None else f"{value * scale:.3f}"


def diagnostic_array(*, name: str, hardware_id: str, level: str, message: str, values: list[tuple[str, str]],
                     stamp: Any):
    """The DiagnosticArray with one status."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    levels = {OK: DiagnosticStatus.OK, WARN: DiagnosticStatus.WARN, ERROR: DiagnosticStatus.ERROR}
    status = DiagnosticStatus(level=levels[level], name=name, message=message, hardware_id=hardware_id,
                              values=[KeyValue(key=k, value=v) for k, v in values])
    arr = DiagnosticArray(status=[status])
    arr.header.stamp = stamp
    return arr


def diagnostic_values(core: Any, now: float, stalled: float) -> list[tuple[str, str]]:
    """The key/value pairs of the status, from a :class:`m3l_ros.node_core.SegmentCore` (caller holds its lock)."""
    wd, pr = core.watchdog, core.pairer
    kv = [("mode", wd.mode), ("healthy_mode", wd.healthy_mode), ("mode_transitions", str(wd.transitions))]
    for m in MODALITIES:
        kv += [(f"{m}_rate_hz", f"{core.input_rate[m].rate(now):.2f}"), (f"{m}_age_s", fmt(wd.age(m, now))),
               (f"{m}_stamp_delay_s", fmt(None if core.last_stamp[m] is None else now - core.last_stamp[m])),
               (f"received.{m}", str(core.received[m]))]
    kv += [(f"qos.{k}", v) for k, v in core.sub_reliability.items() if k in core.subs]
    kv += [("output_rate_hz", f"{core.output_rate.rate(now):.2f}"),
           ("latency_p50_ms", fmt(core.latency.percentile(50), 1e3)),
           ("latency_p95_ms", fmt(core.latency.percentile(95), 1e3)),
           ("frames_processed", str(core.processed)), ("pairs", str(pr.pairs)),
           ("frames_dropped", str(pr.dropped))]
    kv += [(f"dropped.{k}", str(v)) for k, v in sorted(pr.drops.items())]
    kv += [(f"processed.{k}", str(v)) for k, v in sorted(core.published_by_mode.items())]
    kv.append(("rejected_total", str(sum(core.rejected.values()))))
    kv += [(f"rejected.{k}", str(v)) for k, v in sorted(core.rejected.items())]
    kv.append(("pairing_resets", str(sum(core.pairing_resets.values()))))
    kv += [(f"pairing_resets.{k}", str(v)) for k, v in sorted(core.pairing_resets.items()) if v]
    if pr.stamp_offset is not None:
        kv.append(("stamp_offset_s", f"{pr.stamp_offset:.4f}"))
    seg = core.segmenter
    kv += [("incompatible_qos_events", str(sum(core.incompatible_qos.values()))),
           ("clock_stalled_s", f"{stalled:.1f}"), ("device", str(seg.device)),
           ("precision", core.params["precision"]), ("backend", backend_name(seg)),
           ("num_threads", str(core.threads)), ("num_classes", str(seg.num_classes))]
    return kv
