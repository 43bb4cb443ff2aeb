"""The one place that assembles sensor_msgs messages from numpy arrays (tests, demo, replay, benchmarks).

Pixel packing is :mod:`m3l_ros.image_codec`'s job (ROS-free); this module only fills the
rclpy message fields around it::

    msg = image_msg(rgb, "rgb8", stamp_ns=now_ns, frame_id="camera_color_optical_frame")
    msg = compressed_msg(rgb, "rgb8", "jpeg", stamp_ns=now_ns)
    msg = compressed_depth_msg(depth_mm, "16UC1", stamp_ns=now_ns)
"""
from __future__ import annotations

from typing import Any

import numpy as np

from m3l_ros.image_codec import encode_compressed, encode_compressed_depth, encode_image

NS = 1_000_000_000


def to_ns(stamp: float | int) -> int:
    """Seconds (float) or nanoseconds (int) -> nanoseconds."""
    return int(stamp) if isinstance(stamp, (int, np.integer)) else int(round(float(stamp) * NS))


def set_stamp(header: Any, stamp: float | int, frame_id: str | None = None) -> Any:
    """Fill ``header.stamp`` from seconds (float) or nanoseconds (int).

    Float seconds split as ``sec = int(s)``, ``nanosec = round((s - sec) * 1e9)``, so that
    ``sec + nanosec * 1e-9`` gives back the same float that was sent (tests compare stamps).
    """
    if isinstance(stamp, (int, np.integer)):
        sec, nsec = divmod(int(stamp), NS)
    else:
        sec = int(stamp)
        nsec = int(round((float(stamp) - sec) * 1e9))
        sec, nsec = sec + nsec // NS, nsec % NS
    header.stamp.sec, header.stamp.nanosec = sec, nsec
    if frame_id is not None:
        header.frame_id = frame_id
    return header


def stamp_ns(header: Any) -> int:
    """``header.stamp`` -> nanoseconds."""
    return header.stamp.sec * NS + header.stamp.nanosec


def image_msg(arr: np.ndarray | None, encoding: str, *, stamp: float | int = 0, frame_id: str = "",
              **override: Any):
    """A sensor_msgs/Image (little-endian, unpadded). ``arr=None`` leaves the size and data empty;
    ``override`` sets fields afterwards (tests use it to build malformed messages)."""
    from sensor_msgs.msg import Image

    msg = Image(encoding=encoding, is_bigendian=0)
    set_stamp(msg.header, stamp, frame_id)
    if arr is not None:
        msg.step, msg.data = encode_image(arr, encoding)
        msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    for key, value in override.items():
        setattr(msg, key, value)
    return msg


def compressed_msg(arr: np.ndarray, encoding: str, fmt: str = "jpeg", *, stamp: float | int = 0,
                   frame_id: str = "", **kwargs: Any):
    """A sensor_msgs/CompressedImage as image_transport's ``compressed`` plugin publishes it."""
    from sensor_msgs.msg import CompressedImage

    msg = CompressedImage()
    set_stamp(msg.header, stamp, frame_id)
    msg.format, msg.data = encode_compressed(arr, encoding, fmt, **kwargs)
    return msg


def compressed_depth_msg(arr: np.ndarray, encoding: str, *, stamp: float | int = 0, frame_id: str = "",
                         **kwargs: Any):
    """A sensor_msgs/CompressedImage as image_transport's ``compressedDepth`` plugin publishes it."""
    from sensor_msgs.msg import CompressedImage

    msg = CompressedImage()
    set_stamp(msg.header, stamp, frame_id)
    msg.format, msg.data = encode_compressed_depth(arr, encoding, **kwargs)
    return msg


def camera_info_msg(height: int, width: int, *, stamp: float | int = 0, frame_id: str = "",
                    fx: float | None = None):
    """A pinhole CameraInfo (no distortion); ``fx`` defaults to a 60-degree horizontal field of view."""
    from sensor_msgs.msg import CameraInfo

    f = float(fx) if fx is not None else width / (2 * np.tan(np.radians(30)))
    cx, cy = (width - 1) / 2, (height - 1) / 2
    msg = CameraInfo(height=int(height), width=int(width), distortion_model="plumb_bob", d=[0.0] * 5)
    msg.k = [f, 0.0, cx, 0.0, f, cy, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [f, 0.0, cx, 0.0, 0.0, f, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    set_stamp(msg.header, stamp, frame_id)
    return msg
