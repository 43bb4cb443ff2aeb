"""sensor_msgs/Image <-> numpy without cv_bridge (ROS-free).

The functions take the message *fields*, so rclpy messages, rosbags messages
and plain test objects all work::

    arr = decode_image(height=m.height, width=m.width, encoding=m.encoding,
                       step=m.step, data=m.data, is_bigendian=m.is_bigendian)
    rgb = to_rgb8(arr, m.encoding)            # HxWx3 uint8, RGB order
    depth = depth_from_image(arr, m.encoding)  # HxW float32 metres, NaN invalid

Depth units come from the encoding (REP 118): ``16UC1`` is millimetres and
``32FC1`` is metres. 0, NaN and +/-Inf are invalid.

Every problem raises :class:`ImageCodecError` with ``field`` (the message
field at fault) and ``reason`` (a short machine-readable key used for the
node's diagnostics counters).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from m3l_core.preprocess import depth_to_metres
from m3l_core.preprocess import resize_nearest as _resize_nearest

RGB_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
DEPTH_ENCODINGS = ("16UC1", "32FC1")
LABEL_ENCODINGS = ("mono8", "16UC1")

# encoding -> (dtype, channels). Byte order is applied separately (is_bigendian).
_FORMATS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
}
SUPPORTED_ENCODINGS = tuple(_FORMATS)


class ImageCodecError(ValueError):
    """An image message that cannot be converted; ``field`` names the culprit."""

    def __init__(self, message: str, *, field: str, reason: str) -> None:
        super().__init__(message)
        self.field = field
        self.reason = reason


def bytes_per_pixel(encoding: str) -> int:
    dtype, channels = _format(encoding)
    return dtype.itemsize * channels


def _format(encoding: str, allowed: tuple[str, ...] | None = None) -> tuple[np.dtype, int]:
    allowed = SUPPORTED_ENCODINGS if allowed is None else allowed
    if encoding not in allowed or encoding not in _FORMATS:
        raise ImageCodecError(
            f"encoding {encoding!r} is not supported here; expected one of {', '.join(allowed)}",
            field="encoding", reason="unsupported_encoding")
    return _FORMATS[encoding]


def _as_bytes(data: Any) -> np.ndarray:
    """Any buffer (bytes, array.array('B'), uint8 ndarray, list of ints) -> flat uint8 view."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    except TypeError:
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def decode_image(
    *,
    height: int,
    width: int,
    encoding: str,
    step: int,
    data: Any,
    is_bigendian: int = 0,
    allowed: tuple[str, ...] | None = None,
) -> np.ndarray:
    """Message fields -> a new native-endian array, HxW (1 channel) or HxWxC.

    Honours a padded row ``step``. The result never aliases ``data``.
    ``allowed`` restricts the accepted encodings (e.g. ``DEPTH_ENCODINGS``).
    """
    height, width, step = int(height), int(width), int(step)
    dtype, channels = _format(encoding, allowed)
    if height <= 0 or width <= 0:
        raise ImageCodecError(f"image is empty: height={height} width={width}", field="height/width", reason="zero_size")
    row_bytes = width * dtype.itemsize * channels
    if step < row_bytes:
        raise ImageCodecError(
            f"step={step} is smaller than width*bytes_per_pixel={row_bytes} for {encoding}",
            field="step", reason="bad_step")
    buf = _as_bytes(data)
    if buf.size < step * height:
        raise ImageCodecError(
            f"data has {buf.size} bytes, fewer than step*height={step}*{height}={step * height}",
            field="data", reason="data_too_short")
    rows = buf[: step * height].reshape(height, step)[:, :row_bytes]
    wire = dtype.newbyteorder(">" if is_bigendian else "<")
    arr = np.ascontiguousarray(rows).view(wire).astype(dtype.newbyteorder("="), copy=True)
    return arr.reshape(height, width) if channels == 1 else arr.reshape(height, width, channels)


def decode_message(msg: Any, *, allowed: tuple[str, ...] | None = None) -> np.ndarray:
    """:func:`decode_image` on anything with Image's fields (rclpy or rosbags)."""
    return decode_image(height=msg.height, width=msg.width, encoding=msg.encoding, step=msg.step,
                        data=msg.data, is_bigendian=getattr(msg, "is_bigendian", 0), allowed=allowed)


def encode_image(arr: np.ndarray, encoding: str) -> tuple[int, bytes]:
    """Array -> (step, little-endian data bytes) for an Image message (is_bigendian=0)."""
    dtype, channels = _format(encoding)
    arr = np.asarray(arr)
    if channels == 1 and arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    want_ndim = 2 if channels == 1 else 3
    if arr.ndim != want_ndim or (channels > 1 and arr.shape[2] != channels):
        shape = "HxW" if channels == 1 else f"HxWx{channels}"
        raise ImageCodecError(f"{encoding} needs a {shape} array, got shape {arr.shape}", field="data", reason="bad_array")
    if arr.dtype != dtype:
        raise ImageCodecError(f"{encoding} needs dtype {dtype}, got {arr.dtype}", field="data", reason="bad_array")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageCodecError(f"cannot encode an empty image {arr.shape}", field="height/width", reason="zero_size")
    out = np.ascontiguousarray(arr, dtype=dtype.newbyteorder("<"))
    return int(out.strides[0]), out.tobytes()


def to_rgb8(arr: np.ndarray, encoding: str) -> np.ndarray:
    """A decoded colour/mono image -> HxWx3 uint8 in RGB order."""
    _format(encoding, RGB_ENCODINGS)
    if encoding == "rgb8":
        out = arr
    elif encoding == "bgr8":
        out = arr[..., ::-1]
    elif encoding == "rgba8":
        out = arr[..., :3]
    elif encoding == "bgra8":
        out = arr[..., 2::-1]
    else:  # mono8
        out = np.repeat(arr.reshape(arr.shape[0], arr.shape[1], 1), 3, axis=2)
    return np.ascontiguousarray(out, dtype=np.uint8)


def depth_from_image(arr: np.ndarray, encoding: str) -> np.ndarray:
    """A decoded depth image -> HxW float32 metres with NaN for invalid pixels."""
    dtype, _ = _format(encoding, DEPTH_ENCODINGS)
    arr = np.asarray(arr)
    if arr.dtype != dtype:
        raise ImageCodecError(f"{encoding} depth must have dtype {dtype}, got {arr.dtype}", field="data", reason="bad_array")
    return depth_to_metres(arr)


def resize_nearest(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize (pixel centres), for depth and label maps: the one training uses."""
    return _resize_nearest(arr, (height, width))


def label_encoding(num_classes: int) -> str:
    """``mono8`` holds ids 0..254; more than 255 classes need ``16UC1``."""
    return "mono8" if num_classes <= 255 else "16UC1"


def encode_labels(labels: np.ndarray, num_classes: int) -> tuple[str, int, bytes]:
    """HxW integer class ids -> (encoding, step, data)."""
    enc = label_encoding(num_classes)
    dtype = np.uint8 if enc == "mono8" else np.uint16
    step, data = encode_image(np.asarray(labels).astype(dtype, copy=False), enc)
    return enc, step, data


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """HxW class ids -> HxWx3 uint8 with the checkpoint palette (ids past the palette are black)."""
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    lut = np.zeros((max(len(palette), int(labels.max(initial=0)) + 1), 3), np.uint8)
    lut[: len(palette)] = palette
    return lut[np.asarray(labels, dtype=np.int64)]
