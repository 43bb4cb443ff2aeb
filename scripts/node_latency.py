#!/usr/bin/env python3
"""End-to-end latency of ``segment_node``: publish one RGB-D pair, time until its labels arrive.

    python scripts/node_latency.py --checkpoint model.safetensors [--frames 20] [--device cpu]
        [--height 480 --width 640] [--warmup 3]

The node runs as its own process (``python -m m3l_ros.segment_node``) on a private ROS
domain with localhost-only discovery. This process publishes an ``rgb8`` image and a
``16UC1`` depth image with the same stamp (reliable QoS), then waits for the label image
with that stamp; the next pair goes out only after that, so no queueing is counted. The
time is measured here, from just before the RGB publish to the arrival of the labels:
serialisation, transport both ways, decoding, pairing, inference and encoding.

``scripts/benchmark_speed.py`` compares this with the bare ``Segmenter.predict``.

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
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NAMESPACE = "/m3l_latency"
RGB_TOPIC = f"{NAMESPACE}/camera/rgb"
DEPTH_TOPIC = f"{NAMESPACE}/camera/depth"
LABELS_TOPIC = f"{NAMESPACE}/segment_node/labels"
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


def _domain_id() -> int:
    """A private ROS domain (1..101) for the node and this process; not the caller's, so nothing else listens."""
    return 1 + (os.getpid() * 7 + 13) % 101


def _package_path(pythonpath: str) -> str:
    """PYTHONPATH for the node process: the m3l_ros this process imports comes first."""
    import importlib.util

    spec = importlib.util.find_spec("m3l_ros")
    if spec is None or spec.origin is None:
        raise NodeLatencyError("the m3l_ros package is not importable by this Python; install it or set PYTHONPATH")
    root = str(Path(spec.origin).resolve().parents[1])
    return os.pathsep.join([root] + [p for p in pythonpath.split(os.pathsep) if p])


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


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
    timeout: float = 120.0,
    large_shm: bool = True,
    diagnostics: dict[str, str] | None = None,
) -> list[float]:
    """Milliseconds from publishing each RGB-D pair to receiving its labels, one pair at a time.

    ``rgb`` (HxWx3 uint8) and ``depth`` (HxW uint16 mm) default to random images of ``size``
    (H, W). ``warmup`` pairs go first and are not counted (the first one also brings the
    node from ``no_input`` into ``rgbd``). ``num_threads`` is the node's torch thread count
    (default: this process's, so the node and a bare-model measurement here compare fairly).
    ``timeout`` bounds the node's start-up and every single frame. ``large_shm`` applies
    ``LARGE_SHM_PROFILE`` to both processes unless ``FASTRTPS_DEFAULT_PROFILES_FILE`` is set.
    A ``diagnostics`` dict receives the node's last ``/diagnostics`` values (e.g. ``latency_p50_ms``,
    its own ``Segmenter.predict`` time), so plumbing and model time can be told apart.
    """
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    h, w = size
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8) if rgb is None else np.ascontiguousarray(rgb)
    depth = rng.integers(500, 5000, (h, w)).astype(np.uint16) if depth is None else np.ascontiguousarray(depth)
    if rgb.shape != (h, w, 3) or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be {h}x{w}x3 uint8, got {rgb.shape} {rgb.dtype}")
    if depth.shape != (h, w) or depth.dtype != np.uint16:
        raise ValueError(f"depth must be {h}x{w} uint16 (millimetres), got {depth.shape} {depth.dtype}")
    if num_threads is None:
        import torch

        num_threads = torch.get_num_threads()

    domain = _domain_id()
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0")
    env.pop("ROS_PYTHON_CHECK_FIELDS", None)  # makes assigning a 900 KB `data` field ~100x slower
    env["PYTHONPATH"] = _package_path(env.get("PYTHONPATH", ""))
    tmp = tempfile.TemporaryDirectory(prefix="m3l_node_latency_")
    profile_set_here = large_shm and not os.environ.get(PROFILES_ENV)
    if profile_set_here:
        profile = Path(tmp.name) / "fastdds_large_shm.xml"
        profile.write_text(LARGE_SHM_PROFILE)
        env[PROFILES_ENV] = str(profile)
        os.environ[PROFILES_ENV] = str(profile)  # for this process's participant, created below
    # Timeouts far above any frame time: the node must stay in rgbd between one-at-a-time frames.
    argv = [sys.executable, "-m", "m3l_ros.segment_node", "--ros-args", "-r", f"__ns:={NAMESPACE}",
            "-r", f"rgb/image:={RGB_TOPIC}", "-r", f"depth/image:={DEPTH_TOPIC}",
            "-p", f"checkpoint:={checkpoint}", "-p", f"device:={device}", "-p", "qos_reliability:=reliable",
            "-p", f"num_threads:={num_threads}", "-p", "rgb_timeout:=60.0", "-p", "depth_timeout:=60.0",
            "-p", "publish_colored:=false"]
    log_path = Path(tmp.name) / "segment_node.log"
    log_file = open(log_path, "wb")
    proc = subprocess.Popen(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    context = rclpy.Context()
    node = executor = None
    times: list[float] = []
    try:
        rclpy.init(context=context, domain_id=domain, signal_handler_options=SignalHandlerOptions.NO)
        node = rclpy.create_node("m3l_latency_driver", context=context)
        if profile_set_here:
            os.environ.pop(PROFILES_ENV, None)  # Fast DDS has read it; do not leak it to the caller
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
        pub_rgb = node.create_publisher(Image, RGB_TOPIC, qos)
        pub_depth = node.create_publisher(Image, DEPTH_TOPIC, qos)
        arrivals: dict[int, float] = {}

        def on_labels(msg) -> None:
            arrivals.setdefault(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec, time.perf_counter())

        sub = node.create_subscription(Image, LABELS_TOPIC, on_labels, QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE))
        last_diag: dict[str, str] = {}

        def on_diagnostics(msg) -> None:
            for st in msg.status:
                if st.name.startswith(f"{NAMESPACE}/segment_node"):
                    last_diag.clear()
                    last_diag.update({kv.key: kv.value for kv in st.values})

        if diagnostics is not None:
            node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)

        def spin_until(pred, limit: float, what: str) -> None:
            end = time.monotonic() + limit
            while not pred():
                if proc.poll() is not None:
                    raise NodeLatencyError(f"segment_node exited with code {proc.returncode} {what}; "
                                           f"its log ended:\n{_tail(log_path)}")
                if time.monotonic() > end:
                    raise NodeLatencyError(f"timed out after {limit:.0f} s {what}; the node's log ends:\n"
                                           f"{_tail(log_path)}")
                executor.spin_once(timeout_sec=0.01)

        spin_until(lambda: pub_rgb.get_subscription_count() >= 1 and pub_depth.get_subscription_count() >= 1
                   and sub.get_publisher_count() >= 1, timeout, "while starting")
        settle = time.monotonic() + 0.3  # let the reverse direction of discovery finish too
        spin_until(lambda: time.monotonic() > settle, timeout, "while starting")
        base = time.time_ns()
        for i in range(warmup + frames):
            stamp = base + i * 100_000_000  # distinct, increasing stamps 0.1 s apart
            msg_rgb, msg_depth = _image(rgb, "rgb8", stamp), _image(depth, "16UC1", stamp)
            t0 = time.perf_counter()
            pub_rgb.publish(msg_rgb)
            pub_depth.publish(msg_depth)
            spin_until(lambda: stamp in arrivals, timeout, f"waiting for the labels of frame {i}")
            if i >= warmup:
                times.append((arrivals[stamp] - t0) * 1000.0)
        if diagnostics is not None:  # the node reports once per diagnostics_period (1 s)
            total = str(warmup + frames)
            spin_until(lambda: last_diag.get("frames_processed") == total, 5.0, "waiting for /diagnostics")
            diagnostics.update(last_diag)
    finally:
        if profile_set_here:
            os.environ.pop(PROFILES_ENV, None)
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        context.try_shutdown()
        rc = proc.poll()
        if rc is None:
            proc.send_signal(signal.SIGINT)
            try:
                rc = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log_file.close()
        log_tail = _tail(log_path)
        tmp.cleanup()
    if rc != 0:
        raise NodeLatencyError(f"segment_node did not exit cleanly (code {rc}); its log ended:\n{log_tail}")
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="model checkpoint (.safetensors)")
    p.add_argument("--frames", type=int, default=20, help="measured frames (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="frames sent first and not counted (default 3)")
    p.add_argument("--device", default="cpu", help="node device: cpu, cuda, cuda:N, auto (default cpu)")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--default-dds", action="store_true",
                   help="do not apply the 16 MB shared-memory Fast DDS profile (measure Fast DDS as configured)")
    ns = p.parse_args(argv)
    if ns.frames < 1 or ns.warmup < 0:
        p.error("--frames must be >= 1 and --warmup >= 0")
    diag: dict[str, str] = {}
    try:
        ms = measure_node_latency(ns.checkpoint, device=ns.device, frames=ns.frames, size=(ns.height, ns.width),
                                  warmup=ns.warmup, large_shm=not ns.default_dds, diagnostics=diag)
    except (NodeLatencyError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    a = np.asarray(ms)
    dds = (f"Fast DDS profile from {PROFILES_ENV}" if os.environ.get(PROFILES_ENV) else
           "Fast DDS defaults" if ns.default_dds else "Fast DDS with a 16 MB shared-memory segment")
    print(f"segment_node end to end (publish RGB-D {ns.width}x{ns.height} -> labels received), "
          f"{len(a)} frames on {ns.device}, {ns.checkpoint.name}, {dds}")
    print(f"  p50 {np.percentile(a, 50):.1f} ms   p90 {np.percentile(a, 90):.1f} ms   p95 {np.percentile(a, 95):.1f} ms"
          f"   mean {a.mean():.1f} ms   min {a.min():.1f} ms   max {a.max():.1f} ms")
    if "latency_p50_ms" in diag:
        inside = float(diag["latency_p50_ms"])
        print(f"  of which Segmenter.predict inside the node (its /diagnostics, p50, warm-up included): {inside:.1f} ms"
              f" -> ROS plumbing ~{np.percentile(a, 50) - inside:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
