#!/usr/bin/env python3
"""End-to-end latency of ``segment_node``: publish one RGB-D pair, time until its labels arrive.

    python scripts/node_latency.py --checkpoint model.safetensors [--frames 20] [--device cpu]
        [--height 480 --width 640] [--warmup 3] [--backend auto] [--num-threads 0] [--compare-bare]

The node runs as its own process (``python -m m3l_ros.segment_node``) on a private ROS
domain with localhost-only discovery. This process publishes an ``rgb8`` image and a
``16UC1`` depth image with the same stamp (reliable QoS), then waits for the label image
with that stamp; the next pair goes out only after that, so no queueing is counted. The
time is measured here, from just before the RGB publish to the arrival of the labels:
serialisation, transport both ways, decoding, pairing, inference and encoding.

``--compare-bare`` measures the bare ``Segmenter.predict`` (same checkpoint, backend, precision
and threads) in this process on the same frames, side by side: one bare call after each node
frame, while the node idles (with 0.1 s idle gaps around it), and prints node minus bare, and
the node's own ``Segmenter.predict`` time from its /diagnostics. The node runs with the
defaults of config/segment.yaml unless given here. Child process and graph probe: m3l_ros.procs.

Transport: unless ``FASTRTPS_DEFAULT_PROFILES_FILE`` is already set, both processes get a
Fast DDS profile with a 16 MB shared-memory segment (``LARGE_SHM_PROFILE``). With Fast
DDS's default 512 KB segment a 640x480 ``rgb8`` image (900 KB) does not fit; it is split
up, and a lost piece stalls reliable delivery until the next heartbeat (3 s by default).
Measured here on 2 CPU cores: 5 of 40 frames took 2.2-3.0 s with the default, none with
the profile. ``--default-dds`` (``large_shm=False``) measures Fast DDS as configured.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

NAMESPACE = "/m3l_latency"
RGB_TOPIC = f"{NAMESPACE}/camera/rgb"
DEPTH_TOPIC = f"{NAMESPACE}/camera/depth"
LABELS_TOPIC = f"{NAMESPACE}/segment_node/labels"
IDLE_GAP_S = 0.1  # pause before and after each bare run in --compare-bare
PROFILES_ENV = "FASTRTPS_DEFAULT_PROFILES_FILE"  # Fast DDS 2.x, as in ROS 2 Jazzy
LARGE_SHM_PROFILE = """<?xml version="1.0" encoding="UTF-8"?>
<profiles xmlns="http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles">
  <transport_descriptors>
    <transport_descriptor>
      <transport_id>shm_16mb</transport_id>
      <type>SHM</type>
      <segment_size>16777216</segment_size>
    </transport_descriptor>
    <transport_descriptor>
      <transport_id>udp</transport_id>
      <type>UDPv4</type>
    </transport_descriptor>
  </transport_descriptors>
  <participant profile_name="m3l_large_shm" is_default_profile="true">
    <rtps>
      <userTransports>
        <transport_id>shm_16mb</transport_id>
        <transport_id>udp</transport_id>
      </userTransports>
      <useBuiltinTransports>false</useBuiltinTransports>
    </rtps>
  </participant>
</profiles>
"""


class NodeLatencyError(RuntimeError):
    """The node did not start, answer or stop; the message includes the tail of its log."""


def _image(arr: np.ndarray, encoding: str, stamp_ns: int):
    from sensor_msgs.msg import Image

    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.header.frame_id = "camera_color_optical_frame"
    msg.height, msg.width = arr.shape[:2]
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = arr.strides[0]
    msg.data = arr.tobytes()
    return msg


def test_frames(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A random rgb8 image and 16UC1 depth (mm) of ``size`` (H, W)."""
    rng = np.random.default_rng(0)
    h, w = size
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.integers(500, 5000, (h, w)).astype(np.uint16)


def measure_node_latency(
    checkpoint: str | os.PathLike,
    *,
    device: str = "cpu",
    frames: int = 20,
    size: tuple[int, int] = (480, 640),
    rgb: np.ndarray | None = None,
    depth: np.ndarray | None = None,
    warmup: int = 3,
    num_threads: int | None = None,
    backend: str | None = None,
    precision: str | None = None,
    timeout: float = 120.0,
    large_shm: bool = True,
    diagnostics: dict[str, str] | None = None,
    between: Callable[[], None] | None = None,
) -> list[float]:
    """Milliseconds from publishing each RGB-D pair to receiving its labels, one pair at a time.

    ``rgb`` (HxWx3 uint8) and ``depth`` (HxW uint16 mm) default to :func:`test_frames`.
    ``warmup`` pairs go first and are not counted. ``num_threads``, ``backend`` and
    ``precision`` are node parameters (None: the node's defaults). ``between`` is called after
    each frame's labels arrived (not timed; e.g. a bare-model run for a side-by-side comparison).
    ``large_shm`` applies ``LARGE_SHM_PROFILE`` unless ``FASTRTPS_DEFAULT_PROFILES_FILE`` is set.
    A ``diagnostics`` dict receives the node's last ``/diagnostics`` values.
    """
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from m3l_ros.procs import ChildError, GraphProbe, pick_domain_id, python_child, ros_env

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    h, w = size
    d_rgb, d_depth = test_frames(size)
    rgb = d_rgb if rgb is None else np.ascontiguousarray(rgb)
    depth = d_depth if depth is None else np.ascontiguousarray(depth)
    if rgb.shape != (h, w, 3) or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be {h}x{w}x3 uint8, got {rgb.shape} {rgb.dtype}")
    if depth.shape != (h, w) or depth.dtype != np.uint16:
        raise ValueError(f"depth must be {h}x{w} uint16 (millimetres), got {depth.shape} {depth.dtype}")

    domain = pick_domain_id()
    tmp = tempfile.TemporaryDirectory(prefix="m3l_node_latency_")
    extra: dict[str, str] = {}
    profile_set_here = large_shm and not os.environ.get(PROFILES_ENV)
    if profile_set_here:
        profile = Path(tmp.name) / "fastdds_large_shm.xml"
        profile.write_text(LARGE_SHM_PROFILE)
        extra[PROFILES_ENV] = str(profile)
        os.environ[PROFILES_ENV] = str(profile)  # for this process's participant, created below
    params = {"checkpoint": checkpoint, "device": device, "qos_reliability": "reliable", "rgb_timeout": 60.0,
              "depth_timeout": 60.0, "publish_colored": "false", "num_threads": num_threads, "backend": backend,
              "precision": precision}
    args = ["--ros-args", "-r", f"__ns:={NAMESPACE}", "-r", f"rgb/image:={RGB_TOPIC}", "-r", f"depth/image:={DEPTH_TOPIC}"]
    for k, v in params.items():
        if v is not None:  # None: the node's default (config/segment.yaml)
            args += ["-p", f"{k}:={v}"]
    child = python_child("m3l_ros.segment_node", *args, env=ros_env(domain, **extra),
                         log_path=Path(tmp.name) / "segment_node.log", name="segment_node")
    probe = None
    times: list[float] = []
    try:
        probe = GraphProbe(domain, name="m3l_latency_driver")
        if profile_set_here:
            os.environ.pop(PROFILES_ENV, None)  # Fast DDS has read it; do not leak it to the caller
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
        pub_rgb, pub_depth = probe.publisher(Image, RGB_TOPIC, qos), probe.publisher(Image, DEPTH_TOPIC, qos)
        arrivals: dict[int, float] = {}
        probe.subscribe("labels", Image, LABELS_TOPIC, 5, callback=lambda m: arrivals.setdefault(
            m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec, time.perf_counter()))
        last_diag: dict[str, str] = {}

        def on_diagnostics(msg) -> None:
            for st in msg.status:
                if st.name.startswith(f"{NAMESPACE}/segment_node"):
                    last_diag.clear()
                    last_diag.update({kv.key: kv.value for kv in st.values})

        if diagnostics is not None:
            probe.subscribe("diagnostics", DiagnosticArray, "/diagnostics", 10, callback=on_diagnostics)

        def wait(pred, limit: float, what: str) -> None:
            if not probe.spin_until(pred, limit, children=[child], what=what):
                raise NodeLatencyError(f"timed out after {limit:.0f} s waiting for {what}; the node's log ends:\n"
                                       f"{child.tail()}")

        wait(lambda: pub_rgb.get_subscription_count() >= 1 and pub_depth.get_subscription_count() >= 1
             and probe.node.count_publishers(LABELS_TOPIC) >= 1, timeout, "the node to start")
        probe.spin(0.3)  # let the reverse direction of discovery finish too
        base = time.time_ns()
        for i in range(warmup + frames):
            stamp = base + i * 100_000_000  # distinct, increasing stamps 0.1 s apart
            msg_rgb, msg_depth = _image(rgb, "rgb8", stamp), _image(depth, "16UC1", stamp)
            t0 = time.perf_counter()
            pub_rgb.publish(msg_rgb)
            pub_depth.publish(msg_depth)
            wait(lambda: stamp in arrivals, timeout, f"the labels of frame {i}")
            if i >= warmup:
                times.append((arrivals[stamp] - t0) * 1000.0)
                if between is not None:
                    between()
        if diagnostics is not None:  # the node reports once per diagnostics_period (1 s)
            total = str(warmup + frames)
            wait(lambda: last_diag.get("frames_processed") == total, 5.0, "/diagnostics")
            diagnostics.update(last_diag)
    except ChildError as e:  # the node exited early: its log tail is in the message
        raise NodeLatencyError(str(e)) from e
    finally:
        if profile_set_here:
            os.environ.pop(PROFILES_ENV, None)
        if probe is not None:
            probe.close()
        rc = child.stop(30)
        log_tail = child.tail()
        tmp.cleanup()
    if rc != 0:
        raise NodeLatencyError(f"segment_node did not exit cleanly (code {rc}); its log ended:\n{log_tail}")
    return times


def compare_with_bare(checkpoint: str | os.PathLike, *, device: str = "cpu", frames: int = 20,
                      size: tuple[int, int] = (480, 640), warmup: int = 3, num_threads: int = 0,
                      backend: str = "auto", precision: str = "fp32", large_shm: bool = True) -> dict:
    """Node end to end and the bare ``Segmenter.predict``, side by side on the same frames and settings."""
    from m3l_core.inference import Segmenter

    rgb, depth = test_frames(size)
    seg = Segmenter.from_checkpoint(checkpoint, device=device, backend=backend, precision=precision,
                                    num_threads=num_threads)
    for _ in range(warmup):
        seg.predict(rgb=rgb, depth=depth)
    bare: list[float] = []

    def run_bare() -> None:
        # Idle gaps on both sides, as the node has between frames: thread pools that spin-wait
        # after a parallel region (OpenMP) must not steal the cores of the other measurement.
        time.sleep(IDLE_GAP_S)
        t0 = time.perf_counter()
        seg.predict(rgb=rgb, depth=depth)
        bare.append((time.perf_counter() - t0) * 1000.0)
        time.sleep(IDLE_GAP_S)

    diag: dict[str, str] = {}
    node = measure_node_latency(checkpoint, device=device, frames=frames, size=size, rgb=rgb, depth=depth,
                                warmup=warmup, num_threads=num_threads, backend=backend, precision=precision,
                                large_shm=large_shm, diagnostics=diag, between=run_bare)
    node_med, bare_med = statistics.median(node), statistics.median(bare)
    return dict(backend=seg.backend, precision=seg.precision, threads=seg.num_threads, node_ms=node, bare_ms=bare,
                node_median_ms=node_med, bare_median_ms=bare_med, overhead_ms=node_med - bare_med,
                node_predict_p50_ms=float(diag["latency_p50_ms"]) if "latency_p50_ms" in diag else None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="model checkpoint (.safetensors) or exported model")
    p.add_argument("--frames", type=int, default=20, help="measured frames (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="frames sent first and not counted (default 3)")
    p.add_argument("--device", default="cpu", help="node device: cpu, cuda, cuda:N, auto (default cpu)")
    p.add_argument("--backend", default="auto", help="node/Segmenter backend (default auto)")
    p.add_argument("--precision", default="fp32", help="node/Segmenter precision (default fp32)")
    p.add_argument("--num-threads", type=int, default=0, help="node/Segmenter num_threads (default 0 = auto)")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--compare-bare", action="store_true", help="also time the bare Segmenter.predict side by side")
    p.add_argument("--default-dds", action="store_true",
                   help="do not apply the 16 MB shared-memory Fast DDS profile (measure Fast DDS as configured)")
    try:
        ns = p.parse_args(argv)
        if ns.frames < 1 or ns.warmup < 0 or ns.num_threads < 0:
            p.error("--frames must be >= 1, --warmup >= 0 and --num-threads >= 0")
    except SystemExit as e:
        return int(e.code or 0)
    size = (ns.height, ns.width)
    try:
        if ns.compare_bare:
            r = compare_with_bare(ns.checkpoint, device=ns.device, frames=ns.frames, size=size, warmup=ns.warmup,
                                  num_threads=ns.num_threads, backend=ns.backend, precision=ns.precision,
                                  large_shm=not ns.default_dds)
        else:
            diag: dict[str, str] = {}
            ms = measure_node_latency(ns.checkpoint, device=ns.device, frames=ns.frames, size=size, warmup=ns.warmup,
                                      num_threads=ns.num_threads, backend=ns.backend, precision=ns.precision,
                                      large_shm=not ns.default_dds, diagnostics=diag)
    except KeyboardInterrupt:
        return 130
    except (NodeLatencyError, FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    dds = (f"Fast DDS profile from {PROFILES_ENV}" if os.environ.get(PROFILES_ENV) else
           "Fast DDS defaults" if ns.default_dds else "Fast DDS with a 16 MB shared-memory segment")
    print(f"segment_node end to end (publish RGB-D {ns.width}x{ns.height} -> labels received), {ns.frames} frames "
          f"on {ns.device}, {ns.checkpoint.name}, backend {ns.backend}, num_threads {ns.num_threads}, {dds}")
    if ns.compare_bare:
        print(f"  backend {r['backend']} ({r['precision']}), {r['threads']} thread(s)")
        print(f"  node p50 {r['node_median_ms']:.1f} ms   bare Segmenter.predict p50 {r['bare_median_ms']:.1f} ms   "
              f"node overhead {r['overhead_ms']:+.1f} ms")
        if r["node_predict_p50_ms"] is not None:
            print(f"  Segmenter.predict inside the node (its /diagnostics p50): {r['node_predict_p50_ms']:.1f} ms")
        return 0
    a = np.asarray(ms)
    print(f"  p50 {np.percentile(a, 50):.1f} ms   p90 {np.percentile(a, 90):.1f} ms   p95 {np.percentile(a, 95):.1f} ms"
          f"   mean {a.mean():.1f} ms   min {a.min():.1f} ms   max {a.max():.1f} ms")
    if "latency_p50_ms" in diag:
        inside = float(diag["latency_p50_ms"])
        print(f"  of which Segmenter.predict inside the node (its /diagnostics, p50, warm-up included): {inside:.1f} ms"
              f" -> ROS plumbing ~{np.percentile(a, 50) - inside:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
