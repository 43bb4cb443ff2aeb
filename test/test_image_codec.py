"""ROS-free tests of m3l_ros.image_codec: every encoding round-trips, padded steps, bad input."""
from __future__ import annotations

import array
from types import SimpleNamespace

import numpy as np
import pytest

from m3l_ros.image_codec import (
    DEPTH_ENCODINGS,
    LABEL_ENCODINGS,
    RGB_ENCODINGS,
    ImageCodecError,
    bytes_per_pixel,
    colorize,
    decode_image,
    decode_message,
    depth_from_image,
    encode_image,
    encode_labels,
    to_rgb8,
)

H, W = 5, 7


def _sample(encoding: str, rng: np.random.Generator) -> np.ndarray:
    if encoding in ("rgb8", "bgr8"):
        return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    if encoding in ("rgba8", "bgra8"):
        return rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
    if encoding == "mono8":
        return rng.integers(0, 256, (H, W), dtype=np.uint8)
    if encoding == "16UC1":
        return rng.integers(0, 65536, (H, W), dtype=np.uint16)
    return rng.normal(2.0, 1.0, (H, W)).astype(np.float32)


ALL = sorted(set(RGB_ENCODINGS + DEPTH_ENCODINGS + LABEL_ENCODINGS))


@pytest.mark.parametrize("encoding", ALL)
def test_every_encoding_round_trips(encoding):
    arr = _sample(encoding, np.random.default_rng(0))
    step, data = encode_image(arr, encoding)
    assert step == W * bytes_per_pixel(encoding)
    assert len(data) == step * H
    out = decode_image(height=H, width=W, encoding=encoding, step=step, data=data)
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("encoding", ALL)
@pytest.mark.parametrize("container", ["bytes", "array", "ndarray"])
def test_padded_step_round_trips(encoding, container):
    arr = _sample(encoding, np.random.default_rng(1))
    step, data = encode_image(arr, encoding)
    pad = 5  # odd padding, not a multiple of the item size
    rows = [data[i * step:(i + 1) * step] + b"\xab" * pad for i in range(H)]
    padded = b"".join(rows) + b"\xcd" * 3  # trailing slack is allowed too
    if container == "array":
        padded = array.array("B", padded)  # what rclpy gives for uint8[]
    elif container == "ndarray":
        padded = np.frombuffer(padded, np.uint8).copy()  # what rosbags gives
    out = decode_image(height=H, width=W, encoding=encoding, step=step + pad, data=padded)
    np.testing.assert_array_equal(out, arr)


def test_big_endian_depth_is_converted_to_native():
    arr = np.array([[1, 2, 1000], [65535, 0, 258]], np.uint16)
    out = decode_image(height=2, width=3, encoding="16UC1", step=6, data=arr.astype(">u2").tobytes(), is_bigendian=1)
    np.testing.assert_array_equal(out, arr)
    assert out.dtype == np.uint16 and out.dtype.isnative
    f = np.array([[1.5, -2.25]], np.float32)
    out = decode_image(height=1, width=2, encoding="32FC1", step=8, data=f.astype(">f4").tobytes(), is_bigendian=1)
    np.testing.assert_array_equal(out, f)


def test_decode_copies_instead_of_aliasing():
    buf = bytearray(np.arange(12, dtype=np.uint8).tobytes())
    out = decode_image(height=3, width=4, encoding="mono8", step=4, data=buf)
    buf[0] = 99
    assert out[0, 0] == 0
    out[1, 1] = 77
    assert buf[5] == 5


def test_decode_message_reads_message_fields():
    arr = _sample("bgr8", np.random.default_rng(2))
    step, data = encode_image(arr, "bgr8")
    msg = SimpleNamespace(height=H, width=W, encoding="bgr8", step=step, data=data, is_bigendian=0)
    np.testing.assert_array_equal(decode_message(msg), arr)
    with pytest.raises(ImageCodecError) as e:
        decode_message(msg, allowed=DEPTH_ENCODINGS)
    assert e.value.field == "encoding" and e.value.reason == "unsupported_encoding"
    assert "16UC1" in str(e.value)


@pytest.mark.parametrize(
    "kwargs, field, reason",
    [
        (dict(height=2, width=2, encoding="yuv422", step=4, data=bytes(8)), "encoding", "unsupported_encoding"),
        (dict(height=0, width=4, encoding="rgb8", step=12, data=b""), "height/width", "zero_size"),
        (dict(height=3, width=0, encoding="mono8", step=0, data=b""), "height/width", "zero_size"),
        (dict(height=2, width=4, encoding="rgb8", step=11, data=bytes(24)), "step", "bad_step"),
        (dict(height=2, width=4, encoding="16UC1", step=8, data=bytes(15)), "data", "data_too_short"),
        (dict(height=4, width=4, encoding="32FC1", step=20, data=bytes(64)), "data", "data_too_short"),
    ],
)
def test_bad_messages_raise_with_field_and_reason(kwargs, field, reason):
    with pytest.raises(ImageCodecError) as e:
        decode_image(**kwargs)
    assert isinstance(e.value, ValueError)
    assert e.value.field == field and e.value.reason == reason
    assert field.split("/")[0] in str(e.value) or kwargs["encoding"] in str(e.value)


def test_encode_rejects_wrong_shape_and_dtype():
    with pytest.raises(ImageCodecError, match="HxWx3"):
        encode_image(np.zeros((2, 2), np.uint8), "rgb8")
    with pytest.raises(ImageCodecError, match="uint16"):
        encode_image(np.zeros((2, 2), np.int32), "16UC1")
    with pytest.raises(ImageCodecError, match="not supported"):
        encode_image(np.zeros((2, 2), np.uint8), "bayer_rggb8")


def test_to_rgb8_converts_every_colour_encoding():
    rgb = np.array([[[10, 20, 30], [40, 50, 60]]], np.uint8)
    np.testing.assert_array_equal(to_rgb8(rgb, "rgb8"), rgb)
    np.testing.assert_array_equal(to_rgb8(rgb[..., ::-1].copy(), "bgr8"), rgb)
    rgba = np.concatenate([rgb, np.full((1, 2, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(to_rgb8(rgba, "rgba8"), rgb)
    bgra = np.concatenate([rgb[..., ::-1], np.full((1, 2, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(to_rgb8(bgra, "bgra8"), rgb)
    mono = np.array([[0, 200]], np.uint8)
    out = to_rgb8(mono, "mono8")
    assert out.shape == (1, 2, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 1], [200, 200, 200])
    with pytest.raises(ImageCodecError):
        to_rgb8(np.zeros((1, 2), np.uint16), "16UC1")


def test_depth_units_come_from_the_encoding():
    mm = np.array([[0, 1000, 2500, 65535]], np.uint16)
    out = depth_from_image(mm, "16UC1")
    assert out.dtype == np.float32
    assert np.isnan(out[0, 0])
    np.testing.assert_allclose(out[0, 1:3], [1.0, 2.5], rtol=1e-6)
    assert np.isnan(out[0, 3])  # 65535 is the driver's "no reading" (m3l_core.preprocess.depth_to_metres)
    m = np.array([[0.0, np.nan, np.inf, -np.inf, 1.25, -1.0]], np.float32)
    out = depth_from_image(m, "32FC1")
    assert np.isnan(out[0, :4]).all() and np.isnan(out[0, 5])
    assert out[0, 4] == pytest.approx(1.25)
    with pytest.raises(ImageCodecError):
        depth_from_image(mm, "32FC1")  # dtype does not match the encoding
    with pytest.raises(ImageCodecError):
        depth_from_image(mm, "mono8")  # not a depth encoding


def test_labels_switch_to_16uc1_past_255_classes_and_colorize():
    labels = np.array([[0, 1], [4, 2]], np.int64)
    enc, step, data = encode_labels(labels, num_classes=5)
    assert enc == "mono8" and step == 2
    np.testing.assert_array_equal(decode_image(height=2, width=2, encoding=enc, step=step, data=data), labels)
    enc, step, data = encode_labels(np.array([[300, 0]]), num_classes=400)
    assert enc == "16UC1" and step == 4
    assert decode_image(height=1, width=2, encoding=enc, step=step, data=data)[0, 0] == 300
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]], np.uint8)
    col = colorize(labels, palette)
    assert col.shape == (2, 2, 3) and col.dtype == np.uint8
    np.testing.assert_array_equal(col[1, 0], [9, 9, 9])
    np.testing.assert_array_equal(col[1, 1], [0, 255, 0])


# -- compressed transports (cv2 encodes, as image_transport's plugins do) -------------------------
from m3l_ros.image_codec import (  # noqa: E402
    DEPTH_HEADER_BYTES, decode_compressed, decode_compressed_depth, encode_compressed, encode_compressed_depth)


def _scene(h: int = 48, w: int = 64) -> np.ndarray:
    """A smooth colour image (JPEG-friendly) with a few hard edges."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], axis=2).astype(np.uint8)
    img[h // 4: h // 2, w // 4: w // 2] = (200, 30, 90)
    return img


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8", "16UC1"])
def test_png_round_trips_exactly(encoding):
    rng = np.random.default_rng(3)
    arr = {"rgb8": rng.integers(0, 256, (9, 11, 3), dtype=np.uint8),
           "bgr8": rng.integers(0, 256, (9, 11, 3), dtype=np.uint8),
           "mono8": rng.integers(0, 256, (9, 11), dtype=np.uint8),
           "16UC1": rng.integers(0, 65536, (9, 11), dtype=np.uint16)}[encoding]
    fmt, data = encode_compressed(arr, encoding, "png")
    assert fmt.startswith(f"{encoding}; png compressed ") and data[:4] == b"\x89PNG"
    out, enc = decode_compressed(fmt, data)
    assert enc == encoding and out.dtype == arr.dtype
    np.testing.assert_array_equal(out, arr)


def test_png_colour_order_follows_the_raw_encoding():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    fmt, data = encode_compressed(rgb, "rgb8", "png")
    assert fmt == "rgb8; png compressed bgr8"
    import cv2

    assert tuple(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)[0, 0]) == (0, 0, 255)  # BGR
    out, enc = decode_compressed(fmt, data)
    assert enc == "rgb8" and tuple(out[0, 0]) == (255, 0, 0)
    # A legacy publisher's bare "png" is BGR (OpenCV's order) and says so.
    out, enc = decode_compressed("png", data)
    assert enc == "bgr8" and tuple(to_rgb8(out, enc)[0, 0]) == (255, 0, 0)
    # rgba8 loses its alpha channel; the colour survives.
    rgba = np.concatenate([rgb, np.full((2, 3, 1), 7, np.uint8)], axis=2)
    out, enc = decode_compressed(*encode_compressed(rgba, "rgba8", "png"))
    assert enc == "rgb8" and np.array_equal(out, rgb)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8"])
def test_jpeg_is_close(encoding):
    img = _scene()
    arr = img if encoding != "mono8" else img[..., 1].copy()
    fmt, data = encode_compressed(arr, encoding, "jpeg", jpeg_quality=95)
    assert data[:3] == b"\xff\xd8\xff" and len(data) < arr.nbytes
    out, enc = decode_compressed(fmt, data)
    assert enc == encoding and out.shape == arr.shape
    err = out.astype(np.float64) - arr.astype(np.float64)
    psnr = 10 * np.log10(255.0 ** 2 / np.mean(err ** 2))
    assert np.abs(err).mean() < 3.0 and psnr > 32.0, psnr


def test_compressed_depth_16uc1_is_exact_and_clips_at_depth_max():
    rng = np.random.default_rng(4)
    mm = rng.integers(0, 9000, (12, 16), dtype=np.uint16)
    mm[0, :3] = (0, 9999, 65535)
    fmt, data = encode_compressed_depth(mm, "16UC1", depth_max=10.0)
    assert fmt == "16UC1; compressedDepth png"
    assert data[DEPTH_HEADER_BYTES:DEPTH_HEADER_BYTES + 4] == b"\x89PNG"
    out, enc = decode_compressed_depth(fmt, data)
    assert enc == "16UC1" and out.dtype == np.uint16
    expect = mm.copy()
    expect[0, 2] = 0  # 65535 mm is past depth_max (10 m): the plugin stores 0 (invalid)
    np.testing.assert_array_equal(out, expect)
    assert depth_from_image(out, enc)[0, 1] == pytest.approx(9.999)


def test_compressed_depth_32fc1_within_the_quantization_error():
    rng = np.random.default_rng(5)
    d = rng.uniform(0.2, 9.9, (30, 40)).astype(np.float32)
    d[0, :4] = (np.nan, 0.0, 10.5, np.inf)  # invalid or past depth_max -> NaN
    fmt, data = encode_compressed_depth(d, "32FC1", depth_max=10.0, depth_quantization=100.0)
    assert fmt == "32FC1; compressedDepth png"
    import struct

    kind, qa, qb = struct.unpack("<iff", data[:12])
    assert (kind, qa, qb) == (0, 10100.0, pytest.approx(1.0 - 10100.0 / 10.0))
    out, enc = decode_compressed_depth(fmt, data)
    assert enc == "32FC1" and out.dtype == np.float32 and out.shape == d.shape
    assert np.isnan(out[0, :4]).all()
    ok = np.isfinite(d) & (d > 0) & (d < 10.0)
    assert np.isfinite(out[ok]).all()
    err = (out - d)[ok].astype(np.float64)
    bound = (d[ok].astype(np.float64) ** 2) / (qa - d[ok])  # truncation of q = A/d + B
    assert (err >= -1e-5).all() and (err <= bound + 1e-5).all()
    assert abs(err).max() < 0.011  # <= 9.9^2 / 10090 m at the far end


@pytest.mark.parametrize("fmt,data,field,reason", [
    ("rgb8; jpeg compressed bgr8", b"", "data", "empty_data"),
    ("rgb8; jpeg compressed bgr8", b"\xff\xd8\xff\xe0 not really a jpeg", "data", "corrupt_data"),
    ("rgb8; tiff compressed bgr8", b"\x89PNG", "format", "unsupported_format"),
    ("16UC1; compressedDepth png", b"\x89PNG", "format", "unsupported_format"),
    ("rgb16; png compressed bgr16", b"\x89PNG", "format", "unsupported_encoding"),
])
def test_malformed_compressed_is_rejected(fmt, data, field, reason):
    with pytest.raises(ImageCodecError) as err:
        decode_compressed(fmt, data)
    assert (err.value.field, err.value.reason) == (field, reason)


def test_truncated_or_mislabelled_compressed_is_rejected():
    fmt, data = encode_compressed(_scene(), "rgb8", "png")
    with pytest.raises(ImageCodecError) as err:
        decode_compressed(fmt, data[: len(data) // 2])
    assert (err.value.field, err.value.reason) == ("data", "corrupt_data")
    with pytest.raises(ImageCodecError) as err:
        decode_compressed("mono8; png compressed mono8", data)  # says grey, holds colour
    assert (err.value.field, err.value.reason) == ("format", "format_mismatch")
    with pytest.raises(ImageCodecError) as err:
        encode_compressed(np.zeros((2, 2), np.uint16), "16UC1", "jpeg")
    assert err.value.field == "format"


def test_malformed_compressed_depth_is_rejected():
    fmt, data = encode_compressed_depth(np.full((6, 8), 1.5, np.float32), "32FC1")
    cases = [
        (fmt, data[:DEPTH_HEADER_BYTES], "data", "data_too_short"),
        (fmt, data[: DEPTH_HEADER_BYTES + 20], "data", "corrupt_data"),  # truncated PNG
        (fmt, b"\x07\x00\x00\x00" + data[4:], "data", "bad_header"),  # unknown compression format
        (fmt, data[:4] + b"\x00" * 8 + data[12:], "data", "bad_header"),  # quantization A = 0
        ("32FC1; compressedDepth rvl", data, "format", "unsupported_format"),
        ("32FC1; jpeg compressed bgr8", data, "format", "unsupported_format"),
        ("rgb8; compressedDepth png", data, "format", "unsupported_encoding"),
    ]
    for f, d, field, reason in cases:
        with pytest.raises(ImageCodecError) as err:
            decode_compressed_depth(f, d)
        assert (err.value.field, err.value.reason) == (field, reason), (f, len(d))
    # A depth PNG that is 8-bit (a colour camera's stream wired to the depth input).
    colour_fmt, colour = encode_compressed(_scene(), "rgb8", "png")
    with pytest.raises(ImageCodecError) as err:
        decode_compressed_depth("16UC1; compressedDepth png", data[:DEPTH_HEADER_BYTES] + colour)
    assert err.value.reason == "unsupported_pixels"
    # The legacy format string (encoding only) is PNG.
    out, enc = decode_compressed_depth("32FC1", data)
    assert enc == "32FC1" and np.nanmax(np.abs(out - 1.5)) < 1e-3
