"""``segment_node``: RGB-D semantic segmentation that keeps working when a camera stream dies.

Run it::

    ros2 run m3l_ros segment_node --ros-args -r rgb/image:=/camera/camera/color/image_raw \\
        -r depth/image:=/camera/camera/aligned_depth_to_color/image_raw
    python -m m3l_ros.segment_node --ros-args --params-file config/segment.yaml -p checkpoint:=model.safetensors

Topics (inputs are relative and remappable, outputs are private):

* in  ``rgb/image`` (rgb8, bgr8, rgba8, bgra8, mono8), ``depth/image`` (16UC1 mm, 32FC1 m),
  ``rgb/camera_info`` (optional)
* out ``~/labels`` (mono8 ids, 16UC1 past 255 classes), ``~/colored`` (rgb8, only with
  subscribers), ``~/camera_info``, ``~/mode`` (transient local), ``~/class_names``
  (transient local JSON), ``/diagnostics``

The node is thin plumbing. Pairing (:mod:`m3l_ros.sync`), the watchdog
(:mod:`m3l_ros.watchdog`), image conversion (:mod:`m3l_ros.image_codec`) and the
meters (:mod:`m3l_ros.stats`) are ROS-free and unit-tested. Subscription callbacks
only decode and hand frames over; one worker thread runs inference on the newest
ready job, so the node never falls behind the cameras.
"""
from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
import rclpy.logging
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.clock import Clock, ClockType
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks, qos_policy_name_from_kind
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String

from m3l_ros.image_codec import (
    DEPTH_ENCODINGS,
    RGB_ENCODINGS,
    ImageCodecError,
    colorize,
    decode_message,
    depth_from_image,
    encode_image,
    encode_labels,
    label_encoding,
    resize_nearest,
    to_rgb8,
)
from m3l_ros.stats import LatencyStats, RateMeter, Throttle
from m3l_ros.sync import MODALITIES, ApproxTimePairer, Frame, Job
from m3l_ros.watchdog import ModeWatchdog

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "models" / "demo.safetensors"
DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
PRECISIONS = ("fp32", "fp16", "bf16")
RELIABILITIES = ("best_effort", "reliable")
LOG_THROTTLE_S = 5.0  # one log line per (topic, reason) per this many seconds (wall clock)


class StartupError(RuntimeError):
    """A configuration problem that stops the node before it runs (clean message, exit code 1)."""


def resolve_checkpoint(value: str) -> Path:
    """The ``checkpoint`` parameter -> an existing file. Empty means the bundled demo model."""
    if value.strip():
        path = Path(value).expanduser()
        what = f"parameter 'checkpoint' is {value!r}"
    else:
        path = DEFAULT_CHECKPOINT
        what = "parameter 'checkpoint' is empty, which selects the bundled demo model"
    if not path.is_file():
        raise StartupError(f"checkpoint file not found: {path} ({what}); "
                           "pass -p checkpoint:=/path/to/model.safetensors")
    return path


# -- parameters ---------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    description: str
    read_only: bool = False
    range: tuple[float, float] | None = None  # inclusive bounds, enforced by rclpy
    choices: str = ""  # human-readable constraint, checked in validate_params()


PARAMS = (
    Param("checkpoint", "", "Path to a .safetensors checkpoint. Empty = the bundled demo model "
          "(m3l_ros/models/demo.safetensors).", read_only=True),
    Param("device", "auto", "Inference device: auto (CUDA if available), cpu, cuda or cuda:N.",
          read_only=True, choices="auto, cpu, cuda, cuda:N"),
    Param("precision", "fp32", "Inference precision: fp32, fp16 (CUDA only) or bf16.",
          read_only=True, choices="fp32, fp16, bf16"),
    Param("num_threads", 0, "CPU threads for torch; 0 keeps torch's default.", read_only=True, range=(0, 256)),
    Param("rgb_timeout", 0.5, "Seconds (node clock) without a usable RGB frame before RGB counts as lost.",
          range=(0.01, 60.0)),
    Param("depth_timeout", 0.5, "Seconds (node clock) without a usable depth frame before depth counts as lost.",
          range=(0.01, 60.0)),
    Param("sync_slop", 0.02, "Max difference in seconds between RGB and depth header stamps to pair them.",
          range=(0.0, 10.0)),
    Param("min_valid_depth_fraction", 0.05, "A depth image with a smaller fraction of valid pixels "
          "(not 0/NaN/Inf) counts as missing.", range=(0.0, 1.0)),
    Param("qos_reliability", "best_effort", "Reliability of the input subscriptions (sensor-data QoS "
          "otherwise). best_effort accepts both best-effort and reliable publishers.",
          read_only=True, choices="best_effort, reliable"),
    Param("qos_depth", 1, "Input queue depth; 1 keeps only the newest frame.", read_only=True, range=(1, 100)),
    Param("publish_colored", True, "Publish ~/colored (computed only while it has subscribers)."),
    Param("diagnostics_period", 1.0, "Seconds between /diagnostics messages and periodic ~/mode messages "
          "(wall clock, so they keep coming while a bag is paused).", read_only=True, range=(0.05, 60.0)),
)
LIVE_PARAMS = {"rgb_timeout", "depth_timeout", "sync_slop", "min_valid_depth_fraction", "publish_colored"}


def _descriptor(p: Param) -> ParameterDescriptor:
    d = ParameterDescriptor(description=p.description, read_only=p.read_only)
    if p.choices:
        d.additional_constraints = f"one of: {p.choices}"
    if p.range is not None:
        if isinstance(p.default, int) and not isinstance(p.default, bool):
            d.integer_range = [IntegerRange(from_value=int(p.range[0]), to_value=int(p.range[1]), step=1)]
        else:
            d.floating_point_range = [FloatingPointRange(from_value=float(p.range[0]), to_value=float(p.range[1]),
                                                         step=0.0)]
    return d


def validate_params(values: dict[str, Any]) -> None:
    """Checks rclpy cannot express as a range; raises StartupError naming the parameter."""
    if not DEVICE_RE.match(str(values["device"])):
        raise StartupError(f"parameter 'device' is {values['device']!r}; expected auto, cpu, cuda or cuda:N")
    if values["precision"] not in PRECISIONS:
        raise StartupError(f"parameter 'precision' is {values['precision']!r}; expected one of {', '.join(PRECISIONS)}")
    if values["qos_reliability"] not in RELIABILITIES:
        raise StartupError(f"parameter 'qos_reliability' is {values['qos_reliability']!r}; "
                           f"expected one of {', '.join(RELIABILITIES)}")


def input_qos(reliability: str, depth: int) -> QoSProfile:
    """Sensor-data QoS (REP 2003) with configurable reliability and queue depth."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=depth, durability=DurabilityPolicy.VOLATILE,
        reliability=ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT)


# Outputs are RELIABLE: a reliable publisher serves both reliable and best-effort subscribers.
OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.VOLATILE)
# Late joiners (RViz, a logger started later) get the current mode and the class list at once.
LATCHED_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)


def _stamp_seconds(header) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


def class_names_json(class_names: list[str], palette: np.ndarray) -> str:
    """Payload of ``~/class_names``: index i of ``class_names`` is label id i."""
    return json.dumps({
        "class_names": list(class_names),
        "palette": np.asarray(palette, dtype=int).tolist(),
        "label_encoding": label_encoding(len(class_names)),
    })


class SegmentNode(Node):
    """Subscribes to RGB and depth, pairs them, watches both streams, publishes labels."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("segment_node", **kwargs)
        try:
            self._setup()
        except BaseException:
            self.destroy_node()
            raise

    # -- setup ------------------------------------------------------------------------
    def _setup(self) -> None:
        self.params = self._declare_parameters()
        self.segmenter = self._load_segmenter()
        self._init_state()
        self._create_interfaces()
        self.worker = threading.Thread(target=self._worker_loop, name="m3l_inference", daemon=True)
        self.worker.start()
        seg, values = self.segmenter, self.params
        topics = ", ".join(s.topic_name for s in self.subs.values())
        self.get_logger().info(
            f"ready: {self.checkpoint_path.name} on {seg.device} ({values['precision']}), {seg.num_classes} classes, "
            f"inputs {topics} ({values['qos_reliability']}), modalities {'+'.join(seg.modalities)}")

    def _declare_parameters(self) -> dict[str, Any]:
        values = {}
        for p in PARAMS:
            try:
                values[p.name] = self.declare_parameter(p.name, p.default, _descriptor(p)).value
            except (InvalidParameterTypeException, InvalidParameterValueException) as e:
                raise StartupError(f"parameter '{p.name}': {e}") from e
        validate_params(values)
        return values

    def _load_segmenter(self):
        values = self.params
        ckpt = self.checkpoint_path = resolve_checkpoint(values["checkpoint"])

        from m3l_core.checkpoint import CheckpointError  # torch is imported only once the file exists
        from m3l_core.inference import Segmenter

        if values["num_threads"] > 0:
            import torch
            torch.set_num_threads(values["num_threads"])
        try:
            seg = Segmenter.from_checkpoint(ckpt, device=values["device"], precision=values["precision"])
        except (CheckpointError, ValueError, RuntimeError) as e:
            raise StartupError(f"cannot start the model from {ckpt} (parameters checkpoint={values['checkpoint']!r}, "
                               f"device={values['device']!r}, precision={values['precision']!r}): {e}") from e
        self.declare_parameter(
            "class_names", list(seg.class_names),
            ParameterDescriptor(description="Class names of the loaded checkpoint; label id i is class_names[i]. "
                                "Set from the checkpoint (overrides are ignored).", read_only=True),
            ignore_override=True)
        return seg

    def _init_state(self) -> None:
        """Shared state; touched by the callbacks and the worker under self._lock."""
        values = self.params
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.watchdog = ModeWatchdog(rgb_timeout=values["rgb_timeout"], depth_timeout=values["depth_timeout"])
        self.pairer = ApproxTimePairer(slop=values["sync_slop"], rgb_timeout=values["rgb_timeout"],
                                       depth_timeout=values["depth_timeout"])
        self.input_rate = {m: RateMeter() for m in MODALITIES}
        self.output_rate = RateMeter()
        self.latency = LatencyStats()
        self.last_stamp: dict[str, float | None] = {m: None for m in MODALITIES}
        self.rejected: Counter[str] = Counter()  # "<modality>.<reason>"
        self.pairing_resets: Counter[str] = Counter()
        self.incompatible_qos: Counter[str] = Counter()
        self.processed = 0
        self.published_by_mode: Counter[str] = Counter()
        self.camera_info: CameraInfo | None = None
        self._throttle = Throttle(LOG_THROTTLE_S)
        self._warned: set[str] = set()

    def _create_interfaces(self) -> None:
        seg, values = self.segmenter, self.params
        pub_events = PublisherEventCallbacks(incompatible_qos=self._on_pub_incompatible_qos)
        self.pub_labels = self.create_publisher(Image, "~/labels", OUTPUT_QOS, event_callbacks=pub_events)
        self.pub_colored = self.create_publisher(Image, "~/colored", OUTPUT_QOS, event_callbacks=pub_events)
        self.pub_info = self.create_publisher(CameraInfo, "~/camera_info", OUTPUT_QOS, event_callbacks=pub_events)
        self.pub_mode = self.create_publisher(String, "~/mode", LATCHED_QOS, event_callbacks=pub_events)
        self.pub_classes = self.create_publisher(String, "~/class_names", LATCHED_QOS, event_callbacks=pub_events)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        # Subscriptions: one per modality the model uses, plus the optional camera info.
        qos = input_qos(values["qos_reliability"], values["qos_depth"])
        self.subs: dict[str, Any] = {}
        for modality, topic in (("rgb", "rgb/image"), ("depth", "depth/image")):
            if modality not in seg.modalities:
                self.get_logger().warning(f"the checkpoint has no {modality} branch; not subscribing to {topic}")
                continue
            self.subs[modality] = self.create_subscription(
                Image, topic, lambda msg, m=modality: self._on_image(m, msg), qos,
                event_callbacks=SubscriptionEventCallbacks(
                    incompatible_qos=lambda ev, t=topic: self._on_sub_incompatible_qos(t, ev)))
        self.sub_info = self.create_subscription(
            CameraInfo, "rgb/camera_info", self._on_camera_info, qos,
            event_callbacks=SubscriptionEventCallbacks(
                incompatible_qos=lambda ev: self._on_sub_incompatible_qos("rgb/camera_info", ev)))

        # Ranges and read_only are enforced by rclpy from the descriptors; apply what was accepted.
        self.add_post_set_parameters_callback(self._apply_live_params)

        self.pub_classes.publish(String(data=class_names_json(seg.class_names, seg.palette)))
        self._publish_mode(self.watchdog.mode)
        # Wall-clock (steady) timer: diagnostics keep flowing even if /clock stops.
        self.diag_timer = self.create_timer(values["diagnostics_period"], self._on_diagnostics_timer,
                                            clock=Clock(clock_type=ClockType.STEADY_TIME))

    def close(self) -> None:
        """Stop the worker thread and destroy the node."""
        self._stop.set()
        self._wake.set()
        if self.worker.is_alive():
            self.worker.join(timeout=10.0)
        self.destroy_node()

    # -- helpers -------------------------------------------------------------------------
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _log_throttled(self, level: str, key: object, message: str) -> None:
        emit, suppressed = self._throttle.allow(key, time.monotonic())
        if emit:
            if suppressed:
                message += f" ({suppressed} similar messages suppressed)"
            # One call site per severity: rclpy refuses a severity change at the same call site.
            if level == "error":
                self.get_logger().error(message)
            else:
                self.get_logger().warning(message)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.get_logger().warning(message)

    def _reject(self, modality: str, topic: str, reason: str, detail: str) -> None:
        with self._lock:
            self.rejected[f"{modality}.{reason}"] += 1
        self._log_throttled("error", (topic, reason), f"dropped a message on {topic}: {detail}")

    # -- QoS events ----------------------------------------------------------------------
    def _on_sub_incompatible_qos(self, topic: str, event) -> None:
        policy = qos_policy_name_from_kind(event.last_policy_kind)
        with self._lock:
            self.incompatible_qos[topic] += 1
        hint = ""
        if policy == "RELIABILITY":
            hint = " A best-effort publisher cannot feed a reliable subscription: set qos_reliability:=best_effort."
        self.get_logger().error(
            f"incompatible QoS on {self.resolve_topic_name(topic)}: a publisher offers QoS that this subscription "
            f"cannot accept (policy {policy}); no messages will arrive from it.{hint}")

    def _on_pub_incompatible_qos(self, event) -> None:
        policy = qos_policy_name_from_kind(event.last_policy_kind)
        with self._lock:
            self.incompatible_qos["outputs"] += 1
        self.get_logger().warning(
            f"a subscriber to one of this node's outputs requests QoS it does not offer (policy {policy}); "
            "outputs are RELIABLE + VOLATILE, ~/mode and ~/class_names are RELIABLE + TRANSIENT_LOCAL")

    # -- parameters -----------------------------------------------------------------------
    def _apply_live_params(self, params) -> None:
        with self._lock:
            for p in params:
                if p.name not in LIVE_PARAMS:
                    continue
                self.params[p.name] = p.value
                if p.name == "rgb_timeout":
                    self.watchdog.set_timeouts(rgb_timeout=p.value)
                    self.pairer.set_params(rgb_timeout=p.value)
                elif p.name == "depth_timeout":
                    self.watchdog.set_timeouts(depth_timeout=p.value)
                    self.pairer.set_params(depth_timeout=p.value)
                elif p.name == "sync_slop":
                    self.pairer.set_params(slop=p.value)
                self.get_logger().info(f"parameter {p.name} set to {p.value}")

    # -- subscription callbacks -------------------------------------------------------------
    def _on_image(self, modality: str, msg: Image) -> None:
        try:
            self._handle_image(modality, msg)
        except Exception as e:  # an exception here would stop the executor: count it and keep running
            with self._lock:
                self.rejected[f"{modality}.callback_error"] += 1
            self._log_throttled("error", (modality, "callback_error"),
                                f"error handling a {modality} message ({type(e).__name__}: {e}); dropped")

    def _handle_image(self, modality: str, msg: Image) -> None:
        now = self._now()
        topic = self.subs[modality].topic_name
        try:
            if modality == "rgb":
                image = to_rgb8(decode_message(msg, allowed=RGB_ENCODINGS), msg.encoding)
            else:
                image = depth_from_image(decode_message(msg, allowed=DEPTH_ENCODINGS), msg.encoding)
        except ImageCodecError as e:
            self._reject(modality, topic, e.reason, f"field '{e.field}': {e}")
            return
        if modality == "depth":
            valid = float(np.isfinite(image).mean())
            if valid < self.params["min_valid_depth_fraction"]:
                # Not malformed, just useless: it does not feed the watchdog, so depth counts as missing.
                with self._lock:
                    self.rejected["depth.low_valid_depth"] += 1
                self._log_throttled("warning", (topic, "low_valid_depth"),
                                    f"depth on {topic} has {valid:.1%} valid pixels, below "
                                    f"min_valid_depth_fraction={self.params['min_valid_depth_fraction']}; "
                                    "treating depth as missing")
                return
        stamp = _stamp_seconds(msg.header)
        with self._lock:
            self.input_rate[modality].tick(now)
            self.last_stamp[modality] = stamp
            self.watchdog.feed(modality, now)
            mode, changed = self.watchdog.update(now)
            reset = self.pairer.add(modality, Frame(stamp=stamp, received=now, data=(msg.header, image)), mode=mode)
            if reset:
                self.pairing_resets[modality] += 1
            if changed:
                self._on_mode_change(mode, now)
        if reset:
            self._log_throttled("warning", (topic, "stamp_backwards"),
                                f"field 'header.stamp' on {topic} went backwards to {stamp:.3f} s "
                                "(bag loop?); pairing state reset")
        self._wake.set()

    def _on_camera_info(self, msg: CameraInfo) -> None:
        with self._lock:
            self.camera_info = msg

    # -- mode --------------------------------------------------------------------------------
    def _publish_mode(self, mode: str) -> None:
        try:
            self.pub_mode.publish(String(data=mode))
        except Exception:  # context already shut down
            pass

    def _on_mode_change(self, mode: str, now: float) -> None:
        """Log and publish a mode change. Called with the lock held, so ~/mode messages keep their order."""
        ages = {m: self.watchdog.age(m, now) for m in MODALITIES}
        why = {
            "rgbd": "both streams live",
            "rgb_only": "depth missing, using the learned depth token",
            "depth_only": "RGB missing, using the learned RGB token",
            "no_input": "no usable input, publishing nothing",
        }[mode]
        age_txt = ", ".join(f"{m} age {'never' if a is None else f'{a:.2f} s'}" for m, a in ages.items())
        self.get_logger().info(f"mode -> {mode}: {why} ({age_txt})")
        self._publish_mode(mode)

    # -- worker ------------------------------------------------------------------------------
    def _tick(self) -> float:
        """How often the worker re-checks the watchdog when no frame arrives."""
        return min(0.05, max(0.005, min(self.watchdog.rgb_timeout, self.watchdog.depth_timeout) / 10))

    def _worker_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._tick())
            self._wake.clear()
            if self._stop.is_set():
                break
            now = self._now()
            with self._lock:
                mode, changed = self.watchdog.update(now)
                job = self.pairer.take(now=now, mode=mode)
                if changed:
                    self._on_mode_change(mode, now)
            if job is None:
                continue
            try:
                self._process(job)
            except Exception as e:  # keep running: a bad frame or a CUDA hiccup must not kill the node
                if self._stop.is_set() or not self.context.ok():
                    break
                with self._lock:
                    self.rejected["inference.error"] += 1
                self._log_throttled("error", "inference", f"inference failed ({type(e).__name__}: {e}); frame dropped")
            self._wake.set()  # a newer job may already be waiting

    def _process(self, job: Job) -> None:
        header, _ = job.primary.data
        rgb = job.rgb.data[1] if job.rgb is not None else None
        depth = job.depth.data[1] if job.depth is not None else None
        if rgb is not None and depth is not None and depth.shape != rgb.shape[:2]:
            # Policy: resize depth to the RGB size with nearest neighbour, warn once, count it.
            with self._lock:
                self.rejected["depth.size_mismatch"] += 1
            self._warn_once("size_mismatch", (
                f"depth on {self.subs['depth'].topic_name} is {depth.shape[1]}x{depth.shape[0]} but RGB on "
                f"{self.subs['rgb'].topic_name} is {rgb.shape[1]}x{rgb.shape[0]}; resizing depth to the RGB size "
                "(nearest). Use a depth image registered to the colour camera (e.g. aligned_depth_to_color)."))
            depth = resize_nearest(depth, rgb.shape[0], rgb.shape[1])
        t0 = time.perf_counter()
        labels = self.segmenter.predict(rgb=rgb, depth=depth)
        latency = time.perf_counter() - t0
        if self._stop.is_set():
            return
        seg = self.segmenter
        enc, step, data = encode_labels(labels, seg.num_classes)
        h, w = labels.shape
        self.pub_labels.publish(Image(header=header, height=h, width=w, encoding=enc, is_bigendian=0,
                                      step=step, data=data))
        if self.params["publish_colored"] and self.pub_colored.get_subscription_count() > 0:
            step_c, data_c = encode_image(colorize(labels, seg.palette), "rgb8")
            self.pub_colored.publish(Image(header=header, height=h, width=w, encoding="rgb8", is_bigendian=0,
                                           step=step_c, data=data_c))
        with self._lock:
            info = self.camera_info
        if info is not None:
            if (info.width, info.height) in ((w, h), (0, 0)):
                info.header = header
                self.pub_info.publish(info)
            else:
                self._warn_once("info_size", f"camera_info is {info.width}x{info.height} but labels are {w}x{h}; "
                                "not republishing ~/camera_info")
        now = self._now()
        with self._lock:
            self.latency.add(latency)
            self.output_rate.tick(now)
            self.processed += 1
            self.published_by_mode[job.mode] += 1

    # -- diagnostics ---------------------------------------------------------------------------
    def _on_diagnostics_timer(self) -> None:
        now = self._now()
        with self._lock:
            self.pub_diag.publish(self._diagnostics(now))
            self._publish_mode(self.watchdog.mode)

    def _diagnostics(self, now: float) -> DiagnosticArray:
        """Build the DiagnosticArray (caller holds the lock)."""
        def fmt(v: float | None, scale: float = 1.0) -> str:
            return "nan" if v is None else f"{v * scale:.3f}"

        mode = self.watchdog.mode
        kv: list[tuple[str, str]] = [("mode", mode), ("mode_transitions", str(self.watchdog.transitions))]
        for m in MODALITIES:
            kv.append((f"{m}_rate_hz", f"{self.input_rate[m].rate(now):.2f}"))
            kv.append((f"{m}_age_s", fmt(self.watchdog.age(m, now))))
            stamp = self.last_stamp[m]
            kv.append((f"{m}_stamp_delay_s", fmt(None if stamp is None else now - stamp)))
        kv += [
            ("output_rate_hz", f"{self.output_rate.rate(now):.2f}"),
            ("latency_p50_ms", fmt(self.latency.percentile(50), 1e3)),
            ("latency_p95_ms", fmt(self.latency.percentile(95), 1e3)),
            ("frames_processed", str(self.processed)),
            ("frames_dropped", str(self.pairer.dropped)),
        ]
        kv += [(f"dropped.{k}", str(v)) for k, v in sorted(self.pairer.drops.items())]
        kv += [(f"processed.{k}", str(v)) for k, v in sorted(self.published_by_mode.items())]
        kv.append(("rejected_total", str(sum(self.rejected.values()))))
        kv += [(f"rejected.{k}", str(v)) for k, v in sorted(self.rejected.items())]
        kv.append(("pairing_resets", str(sum(self.pairing_resets.values()))))
        kv += [(f"pairing_resets.{k}", str(v)) for k, v in sorted(self.pairing_resets.items())]
        if self.pairer.last_unpaired_offset is not None:
            kv.append(("last_unpaired_offset_s", f"{self.pairer.last_unpaired_offset:.4f}"))
        kv.append(("incompatible_qos_events", str(sum(self.incompatible_qos.values()))))
        kv += [("device", str(self.segmenter.device)), ("precision", self.params["precision"]),
               ("num_classes", str(self.segmenter.num_classes))]
        level, message = {
            "rgbd": (DiagnosticStatus.OK, "RGB-D"),
            "rgb_only": (DiagnosticStatus.WARN, "depth missing: RGB only (learned depth token)"),
            "depth_only": (DiagnosticStatus.WARN, "RGB missing: depth only (learned RGB token)"),
            "no_input": (DiagnosticStatus.ERROR, "no usable input: nothing published"),
        }[mode]
        status = DiagnosticStatus(level=level, name=f"{self.get_fully_qualified_name()}: segmentation",
                                  message=message, hardware_id=str(self.segmenter.device),
                                  values=[KeyValue(key=k, value=v) for k, v in kv])
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        return arr


def main(args: list[str] | None = None) -> int:
    """Entry point for ``ros2 run m3l_ros segment_node`` and ``python -m m3l_ros.segment_node``."""
    rclpy.init(args=args)
    node: SegmentNode | None = None
    try:
        node = SegmentNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # SIGINT / SIGTERM: shut down cleanly below
    except StartupError as e:
        rclpy.logging.get_logger("segment_node").fatal(str(e))
        return 1
    finally:
        if node is not None:
            node.close()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
