"""Evaluate the segmentation node live while a bag replays: accuracy per mode, switch and end-to-end latency.

    python -m m3l_ros.replay_eval --out DIR [--labels-topic /segment_node/labels]
        [--mode-topic /segment_node/mode] [--gt-topic /camera/camera/ground_truth/labels]
        [--events-topic /m3l_replay/events] [--class-names-topic /segment_node/class_names]
        [--rgb-topic T] [--depth-topic T] [--no-input-timing]
        [--classes classes.yaml | --num-classes N] [--duration 120] [--grace 1.0]

Start it (and the node) before ``python -m m3l_ros.replay BAG --drop ...``. It
subscribes to the node's label and mode outputs, to the bag's ground truth, RGB
and depth, and to the replay's events, and stops when the replay reports
``finished`` (plus ``--grace`` seconds for frames still in flight) or after ``--duration``.

How things are measured (``m3l_ros.replay_analysis`` has the details): every
time is the arrival of a message in this process on one clock (the middleware's
receive timestamp, this host's system clock), so no clock of another process
is subtracted.

* **Accuracy**: a label image is scored against the ground truth with the same
  header stamp (the closest in arrival when a looped bag repeats stamps).
* **End-to-end latency** = label arrival minus the arrival of the latest input
  (ground truth, RGB or depth) with the same stamp. Labels that arrive before
  any input of their frame are excluded and counted (``negative_excluded``).
  Stamps repeat when a bag is looped without ``--restamp``; record longer bags
  with ``record --repeat`` or replay with ``--restamp`` for unique stamps.
* **Mode of a frame** = the last ``~/mode`` received up to ``--mode-slack`` after its labels.
* **Switch latency**: from a ``drop_start``/``drop_end`` event to the first
  ``~/mode`` with the presence the withheld topics imply (``--rgb-topic``,
  ``--depth-topic``), searched until the next event. Windows cut by the bag's end
  are not measured.
* Without ground truth, per-mode frame counts, output rates, latency and switch
  latencies are still reported; mIoU is ``n/a``.
* **Class names** come from ``--classes``, else from the node's latched
  ``~/class_names`` (JSON), else ``class_<i>``.

Writes ``replay_report.json``, ``replay_report.md`` and ``replay_timeline.png``
to ``--out`` and prints a summary. Exit codes: 0 done, 1 the report could not be
written, 2 bad arguments, 130 interrupted before the replay finished.
"""
from __future__ import annotations

import argparse
import json
import logging
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from m3l_core.cli.common import run_guarded
from m3l_ros.replay_analysis import (  # noqa: F401 - the analysis API, re-exported for scripts
    DEFAULT_DEPTH_TOPIC, DEFAULT_RGB_TOPIC, FrameMatcher, FrameRecord, Match, build_report, frame_confusion,
    frame_miou, mode_at, switch_latencies)
from m3l_ros.replay_format import format_summary, write_report  # noqa: F401 - re-exported

log = logging.getLogger("m3l_ros.replay_eval")

DEFAULT_LABELS_TOPIC = "/segment_node/labels"
DEFAULT_MODE_TOPIC = "/segment_node/mode"
DEFAULT_CLASS_NAMES_TOPIC = "/segment_node/class_names"
DEFAULT_GT_TOPIC = "/camera/camera/ground_truth/labels"
DEFAULT_EVENTS_TOPIC = "/m3l_replay/events"


@dataclass
class EvalConfig:
    labels_topic: str = DEFAULT_LABELS_TOPIC
    mode_topic: str = DEFAULT_MODE_TOPIC
    gt_topic: str = DEFAULT_GT_TOPIC
    events_topic: str = DEFAULT_EVENTS_TOPIC
    class_names_topic: str = DEFAULT_CLASS_NAMES_TOPIC  # the node's latched JSON {"class_names": [...]}
    rgb_topics: set[str] = field(default_factory=lambda: {DEFAULT_RGB_TOPIC})
    depth_topics: set[str] = field(default_factory=lambda: {DEFAULT_DEPTH_TOPIC})
    time_inputs: bool = True  # subscribe (raw, no decoding) to RGB and depth for input arrival times
    class_names: list[str] | None = None  # None: taken from class_names_topic when the node publishes it
    num_classes: int | None = None  # None: grows with the largest class id seen
    ignore_index: int = 255
    qos: str = "reliable"  # the node's outputs are reliable; best-effort would lose frames on loopback
    mode_slack: float = 0.02
    max_age_s: float = 10.0
    receive_stamps: bool = True  # use the middleware's receive time (else the injected clock at the callback)


class ReplayEvaluator:
    """Subscribes through an rclpy node and accumulates arrivals and scored frames.

    Every arrival time is the middleware's receive timestamp (system clock) when available,
    else ``clock()`` at the callback; tests inject ``clock`` with ``receive_stamps=False``.
    Confusion matrices are computed on a worker thread so a slow frame never delays the
    callbacks that take the next arrival times.
    """

    def __init__(self, node: Any, config: EvalConfig, *, clock=time.time) -> None:
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        self.node = node
        self.config = config
        self.clock = clock
        self.matcher = FrameMatcher(max_age_s=config.max_age_s)
        self.records: list[FrameRecord] = []
        self.outputs: list[tuple[int, float]] = []
        self.inputs: dict[int, list[float]] = {}
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
        reliability = ReliabilityPolicy.BEST_EFFORT if config.qos == "best_effort" else ReliabilityPolicy.RELIABLE
        qos = QoSProfile(depth=50, reliability=reliability)  # a deep queue: labels and ground truth are counted
        self.class_names = list(config.class_names) if config.class_names else None
        node.create_subscription(Image, config.labels_topic, self._on_labels, qos)
        node.create_subscription(Image, config.gt_topic, self._on_gt, qos)
        if config.time_inputs:  # arrival times only: raw bytes, never decoded; best effort matches any publisher
            for topic in sorted(set(config.rgb_topics) | set(config.depth_topics)):
                node.create_subscription(Image, topic, self._on_input, qos_profile_sensor_data, raw=True)
        # ~/mode, ~/class_names and the replay's events are latched: we get the current value on joining.
        latched = QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        node.create_subscription(String, config.mode_topic, self._on_mode, latched)
        node.create_subscription(String, config.events_topic, self._on_event, latched)
        if self.class_names is None and config.class_names_topic:
            node.create_subscription(String, config.class_names_topic, self._on_class_names, latched)

    # Callbacks take ``(msg, info)`` with no default for ``info``: that is how rclpy knows to pass
    # the message info (with the receive timestamp).
    def _arrival(self, info) -> float:
        if self.config.receive_stamps and isinstance(info, dict) and info.get("received_timestamp"):
            return info["received_timestamp"] * 1e-9
        return self.clock()

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

    def _on_input(self, data: bytes, info) -> None:
        from m3l_ros.bag_io import cdr_header_stamp

        t = self._arrival(info)
        try:
            stamp = cdr_header_stamp(data)
        except ValueError:
            return
        with self.lock:
            self.inputs.setdefault(stamp, []).append(t)

    def _on_gt(self, msg, info) -> None:
        t = self._arrival(info)
        label = self._decode(msg, self.config.gt_topic)
        stamp = self._stamp(msg)
        with self.lock:
            self.frames_gt += 1
            self.inputs.setdefault(stamp, []).append(t)
            if label is not None:
                self._enqueue(self.matcher.add_gt(stamp, t, label))

    def _on_labels(self, msg, info) -> None:
        t = self._arrival(info)
        label = self._decode(msg, self.config.labels_topic)
        stamp = self._stamp(msg)
        with self.lock:
            self.frames_out += 1
            self.outputs.append((stamp, t))
            if label is not None:
                self._enqueue(self.matcher.add_pred(stamp, t, label))

    def _on_mode(self, msg, info) -> None:
        t = self._arrival(info)
        with self.lock:
            self.mode_obs.append((t, str(msg.data)))

    def _on_class_names(self, msg) -> None:
        try:
            names = json.loads(msg.data)["class_names"]
        except (json.JSONDecodeError, KeyError, TypeError):
            log.warning("%s: expected JSON with a 'class_names' list, got %r",
                        self.config.class_names_topic, msg.data[:80])
            return
        with self.lock:
            self.class_names = [str(n) for n in names]

    def _on_event(self, msg, info) -> None:
        t = self._arrival(info)
        try:
            event = json.loads(msg.data)
        except json.JSONDecodeError:
            log.warning("%s: not JSON: %r", self.config.events_topic, msg.data[:80])
            return
        if not isinstance(event, dict):
            log.warning("%s: expected a JSON object, got %r", self.config.events_topic, msg.data[:80])
            return
        event["sent_wall_time"] = event.get("wall_time")  # the replay's clock: kept for reference only
        event["wall_time"] = t  # the one clock every latency uses
        with self.lock:
            self.events.append(event)
            if event.get("event") == "finished":
                self.finished_at = time.monotonic()
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
                outputs=list(self.outputs), inputs={k: list(v) for k, v in self.inputs.items()},
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
    p.add_argument("--no-input-timing", action="store_true",
                   help="do not subscribe to the RGB/depth topics; latency then uses ground-truth arrivals only")
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
    try:
        ns = parser.parse_args(remove_ros_args(argv)[1:])
        names = None
        if ns.classes is not None:
            from m3l_core.data.folder import load_classes

            try:
                names = list(load_classes(ns.classes).names)
            except (OSError, ValueError) as err:
                parser.error(f"--classes {ns.classes}: {err}")
        if ns.num_classes is not None and ns.num_classes <= 0:
            parser.error(f"--num-classes must be > 0, got {ns.num_classes}")
    except SystemExit as e:  # --help (0) or a usage error (2)
        return int(e.code or 0)
    logging.basicConfig(level=logging.INFO, format="[replay_eval] %(message)s")
    config = EvalConfig(
        labels_topic=ns.labels_topic, mode_topic=ns.mode_topic, gt_topic=ns.gt_topic, events_topic=ns.events_topic,
        class_names_topic=ns.class_names_topic,
        rgb_topics=set(ns.rgb_topic or [DEFAULT_RGB_TOPIC]), depth_topics=set(ns.depth_topic or [DEFAULT_DEPTH_TOPIC]),
        time_inputs=not ns.no_input_timing, class_names=names,
        num_classes=ns.num_classes if ns.num_classes is not None else (len(names) if names else None),
        qos=ns.qos, mode_slack=ns.mode_slack)

    with ros_session("m3l_replay_eval", argv) as (node, stop):
        ev = ReplayEvaluator(node, config)
        t_end = time.monotonic() + ns.duration
        while not stop.is_set() and time.monotonic() < t_end:
            rclpy.spin_once(node, timeout_sec=0.05)
            if ev.finished_at is not None and time.monotonic() - ev.finished_at >= ns.grace:
                break
        if ev.finished_at is None:
            log.warning("the replay did not report 'finished' (stopped after %s)",
                        "a signal" if stop.is_set() else f"--duration {ns.duration} s")
        report = ev.report()

    def body() -> int:
        try:
            paths = write_report(report, ev.events, ns.out)
        except OSError as err:
            raise OSError(f"cannot write the report to {ns.out}: {err}") from err
        print(format_summary(report), flush=True)
        print(f"\nwrote {', '.join(str(p) for p in paths.values())}", flush=True)
        return 130 if stop.is_set() and ev.finished_at is None else 0

    return run_guarded(body, failure=(OSError,))


if __name__ == "__main__":
    sys.exit(main())
