"""sensor_msgs/Image <-> numpy without cv_bridge (ROS-free).

The functions take the message *fields*, so rclpy messages, rosbags messages
and plain test objects all work::

    arr = decode_image(height=m.height, width=m.width, encoding=m.encoding,
                       step=m.step, data=m.data, is_bigendian=m.is_bigendian)
    rgb = to_rgb8(arr, m.encoding)            # HxWx3 uint8, RGB order
    depth = depth_from_image(arr, m.encoding)  # HxW float32 metres, NaN invalid

Depth units come from the encoding (REP 118): ``16UC1`` is millimetres and
``32FC1`` is metres. 0, NaN and +/-Inf are invalid.

Compressed transports (``sensor_msgs/CompressedImage``, as image_transport's
``compressed`` and ``compressedDepth`` plugins publish them) are decoded with
OpenCV by :func:`decode_compressed` and :func:`decode_compressed_depth`; the
matching encoders serve tests and replays.

Every problem raises :class:`ImageCodecError` with ``field`` (the message
field at fault) and ``reason`` (a short machine-readable key used for the
node's diagnostics counters).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from m3l_core.preprocess import depth_to_metres
from m3l_core.preprocess import resize_nearest as _resize_nearest
from m3l_core.vocab import colorize  # noqa: F401  (the one colouring rule; re-exported for the node)

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
    """Old alias of ``m3l_core.preprocess.resize_nearest(arr, (height, width))``; only test_node.py still
    imports it. Remove once that test calls the m3l_core function."""
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




# -- compressed transports ------------------------------------------------------------------------
# compressed_image_transport: format "<raw encoding>; <jpeg|png> compressed <bgr8|mono8|...>"
# (older publishers send just "jpeg"/"png"). compressed_depth_image_transport: format
# "<16UC1|32FC1>; compressedDepth png", data = 12-byte ConfigHeader {int32 format (0 = INV_DEPTH);
# float32 depthQuantA, depthQuantB} + a 16-bit PNG. 16UC1 is stored as is; 32FC1 as quantized
# inverse depth q = A / d + B (truncated, 0 = invalid), decoded as d = A / (q - B).
COMPRESSED_FORMATS = ("jpeg", "png")
_DEPTH_HEADER = "<iff"  # little-endian: the plugin memcpy's the struct on x86/ARM
DEPTH_HEADER_BYTES = 12
_INV_DEPTH = 0


def _cv2():
    try:
        import cv2
    except ImportError as err:  # pragma: no cover - opencv-python-headless is in requirements/ml.txt
        raise ImageCodecError(f"compressed images need OpenCV (opencv-python-headless): {err}",
                              field="format", reason="no_decoder") from None
    return cv2


def _split_format(fmt: str) -> tuple[str | None, str]:
    """``"rgb8; jpeg compressed bgr8"`` -> (``"rgb8"``, ``"jpeg compressed bgr8"``); no ``;`` -> (None, fmt)."""
    fmt = str(fmt).strip()
    raw, sep, rest = fmt.partition(";")
    return (raw.strip(), rest.strip()) if sep else (None, fmt)


def _imdecode(payload: np.ndarray, what: str) -> np.ndarray:
    cv2 = _cv2()
    if payload.size == 0:
        raise ImageCodecError(f"{what}: data is empty", field="data", reason="empty_data")
    try:
        img = cv2.imdecode(payload, cv2.IMREAD_UNCHANGED)
    except cv2.error as err:
        raise ImageCodecError(f"{what}: OpenCV could not decode the data ({err})", field="data",
                              reason="corrupt_data") from None
    if img is None or img.size == 0:
        raise ImageCodecError(f"{what}: data ({payload.size} bytes) is not a decodable image (truncated or corrupt)",
                              field="data", reason="corrupt_data")
    return img


def decode_compressed(fmt: str, data: Any) -> tuple[np.ndarray, str]:
    """A ``.../compressed`` CompressedImage (jpeg or png) -> (array, encoding of that array).

    Colour comes back as ``rgb8`` or ``bgr8`` (alpha, lost by JPEG/PNG-as-BGR, is dropped),
    grey as ``mono8``, 16-bit grey as ``16UC1``. The raw encoding before ``;`` decides the
    channel order, as the image_transport subscriber does.
    """
    raw, rest = _split_format(fmt)
    kind = rest.split()[0].lower() if rest else ""
    if kind == "jpg":
        kind = "jpeg"
    if kind not in COMPRESSED_FORMATS or (raw is not None and "compressed" not in rest and rest.lower() != kind):
        raise ImageCodecError(
            f"format {fmt!r} is not a compressed_image_transport format; expected e.g. 'rgb8; jpeg compressed bgr8', "
            "'png' or 'jpeg' (compressedDepth goes to the depth decoder)", field="format", reason="unsupported_format")
    if raw is not None and raw not in RGB_ENCODINGS + ("16UC1", "mono16"):
        raise ImageCodecError(f"format {fmt!r}: raw encoding {raw!r} is not supported; expected one of "
                              f"{', '.join(RGB_ENCODINGS + ('16UC1', 'mono16'))}", field="format",
                              reason="unsupported_encoding")
    img = _imdecode(_as_bytes(data), f"compressed image ({fmt})")
    channels = 1 if img.ndim == 2 else img.shape[2]
    if img.dtype == np.uint16 and channels == 1:
        if raw not in (None, "16UC1", "mono16"):
            raise ImageCodecError(f"format {fmt!r} says {raw} but the data holds a 16-bit grey image",
                                  field="format", reason="format_mismatch")
        return img, "16UC1"
    if img.dtype != np.uint8 or channels not in (1, 3, 4):
        raise ImageCodecError(f"compressed image has {channels} channel(s) of {img.dtype}; expected 8-bit grey or "
                              "colour", field="data", reason="unsupported_pixels")
    if channels == 4:  # a PNG with alpha: BGRA from OpenCV
        img = img[..., :3]
        channels = 3
    if channels == 1:
        if raw not in (None, "mono8"):
            raise ImageCodecError(f"format {fmt!r} says {raw} but the data holds a grey image",
                                  field="format", reason="format_mismatch")
        return img, "mono8"
    if raw in ("mono8", "16UC1", "mono16"):
        raise ImageCodecError(f"format {fmt!r} says {raw} but the data holds a colour image",
                              field="format", reason="format_mismatch")
    img = np.ascontiguousarray(img)
    # OpenCV hands out BGR. A "compressed bgr" payload was converted to BGR before encoding;
    # otherwise the payload holds the raw bytes in the raw encoding's order.
    if raw is None or "compressed bgr" in rest:
        return (np.ascontiguousarray(img[..., ::-1]), "rgb8") if raw in ("rgb8", "rgba8") else (img, "bgr8")
    return img, ("rgb8" if raw in ("rgb8", "rgba8") else "bgr8")


def decode_compressed_depth(fmt: str, data: Any) -> tuple[np.ndarray, str]:
    """A ``.../compressedDepth`` CompressedImage -> (``16UC1`` uint16 array | ``32FC1`` float32 metres, encoding).

    32FC1 pixels stored as 0 (NaN, beyond the publisher's ``depth_max``) come back as NaN.
    """
    raw, rest = _split_format(fmt)
    if raw is None:  # the oldest publishers sent only the encoding (always PNG)
        raw, rest = str(fmt).strip(), "compressedDepth"
    words = rest.split()
    if not words or words[0] != "compressedDepth" or (len(words) > 1 and words[1] != "png"):
        why = ("RVL is not supported (publish with format png)" if words[1:2] == ["rvl"]
               else "expected '<16UC1|32FC1>; compressedDepth png'")
        raise ImageCodecError(f"format {fmt!r}: {why}", field="format", reason="unsupported_format")
    if raw not in DEPTH_ENCODINGS:
        raise ImageCodecError(f"format {fmt!r}: depth encoding {raw!r} is not supported; expected "
                              f"{' or '.join(DEPTH_ENCODINGS)}", field="format", reason="unsupported_encoding")
    buf = _as_bytes(data)
    if buf.size <= DEPTH_HEADER_BYTES:
        raise ImageCodecError(f"compressedDepth data has {buf.size} bytes; it needs a {DEPTH_HEADER_BYTES}-byte "
                              "header and a PNG", field="data", reason="data_too_short")
    import struct

    kind, quant_a, quant_b = struct.unpack(_DEPTH_HEADER, buf[:DEPTH_HEADER_BYTES].tobytes())
    if kind != _INV_DEPTH:
        raise ImageCodecError(f"compressedDepth header format is {kind}, expected {_INV_DEPTH} (INV_DEPTH)",
                              field="data", reason="bad_header")
    if raw == "32FC1" and not (np.isfinite(quant_a) and np.isfinite(quant_b) and quant_a > 0):
        raise ImageCodecError(f"compressedDepth header has unusable quantization A={quant_a} B={quant_b}",
                              field="data", reason="bad_header")
    img = _imdecode(buf[DEPTH_HEADER_BYTES:], f"compressedDepth image ({fmt})")
    if img.ndim != 2 or img.dtype != np.uint16:
        raise ImageCodecError(f"compressedDepth PNG holds {img.dtype} with shape {img.shape}; expected 16-bit grey",
                              field="data", reason="unsupported_pixels")
    if raw == "16UC1":
        return img, "16UC1"
    q = img.astype(np.float32)
    with np.errstate(divide="ignore"):
        depth = np.where(img != 0, np.float32(quant_a) / (q - np.float32(quant_b)), np.float32(np.nan))
    return depth.astype(np.float32, copy=False), "32FC1"


def encode_compressed(arr: np.ndarray, encoding: str, fmt: str = "jpeg", *, jpeg_quality: int = 95,
                      png_level: int = 3) -> tuple[str, bytes]:
    """Array -> (format, data) as compressed_image_transport publishes it (colour goes as BGR)."""
    cv2 = _cv2()
    fmt = {"jpg": "jpeg"}.get(fmt, fmt)
    if fmt not in COMPRESSED_FORMATS:
        raise ImageCodecError(f"compressed format must be jpeg or png, got {fmt!r}", field="format",
                              reason="unsupported_format")
    dtype, channels = _format(encoding, RGB_ENCODINGS + ("16UC1",))
    arr = np.asarray(arr)
    if arr.dtype != dtype or arr.ndim != (2 if channels == 1 else 3) or (channels > 1 and arr.shape[2] != channels):
        raise ImageCodecError(f"{encoding} needs a {'HxW' if channels == 1 else f'HxWx{channels}'} {dtype} array, "
                              f"got {arr.dtype} {arr.shape}", field="data", reason="bad_array")
    if encoding == "16UC1" and fmt == "jpeg":
        raise ImageCodecError("16UC1 cannot be stored as JPEG; use png", field="format", reason="unsupported_format")
    if channels == 1:
        img, target = arr, ("mono16" if encoding == "16UC1" else "mono8")
    else:
        img = to_rgb8(arr, encoding)[..., ::-1]  # OpenCV writes BGR
        target = "bgr8"
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if fmt == "jpeg" else [
        cv2.IMWRITE_PNG_COMPRESSION, int(png_level)]
    ok, out = cv2.imencode(f".{'jpg' if fmt == 'jpeg' else 'png'}", np.ascontiguousarray(img), params)
    if not ok:
        raise ImageCodecError(f"OpenCV could not encode {encoding} as {fmt}", field="data", reason="encode_failed")
    return f"{encoding}; {fmt} compressed {target}", out.tobytes()


def encode_compressed_depth(arr: np.ndarray, encoding: str, *, depth_max: float = 10.0,
                            depth_quantization: float = 100.0, png_level: int = 3) -> tuple[str, bytes]:
    """Depth -> (format, data) as compressed_depth_image_transport (PNG) publishes it.

    ``depth_max`` (m) and ``depth_quantization`` are the plugin's parameters (defaults 10 and
    100). Like the plugin, 16UC1 values above ``depth_max`` mm become 0, and 32FC1 pixels at or
    past ``depth_max`` (or invalid: 0, NaN, Inf) are stored as 0. A 32FC1 round trip returns
    d' with 0 <= d' - d < d^2 / (A - d), A = q (q + 1): about 1.6 mm at 4 m.
    """
    import struct

    cv2 = _cv2()
    dtype, _ = _format(encoding, DEPTH_ENCODINGS)
    arr = np.asarray(arr)
    if arr.dtype != dtype or arr.ndim != 2 or arr.size == 0:
        raise ImageCodecError(f"{encoding} depth needs a non-empty HxW {dtype} array, got {arr.dtype} {arr.shape}",
                              field="data", reason="bad_array")
    if encoding == "16UC1":
        img = np.where(arr > np.uint16(min(65535, int(depth_max * 1000.0))), np.uint16(0), arr).astype(np.uint16)
        quant_a = quant_b = 0.0
    else:
        quant_a = float(np.float32(depth_quantization * (depth_quantization + 1.0)))
        quant_b = float(np.float32(1.0 - quant_a / depth_max))
        valid = np.isfinite(arr) & (arr > 0) & (arr < depth_max)
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.float32(quant_a) / arr + np.float32(quant_b)
        img = np.where(valid, np.clip(np.floor(q), 0, 65535), 0).astype(np.uint16)
    ok, png = cv2.imencode(".png", np.ascontiguousarray(img), [cv2.IMWRITE_PNG_COMPRESSION, int(png_level)])
    if not ok:
        raise ImageCodecError(f"OpenCV could not encode {encoding} depth as PNG", field="data", reason="encode_failed")
    header = struct.pack(_DEPTH_HEADER, _INV_DEPTH, quant_a, quant_b)
    return f"{encoding}; compressedDepth png", header + png.tobytes()
