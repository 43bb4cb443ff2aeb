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
    resize_nearest,
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
    np.testing.assert_allclose(out[0, 1:], [1.0, 2.5, 65.535], rtol=1e-6)
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


def test_resize_nearest_maps_pixel_centres():
    a = np.arange(4, dtype=np.uint16).reshape(2, 2)
    up = resize_nearest(a, 4, 4)
    np.testing.assert_array_equal(up, [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    np.testing.assert_array_equal(resize_nearest(up, 2, 2), a)
    assert resize_nearest(a, 2, 2) is a
