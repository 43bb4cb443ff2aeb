"""What segment_node does with one input message, without ROS: size cap, decode, depth rule, size match.

The functions take message-like objects (rclpy messages or anything with the same fields):
``sensor_msgs/Image`` fields for ``raw`` and ``sensor_msgs/CompressedImage`` fields
(``format``, ``data``) for ``compressed``. Every problem raises
:class:`~m3l_ros.image_codec.ImageCodecError` naming the field, with a short ``reason`` that
becomes the diagnostics counter ``rejected.<modality>.<reason>``.
"""
from __future__ import annotations

import struct
from typing import Any

import numpy as np

from m3l_core.preprocess import depth_to_metres, resize_nearest
from m3l_ros.image_codec import (
    DEPTH_ENCODINGS,
    RGB_ENCODINGS,
    ImageCodecError,
    decode_compressed,
    decode_compressed_depth,
    decode_message,
    to_rgb8,
)

# image_transport's topic names for the two compressed plugins, below the raw topic
COMPRESSED_SUFFIX = {"rgb": "compressed", "depth": "compressedDepth"}
DEPTH_HEADER_BYTES = 12  # compressed_depth_image_transport's ConfigHeader before the PNG
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def compressed_size(data: Any, offset: int = 0) -> tuple[int, int] | None:
    """(height, width) from a PNG or JPEG header at ``offset`` without decoding the pixels; None if not found."""
    buf = bytes(memoryview(data).cast("B")[offset:offset + 65536])
    if buf[:8] == b"\x89PNG\r\n\x1a\n" and len(buf) >= 24 and buf[12:16] == b"IHDR":
        width, height = struct.unpack(">II", buf[16:24])
        return height, width
    if buf[:2] == b"\xff\xd8":
        i = 2
        while i + 9 <= len(buf):
            if buf[i] != 0xFF:
                return None
            marker = buf[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            (length,) = struct.unpack(">H", buf[i + 2:i + 4])
            if marker in _JPEG_SOF:
                height, width = struct.unpack(">HH", buf[i + 5:i + 9])
                return height, width
            i += 2 + length
    return None


def check_pixels(height: int, width: int, max_pixels: int, *, field: str) -> None:
    """Reject an image larger than ``max_pixels`` before anything is allocated for it."""
    if height * width > max_pixels:
        raise ImageCodecError(f"{width}x{height} = {height * width} pixels exceeds max_input_pixels={max_pixels}",
                              field=field, reason="too_many_pixels")


def _compressed_array(modality: str, msg: Any, max_pixels: int) -> tuple[np.ndarray, str]:
    data = msg.data
    size = compressed_size(data, DEPTH_HEADER_BYTES if modality == "depth" else 0)
    if size is not None:
        check_pixels(*size, max_pixels, field="data (compressed image header)")
    decode = decode_compressed_depth if modality == "depth" else decode_compressed
    arr, encoding = decode(msg.format, data)
    check_pixels(arr.shape[0], arr.shape[1], max_pixels, field="data")
    return arr, encoding


def decode_rgb(msg: Any, *, transport: str, max_pixels: int) -> np.ndarray:
    """An RGB message -> HxWx3 uint8 in RGB order."""
    if transport == "compressed":
        arr, encoding = _compressed_array("rgb", msg, max_pixels)
        if encoding not in RGB_ENCODINGS:
            raise ImageCodecError(f"compressed RGB decodes to {encoding}; expected one of {', '.join(RGB_ENCODINGS)}",
                                  field="format", reason="unsupported_encoding")
        return to_rgb8(arr, encoding)
    check_pixels(msg.height, msg.width, max_pixels, field="height*width")
    return to_rgb8(decode_message(msg, allowed=RGB_ENCODINGS), msg.encoding)


def decode_depth(msg: Any, *, transport: str, max_pixels: int, max_depth: float) -> np.ndarray:
    """A depth message -> HxW float32 metres, NaN where invalid (:func:`m3l_core.preprocess.depth_to_metres`)."""
    if transport == "compressed":
        arr, _ = _compressed_array("depth", msg, max_pixels)
    else:
        check_pixels(msg.height, msg.width, max_pixels, field="height*width")
        arr = decode_message(msg, allowed=DEPTH_ENCODINGS)
    return depth_to_metres(arr, max_depth=max_depth or None)


def match_depth_size(depth: np.ndarray, rgb_shape: tuple[int, ...]) -> tuple[np.ndarray, bool]:
    """Policy for depth of another size than RGB: resize it to the RGB size (nearest). (depth, resized?)"""
    if depth.shape == tuple(rgb_shape[:2]):
        return depth, False
    return resize_nearest(depth, (rgb_shape[0], rgb_shape[1])), True
