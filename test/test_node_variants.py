"""segment_node variants, each its own process: compressed inputs (issue 9 item 8) and a uni-modal
RGB checkpoint (issue 9 item 7), plus ROS-free tests of the node's input rules, checkpoint choice and
class list payload."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ros_helpers import Harness, NodeProcess

H, W = 48, 64


def _scene(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Blocky colour and depth (JPEG-friendly, like a real scene's flat regions), some invalid depth."""
    rng = np.random.default_rng(seed)
    rgb = np.kron(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
    depth = np.kron(rng.integers(500, 5000, (6, 8)), np.ones((8, 8))).astype(np.uint16)
    depth[:5, :7] = 0
    return rgb, depth


# -- ROS-free input rules -------------------------------------------------------------------------------
def test_compressed_size_is_read_from_the_header_before_decoding():
    from m3l_ros.image_codec import ImageCodecError, encode_compressed, encode_compressed_depth
    from m3l_ros.node_inputs import compressed_size, decode_depth, decode_rgb

    rgb, depth = _scene()
    for fmt in ("jpeg", "png"):
        f, data = encode_compressed(rgb, "rgb8", fmt)
        assert compressed_size(data) == (H, W)
        msg = type("M", (), {"format": f, "data": data})
        assert decode_rgb(msg, transport="compressed", max_pixels=H * W).shape == (H, W, 3)
        with pytest.raises(ImageCodecError) as e:
            decode_rgb(msg, transport="compressed", max_pixels=H * W - 1)
        assert e.value.reason == "too_many_pixels" and "max_input_pixels" in str(e.value)
    f, data = encode_compressed_depth(depth, "16UC1")
    assert compressed_size(data, 12) == (H, W)
    msg = type("M", (), {"format": f, "data": data})
    metres = decode_depth(msg, transport="compressed", max_pixels=H * W, max_depth=0.0)
    from m3l_core.preprocess import depth_to_metres

    np.testing.assert_array_equal(metres, depth_to_metres(depth))  # PNG depth round trip is exact
    far = decode_depth(msg, transport="compressed", max_pixels=H * W, max_depth=2.0)  # max_depth invalidates
    assert np.isnan(far[depth > 2000]).all() and np.isfinite(far[(depth > 0) & (depth <= 2000)]).all()
    assert compressed_size(b"\x89PNG\r\n\x1a\n") is None and compressed_size(b"\xff\xd8\xff") is None


def test_raw_depth_uses_the_one_depth_rule():
    from m3l_ros.messages import image_msg
    from m3l_ros.node_inputs import decode_depth

    depth = np.array([[0, 1000, 65535, 3000]], np.uint16)
    metres = decode_depth(image_msg(depth, "16UC1"), transport="raw", max_pixels=4, max_depth=2.5)
    assert np.isnan(metres[0, [0, 2, 3]]).all() and metres[0, 1] == np.float32(1.0)


def test_empty_checkpoint_means_the_bundled_demo_model(monkeypatch, tmp_path):
    import m3l_ros.node_params as sn

    missing = tmp_path / "models" / "demo.safetensors"
    monkeypatch.setattr(sn, "DEFAULT_CHECKPOINT", missing)
    with pytest.raises(sn.StartupError, match="bundled demo model") as e:
        sn.resolve_checkpoint("")
    assert str(missing) in str(e.value)
    missing.parent.mkdir()
    missing.write_bytes(b"x")
    assert sn.resolve_checkpoint("") == missing
    monkeypatch.undo()
    assert sn.DEFAULT_CHECKPOINT == Path(sn.__file__).resolve().parent / "models" / "demo.safetensors"


def test_class_names_payload_is_json_with_palette():
    from m3l_ros.node_model import class_names_json

    payload = json.loads(class_names_json(["floor", "wall"], np.array([[1, 2, 3], [4, 5, 6]], np.uint8)))
    assert payload == {"class_names": ["floor", "wall"], "palette": [[1, 2, 3], [4, 5, 6]], "label_encoding": "mono8"}
    assert json.loads(class_names_json([str(i) for i in range(300)], np.zeros((300, 3))))["label_encoding"] == "16UC1"


# -- processes ----------------------------------------------------------------------------------------------
def _node(tmp_path, domain, ns, ckpt, *extra):
    from m3l_ros.procs import ros_env

    return NodeProcess(["-p", f"checkpoint:={ckpt}", "-p", "device:=cpu", "-p", "qos_reliability:=reliable",
                        "-p", "qos_depth:=20", "-p", "diagnostics_period:=0.2", "-p", "rgb_timeout:=1.0",
                        "-p", "depth_timeout:=1.0", "-r", f"__ns:={ns}", *extra],
                       env=ros_env(domain), log_path=tmp_path / f"{ns.strip('/')}.log")


@pytest.mark.timeout(240)
def test_compressed_inputs_png_exact_jpeg_close_malformed_counted(tiny_checkpoint, tmp_path):
    pytest.importorskip("rclpy")
    from sensor_msgs.msg import CompressedImage

    from m3l_core.inference import Segmenter
    from m3l_ros.image_codec import decode_message
    from m3l_ros.messages import compressed_depth_msg, compressed_msg
    from m3l_ros.procs import pick_domain_id

    seg = Segmenter.from_checkpoint(tiny_checkpoint, device="cpu")
    rgb, depth = _scene()
    raw_labels = seg.predict(rgb=rgb, depth=depth)
    domain, ns = pick_domain_id(), "/m3l_cmp"
    proc = _node(tmp_path, domain, ns, tiny_checkpoint, "-p", "image_transport:=compressed",
                 "-p", f"max_input_pixels:={H * W}")
    h = None
    try:
        h = Harness(domain, ns, "segment_node", f"{ns}/unused/rgb", f"{ns}/unused/depth", f"{ns}/rgb/camera_info")
        # the harness's own publishers are raw Image ones; the compressed topics get CompressedImage publishers
        h.pub["rgb"] = h.publisher(CompressedImage, f"{ns}/rgb/image/compressed")
        h.pub["depth"] = h.publisher(CompressedImage, f"{ns}/depth/image/compressedDepth")
        assert h.spin_until(lambda: h.class_names() is not None, 120, children=[proc]), proc.tail()
        assert h.spin_until(lambda: h.node.count_subscribers(f"{ns}/rgb/image/compressed") == 1
                            and h.node.count_subscribers(f"{ns}/depth/image/compressedDepth") == 1, 30)

        def run(fmt: str, n: int = 6) -> list[np.ndarray]:
            sent: set[tuple[int, int]] = set()

            def tick() -> None:
                s = h.now()
                msg = compressed_msg(rgb, "rgb8", fmt, stamp=s, frame_id="cam")
                sent.add((msg.header.stamp.sec, msg.header.stamp.nanosec))
                h.publish("rgb", msg)
                h.publish("depth", compressed_depth_msg(depth, "16UC1", stamp=s, frame_id="cam"))

            def mine():
                return [r.msg for r in h.records["labels"] if (r.msg.header.stamp.sec, r.msg.header.stamp.nanosec) in sent]

            assert h.spin_until(lambda: len(mine()) >= n, 60, tick=tick, period=0.05, children=[proc]), \
                (proc.tail(), h.latest_diagnostics(), len(h.records["labels"]))
            return [decode_message(m) for m in mine()]

        for labels in run("png"):
            np.testing.assert_array_equal(labels, raw_labels)  # lossless: exactly the raw labels
        agreement = [float((labels == raw_labels).mean()) for labels in run("jpeg")]
        print(f"JPEG (quality 95) vs raw label agreement: min {min(agreement):.4f}")
        assert min(agreement) >= 0.95

        bad = CompressedImage(format="rgb8; jpeg compressed bgr8", data=b"\xff\xd8 not a jpeg at all")
        h.publish("rgb", bad)
        h.publish("rgb", CompressedImage(format="theora", data=b"xx"))
        h.publish("depth", CompressedImage(format="16UC1; compressedDepth png", data=b"\x00" * 8))
        big = np.zeros((H + 8, W, 3), np.uint8)
        h.publish("rgb", compressed_msg(big, "rgb8", "png", stamp=h.now()))
        want = ("rgb.corrupt_data", "rgb.unsupported_format", "depth.data_too_short", "rgb.too_many_pixels")
        assert h.spin_until(lambda: (d := h.latest_diagnostics()) is not None
                            and all(int(d.get(f"rejected.{k}", 0)) == 1 for k in want), 30), h.latest_diagnostics()
        needles = (f"dropped a message on {ns}/rgb/image/compressed: field 'data'", "field 'format'")
        assert h.spin_until(lambda: all(n in proc.output() for n in needles), 30), proc.output()  # log flushes late
        assert "Traceback" not in proc.output()
        assert proc.alive()
    finally:
        if h is not None:
            h.close()
        proc.stop()


@pytest.mark.timeout(240)
def test_uni_modal_rgb_checkpoint_reports_rgb_only_as_healthy(tmp_path):
    pytest.importorskip("rclpy")
    import torch
    from diagnostic_msgs.msg import DiagnosticStatus

    from m3l_core.checkpoint import save_checkpoint
    from m3l_core.model import LinearFusionSegFormer, ModelConfig
    from m3l_core.preprocess import Preprocessing
    from m3l_ros.procs import pick_domain_id

    torch.manual_seed(0)
    ckpt = tmp_path / "rgb_only.safetensors"
    save_checkpoint(ckpt, LinearFusionSegFormer(ModelConfig(backbone="tiny", num_classes=3, modalities=("rgb",))),
                    class_names=["a", "b", "c"], palette=[[0, 0, 0], [1, 1, 1], [2, 2, 2]],
                    preprocessing=Preprocessing(input_size=(32, 32)))
    rgb, _ = _scene()
    domain, ns = pick_domain_id(), "/m3l_uni"
    proc = _node(tmp_path, domain, ns, ckpt)
    h = None
    try:
        h = Harness(domain, ns, "segment_node", f"{ns}/rgb/image", f"{ns}/depth/image", f"{ns}/rgb/camera_info")
        assert h.spin_until(lambda: h.class_names() is not None, 120, children=[proc]), proc.tail()

        def tick() -> None:
            h.publish("rgb", Harness.image_msg(rgb, "rgb8", h.now(), "cam"))

        assert h.spin_until(lambda: len(h.records["labels"]) >= 5 and (d := h.latest_diagnostics()) is not None
                            and d["mode"] == "rgb_only", 60, tick=tick, period=0.05, children=[proc]), proc.tail()
        d = h.latest_diagnostics()
        assert d["_level"] == DiagnosticStatus.OK and d["healthy_mode"] == "rgb_only", d
        assert "uni-modal RGB model" in d["_message"]
        assert h.node.count_subscribers(f"{ns}/depth/image") == 0  # the model has no depth branch
        assert "the checkpoint has no depth branch; not subscribing" in proc.output()
    finally:
        if h is not None:
            h.close()
        proc.stop()
