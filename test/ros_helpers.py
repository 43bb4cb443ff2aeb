"""Process-level ROS 2 test helpers: a thin layer over :mod:`m3l_ros.procs` and :mod:`m3l_ros.messages`.

Each test run gets its own ROS_DOMAIN_ID and localhost-only discovery. Only the
PID started here is ever signalled. Kept for the tests that import this API;
new code can use ``m3l_ros.procs`` directly.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from m3l_ros import procs
from m3l_ros.messages import image_msg
from m3l_ros.procs import Child, GraphProbe, Received, latched_qos, pick_domain_id  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


def ros_env(domain_id: int) -> dict[str, str]:
    """Environment for a node process on the private graph (the tree first on PYTHONPATH)."""
    return procs.ros_env(domain_id)


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


class NodeProcess(Child):
    """``python -m m3l_ros.segment_node --ros-args ...`` with its output captured to a file."""

    def __init__(self, ros_args: list[str], *, env: dict[str, str], log_path: Path,
                 module: str = "m3l_ros.segment_node") -> None:
        super().__init__([sys.executable, "-m", module, "--ros-args", *ros_args], env=env, log_path=log_path,
                         name=module.rsplit(".", 1)[-1], cwd=REPO, new_session=False)


class Harness(GraphProbe):
    """Publishes camera streams to the node and records its outputs (``records[key]``)."""

    def __init__(self, domain_id: int, namespace: str, node_name: str, rgb_topic: str, depth_topic: str,
                 info_topic: str) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import CameraInfo, Image
        from std_msgs.msg import String

        super().__init__(domain_id, "m3l_test_driver")
        self.namespace, self.node_name = namespace, node_name
        self.rgb_topic, self.depth_topic, self.info_topic = rgb_topic, depth_topic, info_topic
        self.pub = {"rgb": self.publisher(Image, rgb_topic), "depth": self.publisher(Image, depth_topic),
                    "info": self.publisher(CameraInfo, info_topic)}
        base = f"{namespace}/{node_name}"
        for key, typ, topic, qos in (
            ("labels", Image, f"{base}/labels", 10),
            ("colored", Image, f"{base}/colored", 10),
            ("camera_info", CameraInfo, f"{base}/camera_info", 10),
            ("mode", String, f"{base}/mode", latched_qos()),
            ("class_names", String, f"{base}/class_names", latched_qos()),
            ("diagnostics", DiagnosticArray, "/diagnostics", 10),
        ):
            self.subscribe(key, typ, topic, qos)

    def now(self) -> float:
        return self.now_ns() * 1e-9

    @staticmethod
    def image_msg(arr: np.ndarray | None, encoding: str, stamp: float, frame_id: str, **override: Any):
        return image_msg(arr, encoding, stamp=stamp, frame_id=frame_id, **override)

    def publish(self, key: str, msg: Any) -> None:
        self.pub[key].publish(msg)

    # -- reading outputs --------------------------------------------------------------------
    def latest_mode(self) -> str | None:
        return self.records["mode"][-1].msg.data if self.records["mode"] else None

    def class_names(self) -> dict | None:
        return json.loads(self.records["class_names"][-1].msg.data) if self.records["class_names"] else None

    def latest_diagnostics(self, node: str | None = None, key: str = "diagnostics") -> dict[str, str] | None:
        return super().latest_diagnostics(node or f"{self.namespace}/{self.node_name}", key)
