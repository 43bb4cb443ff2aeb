"""The logic of segment_node, shared by the plain node and the lifecycle node (thin shells around it).

Stages, in lifecycle terms: :meth:`SegmentCore.configure` loads the model and creates the
publishers; :meth:`activate` subscribes, starts the timers and the inference worker;
:meth:`deactivate` stops them (nothing is published); :meth:`cleanup` destroys the publishers
and unloads the model. The plain node runs configure + activate at start.

Subscription callbacks only decode and hand frames over (:mod:`m3l_ros.node_inputs`); pairing
(:mod:`m3l_ros.sync`) and the mode (:mod:`m3l_ros.watchdog`) are ROS-free; one worker thread runs
inference on the newest ready job, so the node never falls behind the cameras.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.clock import Clock, ClockType
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks, qos_policy_name_from_kind
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String

from m3l_core.preprocess import depth_units_warning
from m3l_core.vocab import DEPTH_ONLY, MODALITIES, NO_INPUT, RGB_ONLY, RGBD, UNSYNCED
from m3l_ros import node_diagnostics as diag
from m3l_ros.image_codec import ImageCodecError, colorize, encode_image, encode_labels
from m3l_ros.node_inputs import COMPRESSED_SUFFIX, decode_depth, decode_rgb, match_depth_size
from m3l_ros.node_model import backend_name, class_names_json, load_segmenter
from m3l_ros.node_params import LIVE_PARAMS
from m3l_ros.node_qos import choose_reliability, input_qos, latched_qos, output_qos, publisher_reliabilities
from m3l_ros.stats import LatencyStats, RateMeter, Throttle
from m3l_ros.sync import ApproxTimePairer, Frame, Job
from m3l_ros.watchdog import ClockMonitor, ModeWatchdog

LOG_THROTTLE_S = 5.0  # keyed logs: one line per (topic, reason) per this many wall seconds
QOS_CHECK_S = 0.5  # how often qos_reliability:=auto re-checks the publishers (wall clock)
UNITS_STRIDE = 8  # the depth unit check looks at every 8th pixel per axis (a full-size median costs ms)
WHY = {RGBD: "both streams live", RGB_ONLY: "depth missing, using the learned depth token",
       DEPTH_ONLY: "RGB missing, using the learned RGB token", NO_INPUT: "no usable input, publishing nothing",
       UNSYNCED: "both streams live but their stamps never pair; RGB with the learned depth token"}


def sync_timeout(params: dict[str, Any]) -> float:
    """Both streams alive and nothing paired for this long: ``unsynced``. Twice the larger stream timeout,
    at least 1 s, so a few lost frames on a loaded machine do not read as an offset."""
    return max(1.0, 2 * max(params["rgb_timeout"], params["depth_timeout"]))


def _stamp_seconds(header) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


class SegmentCore:
    """Everything segment_node does; ``node`` is a rclpy Node or LifecycleNode it works through."""

    def __init__(self, node, params: dict[str, Any]) -> None:
        self.node, self.params, self.log = node, params, node.get_logger()
        self.segmenter = None
        self.active = False
        self.subs: dict[str, Any] = {}  # modality or "info" -> subscription
        self.sub_reliability: dict[str, str] = {}
        self.timers: list[Any] = []
        self.pubs: dict[str, Any] = {}
        self.worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._throttle = Throttle(LOG_THROTTLE_S)
        self.clock_monitor = ClockMonitor()
        self._reset_state()
        node.add_post_set_parameters_callback(self._apply_live_params)

    def _reset_state(self) -> None:
        """Counters, watchdog and pairer (fresh at each activation). Touched under self._lock."""
        p, mods = self.params, (self.segmenter.modalities if self.segmenter is not None else MODALITIES)
        self.watchdog = ModeWatchdog(rgb_timeout=p["rgb_timeout"], depth_timeout=p["depth_timeout"],
                                     modalities=tuple(mods), loss_grace=p["loss_grace"],
                                     sync_timeout=sync_timeout(p))
        self.pairer = ApproxTimePairer(slop=p["sync_slop"], rgb_timeout=p["rgb_timeout"],
                                       depth_timeout=p["depth_timeout"])
        self.input_rate = {m: RateMeter() for m in MODALITIES}
        self.output_rate, self.latency = RateMeter(), LatencyStats()
        self.last_stamp: dict[str, float | None] = {m: None for m in MODALITIES}
        self.received: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()  # "<modality>.<reason>"
        self.pairing_resets: Counter[str] = Counter()
        self.incompatible_qos: Counter[str] = Counter()
        self.published_by_mode: Counter[str] = Counter()
        self.processed = 0
        self.camera_info: CameraInfo | None = None

    # -- lifecycle stages ------------------------------------------------------------------
    def configure(self) -> None:
        """Load the model, create the publishers, publish the class list (latched)."""
        from rcl_interfaces.msg import ParameterDescriptor

        self.log.info(f"loading the model (checkpoint={self.params['checkpoint'] or '<bundled demo model>'}, "
                      f"device={self.params['device']}, backend={self.params['backend']})")
        self.segmenter, self.checkpoint_path, self.threads = load_segmenter(self.params)
        seg, node = self.segmenter, self.node
        if not node.has_parameter("class_names"):
            node.declare_parameter("class_names", list(seg.class_names), ParameterDescriptor(
                description="Class names of the loaded checkpoint; label id i is class_names[i]. "
                "Set from the checkpoint (overrides are ignored).", read_only=True), ignore_override=True)
        events = PublisherEventCallbacks(incompatible_qos=self._on_pub_incompatible_qos)
        for key, typ, topic, qos in (("labels", Image, "~/labels", output_qos()),
                                     ("colored", Image, "~/colored", output_qos()),
                                     ("camera_info", CameraInfo, "~/camera_info", output_qos()),
                                     ("mode", String, "~/mode", latched_qos()),
                                     ("class_names", String, "~/class_names", latched_qos())):
            self.pubs[key] = node.create_publisher(typ, topic, qos, event_callbacks=events)
        self.pubs["diagnostics"] = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.pubs["class_names"].publish(String(data=class_names_json(seg.class_names, seg.palette)))
        self._reset_state()
        self._publish_mode(self.watchdog.mode)
        self.log.info(f"configured: {self.checkpoint_path.name} on {seg.device} ({getattr(seg, 'precision', self.params['precision'])}, backend "
                      f"{backend_name(seg)}, {self.threads} CPU threads), {seg.num_classes} classes, "
                      f"modalities {'+'.join(seg.modalities)}")

    def activate(self) -> None:
        """Subscribe, start the timers and the inference worker."""
        with self._lock:
            self._reset_state()
        for key in [m for m in MODALITIES if m in self.segmenter.modalities] + ["info"]:
            self._subscribe(key)
        for m in set(MODALITIES) - set(self.segmenter.modalities):
            self.log.info(f"the checkpoint has no {m} branch; not subscribing to {self._topic(m)} "
                          f"(mode {self.watchdog.healthy_mode} is this model's healthy mode)")
        steady = Clock(clock_type=ClockType.STEADY_TIME)  # keeps running while /clock stops
        self.timers = [self.node.create_timer(self.params["diagnostics_period"], self._on_diagnostics_timer,
                                              clock=steady)]
        if self.params["qos_reliability"] == "auto":
            self.timers.append(self.node.create_timer(QOS_CHECK_S, self._recheck_qos, clock=steady))
        self._stop.clear()
        self.worker = threading.Thread(target=self._worker_loop, name="m3l_inference", daemon=True)
        self.worker.start()
        self.active = True
        inputs = ", ".join(f"{s.topic_name} ({self.sub_reliability[k]})" for k, s in self.subs.items())
        self.log.info(f"ready: {self.checkpoint_path.name}, backend {backend_name(self.segmenter)}, inputs {inputs}")

    def deactivate(self) -> None:
        """Stop the worker, the timers and the subscriptions; ``~/mode`` says ``no_input``."""
        self.active = False
        self._stop.set()
        self._wake.set()
        if self.worker is not None and self.worker.is_alive():
            self.worker.join(timeout=10.0)
        self.worker = None
        for t in self.timers:
            self.node.destroy_timer(t)
        for s in self.subs.values():
            self.node.destroy_subscription(s)
        self.timers, self.subs = [], {}
        with self._lock:
            self.watchdog.mode = NO_INPUT
            self._publish_mode(NO_INPUT)

    def cleanup(self) -> None:
        """Destroy the publishers and unload the model."""
        if self.active:
            self.deactivate()
        for p in self.pubs.values():
            self.node.destroy_publisher(p)
        self.pubs, self.segmenter = {}, None

    # -- subscriptions and QoS ---------------------------------------------------------------
    def _topic(self, key: str) -> str:
        if key == "info":
            return self.node.resolve_topic_name("rgb/camera_info")
        base = self.node.resolve_topic_name(f"{key}/image")  # remapping applies to the base name, as image_transport
        return f"{base}/{COMPRESSED_SUFFIX[key]}" if self.params["image_transport"] == "compressed" else base

    def _subscribe(self, key: str, publishers: list[str] | None = None) -> None:
        topic = self._topic(key)
        if publishers is None:
            publishers = publisher_reliabilities(self.node, topic)
        reliability = choose_reliability(self.params["qos_reliability"], publishers)
        if key == "info":
            typ, callback = CameraInfo, self._on_camera_info
        else:
            typ = CompressedImage if self.params["image_transport"] == "compressed" else Image
            callback = (lambda msg, m=key: self._on_image(m, msg))
        self.subs[key] = self.node.create_subscription(
            typ, topic, callback, input_qos(reliability, self.params["qos_depth"]),
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=lambda ev, t=topic: self._on_sub_qos(t, ev)))
        self.sub_reliability[key] = reliability
        if self.params["qos_reliability"] == "auto":
            offered = f"publishers offering {', '.join(publishers)}" if publishers else "no publisher (yet)"
            self.log.info(f"qos_reliability auto: {topic} has {offered}; subscribing {reliability}")

    def _recheck_qos(self) -> None:
        """qos_reliability:=auto: recreate a subscription whose publishers now want another reliability."""
        for key in list(self.subs):
            publishers = publisher_reliabilities(self.node, self._topic(key))
            if choose_reliability("auto", publishers) != self.sub_reliability[key]:
                self.node.destroy_subscription(self.subs.pop(key))
                self._subscribe(key, publishers)

    def _on_sub_qos(self, topic: str, event) -> None:
        policy = qos_policy_name_from_kind(event.last_policy_kind)
        with self._lock:
            self.incompatible_qos[topic] += 1
        hint = (" A best-effort publisher cannot feed a reliable subscription: use qos_reliability:=auto "
                "(the default) or best_effort." if policy == "RELIABILITY" else "")
        self.log.error(f"incompatible QoS on {topic}: a publisher offers QoS that this subscription cannot accept "
                       f"(policy {policy}); no messages will arrive from it.{hint}")

    def _on_pub_incompatible_qos(self, event) -> None:
        with self._lock:
            self.incompatible_qos["outputs"] += 1
        self.log.warning(f"a subscriber to one of this node's outputs requests QoS it does not offer (policy "
                         f"{qos_policy_name_from_kind(event.last_policy_kind)}); outputs are RELIABLE + VOLATILE, "
                         "~/mode and ~/class_names are RELIABLE + TRANSIENT_LOCAL")

    def _apply_live_params(self, params) -> None:
        with self._lock:
            for p in params:
                if p.name not in LIVE_PARAMS:
                    continue
                self.params[p.name] = p.value
                if p.name in ("rgb_timeout", "depth_timeout"):
                    self.watchdog.set_timeouts(**{p.name: p.value})
                    self.pairer.set_params(**{p.name: p.value})
                    self.watchdog.sync_timeout = sync_timeout(self.params)
                elif p.name == "sync_slop":
                    self.pairer.set_params(slop=p.value)
                elif p.name == "loss_grace":
                    self.watchdog.loss_grace = p.value
                self.log.info(f"parameter {p.name} set to {p.value}")

    # -- inputs -------------------------------------------------------------------------------
    def _now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def _log_throttled(self, key: object, message: str) -> None:
        # Keyed by (topic, reason) with a suppressed count; rclpy's throttle is per call site only.
        emit, suppressed = self._throttle.allow(key, time.monotonic())
        if emit:
            self.log.error(message + (f" ({suppressed} similar messages suppressed)" if suppressed else ""))

    def _reject(self, modality: str, topic: str, reason: str, detail: str) -> None:
        with self._lock:
            self.rejected[f"{modality}.{reason}"] += 1
        self._log_throttled((topic, reason), f"dropped a message on {topic}: {detail}")

    def _on_image(self, modality: str, msg: Any) -> None:
        with self._lock:
            self.received[modality] += 1
        try:
            self._handle_image(modality, msg)
        except Exception as e:  # an exception here would stop the executor: count it and keep running
            self._reject(modality, self._topic(modality), "callback_error",
                         f"error handling the message ({type(e).__name__}: {e})")

    def _handle_image(self, modality: str, msg: Any) -> None:
        now, p, topic = self._now(), self.params, self.subs[modality].topic_name
        try:
            if modality == "rgb":
                image = decode_rgb(msg, transport=p["image_transport"], max_pixels=p["max_input_pixels"])
            else:
                image = decode_depth(msg, transport=p["image_transport"], max_pixels=p["max_input_pixels"],
                                     max_depth=p["max_depth"])
        except ImageCodecError as e:
            self._reject(modality, topic, e.reason, f"field '{e.field}': {e}")
            return
        if modality == "depth":
            if warning := depth_units_warning(image[::UNITS_STRIDE, ::UNITS_STRIDE]):
                self.log.warning(f"depth on {topic}: {warning}", once=True)
            valid = float(np.isfinite(image).mean())
            if valid < p["min_valid_depth_fraction"]:  # not malformed, just useless: depth counts as missing
                self._reject("depth", topic, "low_valid_depth", f"{valid:.1%} valid depth pixels, below "
                             f"min_valid_depth_fraction={p['min_valid_depth_fraction']}; treating depth as missing")
                return
        stamp = _stamp_seconds(msg.header)
        with self._lock:
            self.input_rate[modality].tick(now)
            self.last_stamp[modality] = stamp
            self.watchdog.feed(modality, now)
            mode, changed = self.watchdog.update(now, last_pair=self.pairer.last_paired_at)
            reset = self.pairer.add(modality, Frame(stamp=stamp, received=now, data=(msg.header, image)), mode=mode)
            self.pairing_resets[modality] += int(reset)
            if changed:
                self._on_mode_change(mode, now)
        if reset:
            self._log_throttled((topic, "stamp_backwards"), f"field 'header.stamp' on {topic} went backwards to "
                                f"{stamp:.3f} s (bag loop?); pairing state reset")
        self._wake.set()

    def _on_camera_info(self, msg: CameraInfo) -> None:
        with self._lock:
            self.camera_info = msg

    # -- mode ------------------------------------------------------------------------------------
    def _publish_mode(self, mode: str) -> None:
        pub = self.pubs.get("mode")
        if pub is not None:
            try:
                pub.publish(String(data=mode))
            except Exception:  # context already shut down
                pass

    def _on_mode_change(self, mode: str, now: float) -> None:
        """Log and publish a mode change. Called with the lock held, so ~/mode messages keep their order."""
        def age(m: str) -> str:
            if self.watchdog.presumed_since.get(m) is not None:  # start-up grace: not seen yet this time
                return f"{m} starting"
            a = self.watchdog.age(m, now)
            return f"{m} age {'never' if a is None else f'{a:.2f} s'}"

        ages = ", ".join(age(m) for m in MODALITIES)
        self.log.info(f"mode -> {mode}: {WHY[mode]} ({ages})")
        self._publish_mode(mode)

    # -- worker ------------------------------------------------------------------------------------
    def _worker_loop(self) -> None:
        tick = min(0.05, max(0.005, min(self.watchdog.rgb_timeout, self.watchdog.depth_timeout) / 10))
        while not self._stop.is_set():
            self._wake.wait(tick)
            self._wake.clear()
            if self._stop.is_set():
                break
            now = self._now()
            with self._lock:
                mode, changed = self.watchdog.update(now, last_pair=self.pairer.last_paired_at)
                job = self.pairer.take(now=now, mode=mode)
                if changed:
                    self._on_mode_change(mode, now)
            if job is None:
                continue
            try:
                self._process(job)
            except Exception as e:  # keep running: a bad frame or a CUDA hiccup must not kill the node
                if self._stop.is_set() or not self.node.context.ok():
                    break
                with self._lock:
                    self.rejected["inference.error"] += 1
                self._log_throttled("inference", f"inference failed ({type(e).__name__}: {e}); frame dropped")
            self._wake.set()  # a newer job may already be waiting

    def _process(self, job: Job) -> None:
        header, _ = job.primary.data
        rgb = job.rgb.data[1] if job.rgb is not None else None
        depth = job.depth.data[1] if job.depth is not None else None
        if rgb is not None and depth is not None:
            depth, resized = match_depth_size(depth, rgb.shape)
            if resized:
                with self._lock:
                    self.rejected["depth.size_mismatch"] += 1
                self.log.warning(
                    f"depth on {self._topic('depth')} is {job.depth.data[1].shape[1]}x"
                    f"{job.depth.data[1].shape[0]} but RGB is {rgb.shape[1]}x{rgb.shape[0]}; resizing depth to the "
                    "RGB size (nearest). Use depth registered to the colour camera (aligned_depth_to_color).", once=True)
        seg = self.segmenter
        t0 = time.perf_counter()
        labels = seg.predict(rgb=rgb, depth=depth)
        latency = time.perf_counter() - t0
        if self._stop.is_set():
            return
        enc, step, data = encode_labels(labels, seg.num_classes)
        h, w = labels.shape
        self.pubs["labels"].publish(Image(header=header, height=h, width=w, encoding=enc, step=step, data=data))
        colored = self.pubs["colored"]
        if self.params["publish_colored"] and colored.get_subscription_count() > 0:
            step_c, data_c = encode_image(colorize(labels, seg.palette), "rgb8")
            colored.publish(Image(header=header, height=h, width=w, encoding="rgb8", step=step_c, data=data_c))
        with self._lock:
            info = self.camera_info
        if info is not None:
            if (info.width, info.height) in ((w, h), (0, 0)):
                info.header = header
                self.pubs["camera_info"].publish(info)
            else:
                self.log.warning(f"camera_info is {info.width}x{info.height} but labels are {w}x{h}; "
                                 "not republishing ~/camera_info", once=True)
        now = self._now()
        with self._lock:
            self.latency.add(latency)
            self.output_rate.tick(now)
            self.processed += 1
            self.published_by_mode[job.mode] += 1

    # -- diagnostics ---------------------------------------------------------------------------------
    def _on_diagnostics_timer(self) -> None:
        now, wall = self._now(), time.monotonic()
        self.clock_monitor.feed(node_now=now, wall_now=wall)
        sim = bool(self.node.get_parameter("use_sim_time").value)
        stalled = self.clock_monitor.stalled_for(wall) if sim else 0.0
        if stalled >= diag.CLOCK_STALL_S:
            self.log.error(f"use_sim_time is true but the node clock has not moved for {stalled:.0f} s (no /clock?): "
                           "stream timeouts are frozen", throttle_duration_sec=LOG_THROTTLE_S)
        with self._lock:
            mode, changed = self.watchdog.update(now, last_pair=self.pairer.last_paired_at)
            if changed:
                self._on_mode_change(mode, now)
            offset = self.pairer.stamp_offset
            level, message = diag.health(mode, healthy_mode=self.watchdog.healthy_mode, offset=offset,
                                         slop=self.pairer.slop, clock_stalled_s=stalled, active=self.active)
            values = diag.diagnostic_values(self, now, stalled)
            self._publish_mode(mode)
        if mode == UNSYNCED:
            self.log.warning(f"RGB and depth never pair: RGB stamps are "
                             f"{'unknown' if offset is None else f'{offset:+.3f} s'} off depth's, beyond sync_slop="
                             f"{self.pairer.slop:g} s; segmenting RGB alone (mode unsynced). Fix the camera "
                             "clocks or raise sync_slop.", throttle_duration_sec=LOG_THROTTLE_S)
        self.pubs["diagnostics"].publish(diag.diagnostic_array(
            name=f"{self.node.get_fully_qualified_name()}: segmentation", hardware_id=str(self.segmenter.device),
            level=level, message=message, values=values, stamp=self.node.get_clock().now().to_msg()))
