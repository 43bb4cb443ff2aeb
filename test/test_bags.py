"""Bag writing and reading with rosbags (issue 6: round trip in both storage formats; issue 10, item 5:
``record --camera-info``, ``--no-labels`` for any split, ``--repeat``, the one depth rule)."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import yaml

from m3l_core.data.synthetic import trajectory
from m3l_ros import bag_io, record
from m3l_ros.bag_camera_info import CameraInfoError, calibration_from_dict, camera_info_msg, pinhole_calibration
from m3l_ros.bag_io import BagTopics, BagWriterConfig
from m3l_ros.image_codec import decode_message

H, W, N, FPS = 24, 32, 12, 20.0
T0 = 1_700_000_000_123_000_000
TOPICS = BagTopics()


@pytest.fixture(scope="module")
def frames():
    return list(trajectory(3, N, H, W))


def _stamp(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def test_depth_to_16uc1_follows_rep118():
    d = np.array([[1.2344, 0.0, np.nan, -1.0], [np.inf, 65.535, 65.6, 0.0004]], dtype=np.float32)
    mm = bag_io.depth_to_16uc1(d)
    assert mm.dtype == np.uint16
    np.testing.assert_array_equal(mm, [[1234, 0, 0, 0], [0, 65535, 0, 0]])


def test_pinhole_camera_info_matches_image_size():
    ts = bag_io.get_typestore()
    msg = camera_info_msg(ts, pinhole_calibration(48, 64, 90.0), 48, 64, T0, "cam", bag_io._header)
    assert (msg.height, msg.width, msg.header.frame_id) == (48, 64, "cam")
    fx = msg.k[0]
    assert fx == pytest.approx(32.0)  # tan(45 deg) = 1 -> fx = W / 2
    assert (msg.k[2], msg.k[5], msg.k[4], msg.k[8]) == (31.5, 23.5, fx, 1.0)
    assert list(msg.p) == [fx, 0, 31.5, 0, 0, fx, 23.5, 0, 0, 0, 1, 0]


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_synthetic_bag_round_trip(tmp_path, frames, storage):
    path = tmp_path / "bag"
    cfg = BagWriterConfig(storage=storage, fps=FPS, start_ns=T0)
    summary = bag_io.write_frames(path, iter(frames), config=cfg, total=N, progress=False)
    assert summary.frames == N and summary.start_ns == T0
    assert summary.end_ns == T0 + int(round((N - 1) * 1e9 / FPS))

    meta = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == 9 and meta["storage_identifier"] == storage
    assert meta["message_count"] == 4 * N
    assert all(t["topic_metadata"]["serialization_format"] == "cdr" for t in meta["topics_with_message_count"])
    assert (path / f"bag.{'mcap' if storage == 'mcap' else 'db3'}").is_file()

    info = bag_io.bag_info(path)
    expected_types = {TOPICS.rgb: "sensor_msgs/msg/Image", TOPICS.depth: "sensor_msgs/msg/Image",
                      TOPICS.camera_info: "sensor_msgs/msg/CameraInfo", TOPICS.labels: "sensor_msgs/msg/Image"}
    assert {t: i.msgtype for t, i in info.topics.items()} == expected_types
    assert all(i.count == N for i in info.topics.values())
    assert info.start_ns == T0 and info.end_ns == summary.end_ns

    by_topic: dict[str, list] = {}
    order = []
    for topic, t, msg in bag_io.read_bag(path):
        by_topic.setdefault(topic, []).append((t, msg))
        order.append(topic)
    assert order[0] == TOPICS.labels  # ground truth goes out before the inputs of its frame
    for topic, items in by_topic.items():
        assert [t for t, _ in items] == [T0 + int(round(i * 1e9 / FPS)) for i in range(N)], topic
        assert all(_stamp(m) == t and m.header.frame_id == "camera_color_optical_frame" for t, m in items), topic
    for i, f in enumerate(frames):
        rgb = by_topic[TOPICS.rgb][i][1]
        depth = by_topic[TOPICS.depth][i][1]
        label = by_topic[TOPICS.labels][i][1]
        info_msg = by_topic[TOPICS.camera_info][i][1]
        assert (rgb.encoding, depth.encoding, label.encoding) == ("rgb8", "16UC1", "mono8")
        np.testing.assert_array_equal(decode_message(rgb), f["rgb"])
        np.testing.assert_array_equal(decode_message(label), f["label"])
        mm = decode_message(depth)
        assert mm.dtype == np.uint16
        valid = np.isfinite(f["depth"])
        assert (mm[~valid] == 0).all() and (mm[valid] > 0).all()
        np.testing.assert_allclose(mm[valid] / 1000.0, f["depth"][valid], atol=5e-4)
        assert (info_msg.height, info_msg.width) == (H, W)

    only = list(bag_io.read_bag(path, topics=[TOPICS.depth]))
    assert len(only) == N and {t for t, _, _ in only} == {TOPICS.depth}


def test_errors_name_the_path_or_topic(tmp_path, frames):
    path = tmp_path / "bag"
    bag_io.write_frames(path, frames[:2], config=BagWriterConfig(fps=FPS, start_ns=T0), progress=False)
    with pytest.raises(FileExistsError, match=str(path)):
        bag_io.write_frames(path, frames[:2], progress=False)
    with pytest.raises(KeyError, match="/nope"):
        list(bag_io.read_bag(path, topics=["/nope"]))
    with pytest.raises(FileNotFoundError, match="metadata.yaml"):
        bag_io.bag_info(tmp_path)
    bad = dict(frames[0], depth=np.zeros((H + 1, W), np.float32), name="f0")
    with pytest.raises(ValueError, match="f0"):
        bag_io.write_frames(tmp_path / "bad", [bad], progress=False)
    assert not (tmp_path / "bad").exists()  # partial bag removed, so the same path can be retried


def test_record_cli_synthetic_custom_topics_no_labels(tmp_path, capsys):
    out = tmp_path / "syn"
    rc = record.main(["--out", str(out), "--synthetic", "--frames", "5", "--height", "16", "--width", "24",
                      "--fps", "10", "--start-time", "100.5", "--storage", "sqlite3", "--rgb-topic", "/cam/rgb",
                      "--no-labels", "--no-progress"])
    assert rc == 0
    info = bag_io.bag_info(out)
    assert set(info.topics) == {"/cam/rgb", TOPICS.depth, TOPICS.camera_info}
    assert info.start_ns == 100_500_000_000 and info.end_ns == 100_900_000_000
    assert "wrote 5 frames" in capsys.readouterr().out
    rc = record.main(["--out", str(out), "--synthetic", "--frames", "2", "--no-progress"])
    assert rc == 2 and "already exists" in capsys.readouterr().err


def test_record_cli_folder_keeps_split_order(tmp_path, frames):
    from m3l_core.data.folder import ClassInfo, save_classes, write_sample, write_split

    root = tmp_path / "ds"
    names = ["b", "a", "c"]  # split order, not alphabetical
    for name, f in zip(names, frames):
        write_sample(root, name, rgb=f["rgb"], depth=f["depth"], label=f["label"])
    save_classes(root / "classes.yaml", ClassInfo(names=[f"c{i}" for i in range(9)]))
    write_split(root, "test", names)
    out = tmp_path / "folder_bag"
    assert record.main(["--out", str(out), "--folder", str(root), "--split", "test", "--fps", "5",
                        "--start-time", "0", "--no-progress"]) == 0
    labels = [(t, decode_message(m)) for _, t, m in bag_io.read_bag(out, topics=[TOPICS.labels])]
    assert [t for t, _ in labels] == [0, 200_000_000, 400_000_000]
    for (_, lab), f in zip(labels, frames):
        np.testing.assert_array_equal(lab, f["label"])


def test_cdr_is_what_rclpy_reads_and_restamp_is_exact(frames):
    rclpy_ser = pytest.importorskip("rclpy.serialization")
    from sensor_msgs.msg import Image

    ts = bag_io.get_typestore()
    msg = bag_io.image_msg(ts, frames[0]["rgb"], "rgb8", T0, "cam")
    data = bytes(ts.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    ros = rclpy_ser.deserialize_message(data, Image)
    assert (ros.height, ros.width, ros.encoding, ros.header.frame_id) == (H, W, "rgb8", "cam")
    assert bytes(ros.data) == frames[0]["rgb"].tobytes()

    assert bag_io.msgtype_has_leading_header("sensor_msgs/msg/Image")
    assert not bag_io.msgtype_has_leading_header("std_msgs/msg/String")
    assert bag_io.cdr_header_stamp(data) == T0
    new = 1_800_000_000_987_654_321
    patched = bag_io.restamp_cdr(data, new)
    assert len(patched) == len(data) and patched[12:] == data[12:]  # only the stamp bytes change
    back = rclpy_ser.deserialize_message(patched, Image)
    assert (back.header.stamp.sec, back.header.stamp.nanosec) == divmod(new, 1_000_000_000)
    assert bytes(back.data) == bytes(ros.data) and back.header.frame_id == "cam"
    assert bag_io.cdr_header_stamp(patched) == new
    # rclpy's own bytes carry the stamp at the same offset (its padding bytes may differ).
    assert bag_io.cdr_header_stamp(rclpy_ser.serialize_message(back)) == new


# ---------------------------------------------------------------------------------------------
# issue 10, item 5: real intrinsics, labels optional for any split, repeated frames, one depth rule
# ---------------------------------------------------------------------------------------------

CALIB_YAML = """image_width: 24
image_height: 16
camera_name: d435_color
camera_matrix:
  rows: 3
  cols: 3
  data: [20.5, 0, 11.8, 0, 20.7, 7.9, 0, 0, 1]
distortion_model: plumb_bob
distortion_coefficients:
  rows: 1
  cols: 5
  data: [0.11, -0.2, 0.001, 0.002, 0.05]
rectification_matrix:
  rows: 3
  cols: 3
  data: [1, 0, 0, 0, 1, 0, 0, 0, 1]
projection_matrix:
  rows: 3
  cols: 4
  data: [20.1, 0, 11.7, 0, 0, 20.3, 7.8, 0, 0, 0, 1, 0]
"""


def _infos(path):
    return [m for _, _, m in bag_io.read_bag(path, topics=[TOPICS.camera_info])]


def test_record_camera_info_yaml_and_repeat(tmp_path, capsys):
    calib = tmp_path / "d435.yaml"
    calib.write_text(CALIB_YAML)
    out = tmp_path / "bag"
    rc = record.main(["--out", str(out), "--synthetic", "--frames", "3", "--height", "16", "--width", "24",
                      "--fps", "10", "--start-time", "5", "--camera-info", str(calib), "--repeat", "4",
                      "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert "wrote 12 frames (1.10 s)" in capsys.readouterr().out
    infos = _infos(out)
    assert len(infos) == 12
    m = infos[0]
    assert list(m.k) == [20.5, 0, 11.8, 0, 20.7, 7.9, 0, 0, 1] and list(m.d) == [0.11, -0.2, 0.001, 0.002, 0.05]
    assert list(m.p) == [20.1, 0, 11.7, 0, 0, 20.3, 7.8, 0, 0, 0, 1, 0] and m.distortion_model == "plumb_bob"
    # Stamps keep increasing over the repeats; the images repeat with period 3.
    rgb = [(t, decode_message(msg)) for _, t, msg in bag_io.read_bag(out, topics=[TOPICS.rgb])]
    assert [t for t, _ in rgb] == [5_000_000_000 + i * 100_000_000 for i in range(12)]
    for i in range(3, 12):
        np.testing.assert_array_equal(rgb[i][1], rgb[i % 3][1])
    assert not np.array_equal(rgb[0][1], rgb[1][1])
    assert bag_io.bag_info(out).topics[TOPICS.labels].count == 12


def test_record_camera_info_json_and_errors(tmp_path, capsys):
    calib = tmp_path / "kd.json"
    calib.write_text(json.dumps({"K": [[30, 0, 12], [0, 31, 8], [0, 0, 1]], "D": [0.1, 0, 0, 0, 0, 0, 0, 0.01]}))
    out = tmp_path / "bag"
    assert record.main(["--out", str(out), "--synthetic", "--frames", "2", "--height", "16", "--width", "24",
                        "--camera-info", str(calib), "--no-progress"]) == 0
    m = _infos(out)[1]
    assert list(m.k) == [30, 0, 12, 0, 31, 8, 0, 0, 1] and m.distortion_model == "rational_polynomial"
    assert list(m.p) == [30, 0, 12, 0, 0, 31, 8, 0, 0, 0, 1, 0] and (m.height, m.width) == (16, 24)
    capsys.readouterr()

    # A calibration for another resolution is refused (exit 1: bad data), and no bag is left behind.
    sized = tmp_path / "sized.yaml"
    sized.write_text(CALIB_YAML)
    rc = record.main(["--out", str(tmp_path / "b2"), "--synthetic", "--frames", "2", "--height", "32",
                      "--width", "48", "--camera-info", str(sized), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "sized.yaml" in err and "24x16" in err and "48x32" in err
    assert not (tmp_path / "b2").exists()
    # Bad arguments: exit 2.
    for extra in (["--camera-info", str(tmp_path / "none.yaml")], ["--camera-info", str(calib), "--hfov", "60"],
                  ["--repeat", "0"]):
        assert record.main(["--out", str(tmp_path / "b3"), "--synthetic", "--no-progress", *extra]) == 2, extra
    assert record.main(["--out", str(tmp_path / "b3"), "--synthetic", "--bogus"]) == 2
    # Broken files name the file and the field.
    with pytest.raises(CameraInfoError, match="x.yaml: field 'camera_matrix': expected 9 numbers"):
        calibration_from_dict({"camera_matrix": {"rows": 3, "cols": 2, "data": [1] * 6}}, "x.yaml")
    with pytest.raises(CameraInfoError, match="'K': not a camera matrix"):
        calibration_from_dict({"K": [1, 0, 0, 0, 1, 0, 0, 0, 0], "D": []}, "x.json")
    with pytest.raises(CameraInfoError, match="plumb_bob needs 5"):
        calibration_from_dict({"K": [1, 0, 0, 0, 1, 0, 0, 0, 1], "D": [1, 2], "distortion_model": "plumb_bob"})
    bad = tmp_path / "bad.json"
    bad.write_text("{K: ")
    assert record.main(["--out", str(tmp_path / "b4"), "--synthetic", "--frames", "1", "--camera-info", str(bad),
                        "--no-progress"]) == 1
    assert "bad.json: not valid JSON" in capsys.readouterr().err


def test_record_no_labels_for_any_split_and_the_depth_rule(tmp_path, frames):
    """A test split without label files records with --no-labels; 65535 and far depth become 0."""
    from m3l_core.data.folder import ClassInfo, save_classes, write_sample, write_split

    raw = np.full((H, W), 1500, np.uint16)
    raw[0, :4] = 65535  # Kinect-style "no return"
    raw[1, :4] = 0
    raw[2, :4] = 9000  # beyond --max-depth 8
    root = tmp_path / "ds"
    names = ["f0", "f1"]
    for name, f in zip(names, frames):
        write_sample(root, name, rgb=f["rgb"], depth=raw, label=f["label"])
        (root / "labels" / f"{name}.png").unlink()  # a split without ground truth
    save_classes(root / "classes.yaml", ClassInfo(names=[f"c{i}" for i in range(9)]))
    write_split(root, "test", names)

    assert record.main(["--out", str(tmp_path / "with"), "--folder", str(root), "--split", "test",
                        "--no-progress"]) == 1  # labels demanded by default
    out = tmp_path / "bag"
    assert record.main(["--out", str(out), "--folder", str(root), "--split", "test", "--no-labels",
                        "--max-depth", "8", "--repeat", "2", "--no-progress"]) == 0
    info = bag_io.bag_info(out)
    assert TOPICS.labels not in info.topics and info.topics[TOPICS.depth].count == 4
    mm = decode_message(next(m for _, _, m in bag_io.read_bag(out, topics=[TOPICS.depth])))
    assert (mm[:3, :4] == 0).all() and (mm[3:] == 1500).all() and (mm[:3, 4:] == 1500).all()
    # The same rule for raw uint16 samples handed to the writer (65535 was once written as 65.535 m).
    direct = tmp_path / "direct"
    bag_io.write_frames(direct, [dict(rgb=frames[0]["rgb"], depth=raw)], progress=False,
                        config=BagWriterConfig(max_depth=8.0))
    mm = decode_message(next(m for _, _, m in bag_io.read_bag(direct, topics=[TOPICS.depth])))
    assert (mm[:3, :4] == 0).all() and (mm[3:] == 1500).all()

    # A depth image in the wrong units (0.1 mm steps saved as "mm") is written, with one warning.
    root2 = tmp_path / "ds2"
    for name, f in zip(names, frames):
        write_sample(root2, name, rgb=f["rgb"], depth=raw * 20, label=f["label"])  # 30 m median
    save_classes(root2 / "classes.yaml", ClassInfo(names=[f"c{i}" for i in range(9)]))
    write_split(root2, "test", names)
    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda r: seen.append(r.getMessage())
    logging.getLogger("m3l_ros.bag_io").addHandler(handler)
    try:
        assert record.main(["--out", str(tmp_path / "units"), "--folder", str(root2), "--split", "test",
                            "--no-progress"]) == 0
    finally:
        logging.getLogger("m3l_ros.bag_io").removeHandler(handler)
    warnings = [m for m in seen if "median valid depth is 30.0 m" in m]
    assert len(warnings) == 1 and "units: frame 'f0'" in warnings[0]


def test_record_ctrl_c_leaves_no_partial_bag(tmp_path, frames, monkeypatch, capsys):
    def interrupted(**_):
        yield frames[0]
        raise KeyboardInterrupt

    monkeypatch.setattr(record, "synthetic_frames", interrupted)
    out = tmp_path / "bag"
    assert record.main(["--out", str(out), "--synthetic", "--frames", "5", "--no-progress"]) == 130
    assert not out.exists() and "partial bag was removed" in capsys.readouterr().err
    assert record.main(["--help"]) == 0
