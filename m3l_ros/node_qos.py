"""QoS of segment_node's inputs and outputs, and the ``qos_reliability: auto`` rule.

``auto`` does what rosbag2 and ``ros2 topic echo`` do: it subscribes with the reliability the
publishers offer. RELIABLE when every publisher of the topic is reliable (the RealSense
default): lost fragments of large images are repaired, so 640x480 frames arrive at the camera
rate on Fast DDS's defaults. BEST_EFFORT when any publisher is best-effort (a reliable reader
cannot match a best-effort writer), or while there is no publisher yet (it matches every
publisher). The node re-checks when publishers come and go and recreates the subscription.
"""
from __future__ import annotations

from typing import Iterable

RELIABLE, BEST_EFFORT = "reliable", "best_effort"


def choose_reliability(setting: str, publishers: Iterable[str]) -> str:
    """``setting`` (auto | reliable | best_effort) and the publishers' reliabilities -> the subscription's."""
    if setting != "auto":
        return setting
    offered = [p for p in publishers if p in (RELIABLE, BEST_EFFORT)]
    return RELIABLE if offered and all(p == RELIABLE for p in offered) else BEST_EFFORT


def publisher_reliabilities(node, topic: str) -> list[str]:
    """The reliability each publisher of ``topic`` offers (resolved name), as ``reliable``/``best_effort``."""
    from rclpy.qos import ReliabilityPolicy

    names = {ReliabilityPolicy.RELIABLE: RELIABLE, ReliabilityPolicy.BEST_EFFORT: BEST_EFFORT}
    return [names.get(info.qos_profile.reliability, "unknown") for info in node.get_publishers_info_by_topic(topic)]


def input_qos(reliability: str, depth: int):
    """rclpy's sensor-data profile (REP 2003: KEEP_LAST, VOLATILE) with this reliability and queue depth."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

    return QoSProfile(history=qos_profile_sensor_data.history, depth=depth,
                      durability=qos_profile_sensor_data.durability,
                      reliability=ReliabilityPolicy.RELIABLE if reliability == RELIABLE else ReliabilityPolicy.BEST_EFFORT)


def output_qos():
    """RELIABLE, KEEP_LAST 5, VOLATILE: a reliable publisher serves reliable and best-effort subscribers."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)


def latched_qos():
    """RELIABLE + TRANSIENT_LOCAL, depth 1: late joiners get ``~/mode`` and ``~/class_names`` at once."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
