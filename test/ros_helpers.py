"""Helpers for process-level ROS 2 tests: run segment_node in its own process and talk to it.

Each test run gets its own ROS_DOMAIN_ID and localhost-only discovery. Only the
PID started here is ever signalled.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def pick_domain_id() -> int:
    """1..101, derived from the pid so parallel runs rarely collide."""
    return 1 + os.getpid() % 101


def ros_env(domain_id: int) -> dict[str, str]:
    """Environment for the node process: this venv's environment plus isolation settings."""
    env = dict(os.environ)
    env.update(
        ROS_DOMAIN_ID=str(domain_id),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]),
        PYTHONUNBUFFERED="1",
        RCUTILS_COLORIZED_OUTPUT="0",
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
    )
    env.pop("ROS_PYTHON_CHECK_FIELDS", None)  # makes large `data` assignments 100x slower
    return env


def make_tiny_checkpoint(path: Path, *, num_classes: int = 5, seed: int = 0) -> Path:
    """A random-weight tiny LinearFusionSegFormer checkpoint with a 32x32 input size."""
    import torch

    from m3l_core.checkpoint import save_checkpoint
    from m3l_core.model import LinearFusionSegFormer, ModelConfig
    from m3l_core.preprocess import Preprocessing

    torch.manual_seed(seed)
    model = LinearFusionSegFormer(ModelConfig(backbone="tiny", num_classes=num_classes))
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (num_classes, 3)).tolist()
    save_checkpoint(path, model, class_names=[f"class_{i}" for i in range(num_classes)], palette=palette,
                    preprocessing=Preprocessing(input_size=(32, 32)))
    return path


class NodeProcess:
    """``python -m m3l_ros.segment_node --ros-args ...`` with its output captured to a file."""

    def __init__(self, ros_args: list[str], *, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "m3l_ros.segment_node", "--ros-args", *ros_args],
                                     env=env, cwd=str(REPO), stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, sig: int) -> None:
        if self.alive():
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Clean-up for a failed test: SIGINT, then SIGKILL this PID only."""
        if self.alive():
            self.send(signal.SIGINT)
            if self.wait(10) is None:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@dataclass
class Received:
    msg: Any
    t: float  # time.monotonic() at receipt


@dataclass
class Harness:
    """A test-side rclpy node in its own context: publishes camera streams, records the node's outputs."""

    domain_id: int
    namespace: str
    node_name: str
    rgb_topic: str
    depth_topic: str
    info_topic: str
    records: dict[str, list[Received]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image
        from std_msgs.msg import String

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=self.domain_id)
        self.node = rclpy.create_node("m3l_test_driver", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.pub = {
            "rgb": self.node.create_publisher(Image, self.rgb_topic, reliable),
            "depth": self.node.create_publisher(Image, self.depth_topic, reliable),
            "info": self.node.create_publisher(CameraInfo, self.info_topic, reliable),
        }
        base = f"{self.namespace}/{self.node_name}"
        for key, typ, topic, qos in (
            ("labels", Image, f"{base}/labels", reliable),
            ("colored", Image, f"{base}/colored", reliable),
            ("camera_info", CameraInfo, f"{base}/camera_info", reliable),
            ("mode", String, f"{base}/mode", latched),
            ("class_names", String, f"{base}/class_names", latched),
            ("diagnostics", DiagnosticArray, "/diagnostics", reliable),
        ):
            self.records[key] = []
            self.node.create_subscription(typ, topic, lambda m, k=key: self.records[k].append(
                Received(m, time.monotonic())), qos)

    # -- spinning ----------------------------------------------------------------------
    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=min(0.01, max(0.0, end - time.monotonic())))

    def spin_until(self, pred: Callable[[], bool], timeout: float, *, tick: Callable[[], None] | None = None,
                   period: float = 0.05) -> bool:
        """Spin (calling ``tick`` every ``period`` s, e.g. to publish a frame) until ``pred()``."""
        end = time.monotonic() + timeout
        next_tick = time.monotonic()
        while time.monotonic() < end:
            if tick is not None and time.monotonic() >= next_tick:
                tick()
                next_tick += period
            self.executor.spin_once(timeout_sec=0.005)
            if pred():
                return True
        return pred()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()

    # -- publishing ----------------------------------------------------------------------
    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    @staticmethod
    def image_msg(arr: np.ndarray | None, encoding: str, stamp: float, frame_id: str, **override):
        from sensor_msgs.msg import Image

        from m3l_ros.image_codec import encode_image

        msg = Image()
        msg.header.stamp.sec = int(stamp)
        msg.header.stamp.nanosec = int(round((stamp - int(stamp)) * 1e9)) % 1_000_000_000
        msg.header.frame_id = frame_id
        msg.encoding = encoding
        if arr is not None:
            step, data = encode_image(arr, encoding)
            msg.height, msg.width = arr.shape[:2]
            msg.step, msg.data = step, data
        for k, v in override.items():
            setattr(msg, k, v)
        return msg

    def publish(self, key: str, msg) -> None:
        self.pub[key].publish(msg)

    # -- reading outputs --------------------------------------------------------------------
    def latest_mode(self) -> str | None:
        return self.records["mode"][-1].msg.data if self.records["mode"] else None

    def class_names(self) -> dict | None:
        return json.loads(self.records["class_names"][-1].msg.data) if self.records["class_names"] else None

    def latest_diagnostics(self) -> dict[str, str] | None:
        if not self.records["diagnostics"]:
            return None
        for rec in reversed(self.records["diagnostics"]):
            for st in rec.msg.status:
                if st.name.startswith(f"{self.namespace}/{self.node_name}"):
                    return {"_level": st.level, "_message": st.message, **{kv.key: kv.value for kv in st.values}}
        return None
