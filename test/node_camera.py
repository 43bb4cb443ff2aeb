"""A RealSense-like test camera in its own process: 640x480 rgb8 + 16UC1 at 15 Hz (segment_node tests).

    python test/node_camera.py --reliability reliable --seconds 32 --rgb-topic /ns/rgb/image \\
        --depth-topic /ns/depth/image [--depth-offset 0.5] [--wait-subscribers 1]

Waits for the subscribers (and, for a RELIABLE camera, until they are reliable: the node's
``qos_reliability:=auto`` switches after it sees this publisher), publishes, then prints one
JSON line ``{"rgb": N, "depth": N, "first_stamp": s, "last_stamp": s, "last_depth_stamp": s}``. No middleware variable
is needed or set here; whatever the caller's environment holds is used as is.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np



def scene(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A floor/wall-like gradient scene with some invalid depth (cheap to build, not random noise)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([xx / width * 255, yy / height * 255, np.full_like(xx, 96)], axis=-1).astype(np.uint8)
    depth = (800 + 3000 * yy / height).astype(np.uint16)
    depth[: height // 10, : width // 10] = 0
    return rgb, depth


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reliability", choices=("reliable", "best_effort"), required=True)
    ap.add_argument("--seconds", type=float, default=32.0)
    ap.add_argument("--rate", type=float, default=15.0)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--rgb-topic", required=True)
    ap.add_argument("--depth-topic", required=True)
    ap.add_argument("--depth-offset", type=float, default=0.0, help="added to the depth header stamps (s)")
    ap.add_argument("--wait-subscribers", type=int, default=1)
    ap.add_argument("--stop-depth-after", type=float, default=None, help="depth stops after this many s")
    args = ap.parse_args(argv)

    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from m3l_ros.messages import image_msg, set_stamp

    rclpy.init()
    node = rclpy.create_node("m3l_test_camera")
    policy = ReliabilityPolicy.RELIABLE if args.reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    qos = QoSProfile(depth=10, reliability=policy)  # the RealSense driver's default depth
    pubs = {"rgb": node.create_publisher(Image, args.rgb_topic, qos),
            "depth": node.create_publisher(Image, args.depth_topic, qos)}
    rgb, depth = scene(args.height, args.width)
    msgs = {"rgb": image_msg(rgb, "rgb8", frame_id="camera_color_optical_frame"),
            "depth": image_msg(depth, "16UC1", frame_id="camera_color_optical_frame")}

    def ready() -> bool:
        for key, pub in pubs.items():
            topic = args.rgb_topic if key == "rgb" else args.depth_topic
            subs = node.get_subscriptions_info_by_topic(topic)
            if pub.get_subscription_count() < args.wait_subscribers or len(subs) < args.wait_subscribers:
                return False
            if policy == ReliabilityPolicy.RELIABLE and any(s.qos_profile.reliability != policy for s in subs):
                return False
        return True

    deadline = time.monotonic() + 60
    while not ready():
        if time.monotonic() > deadline:
            print(json.dumps({"error": "subscribers never matched"}), flush=True)
            return 1
        rclpy.spin_once(node, timeout_sec=0.05)
    time.sleep(0.5)  # let the match settle on both sides

    counts = {"rgb": 0, "depth": 0}
    first = last = last_depth = None
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < args.seconds:
        stamp = node.get_clock().now().nanoseconds
        first = stamp if first is None else first
        last = stamp
        set_stamp(msgs["rgb"].header, stamp)
        set_stamp(msgs["depth"].header, stamp + int(round(args.depth_offset * 1e9)))
        for key in ("rgb", "depth"):
            if key == "depth" and args.stop_depth_after is not None and time.monotonic() - t0 > args.stop_depth_after:
                continue
            pubs[key].publish(msgs[key])
            counts[key] += 1
            if key == "depth":
                last_depth = stamp
        n += 1
        next_t = t0 + n / args.rate
        while (left := next_t - time.monotonic()) > 0:
            rclpy.spin_once(node, timeout_sec=left)
    time.sleep(1.0)  # a reliable writer may still be repairing the last frames
    print(json.dumps({**counts, "first_stamp": first * 1e-9, "last_stamp": last * 1e-9,
                      "last_depth_stamp": last_depth * 1e-9}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
