"""Bag writing and reading with rosbags (issue 6, must-show 1: round trip in both storage formats)."""
from __future__ import annotations


import numpy as np
import pytest
import yaml

from m3l_core.data.synthetic import trajectory
from m3l_ros import bag_io, record
from m3l_ros.bag_io import BagTopics, BagWriterConfig

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
    msg = bag_io.camera_info_msg(ts, 48, 64, 90.0, T0, "cam")
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
        np.testing.assert_array_equal(bag_io.image_to_array(rgb), f["rgb"])
        np.testing.assert_array_equal(bag_io.image_to_array(label), f["label"])
        mm = bag_io.image_to_array(depth)
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
    labels = [(t, bag_io.image_to_array(m)) for _, t, m in bag_io.read_bag(out, topics=[TOPICS.labels])]
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
