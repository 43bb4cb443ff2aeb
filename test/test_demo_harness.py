"""The shared harness of the tests, the demo and the benchmarks: m3l_ros.procs and m3l_ros.messages."""
from __future__ import annotations

import os
import signal
import sys

import numpy as np
import pytest

from m3l_ros import procs


def test_ros_env_isolates_the_graph_and_runs_this_copy(monkeypatch):
    monkeypatch.setenv("ROS_PYTHON_CHECK_FIELDS", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/elsewhere", str(procs.package_root())]))
    env = procs.ros_env(42, EXTRA="x")
    assert env["ROS_DOMAIN_ID"] == "42" and env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert "ROS_PYTHON_CHECK_FIELDS" not in env and env["EXTRA"] == "x"
    assert env["PYTHONPATH"].split(os.pathsep) == [str(procs.package_root()), "/elsewhere"]
    with procs.ros_environment(7):
        assert os.environ["ROS_DOMAIN_ID"] == "7" and "ROS_PYTHON_CHECK_FIELDS" not in os.environ
    assert os.environ["ROS_PYTHON_CHECK_FIELDS"] == "1"  # restored


def test_domain_id_from_env(monkeypatch):
    monkeypatch.delenv("ROS_DOMAIN_ID", raising=False)
    assert procs.domain_id_from_env(5) == 5 and 1 <= procs.domain_id_from_env() <= 101
    monkeypatch.setenv("ROS_DOMAIN_ID", "17")
    assert procs.domain_id_from_env(5) == 17
    monkeypatch.setenv("ROS_DOMAIN_ID", "abc")
    with pytest.raises(ValueError, match="ROS_DOMAIN_ID"):
        procs.domain_id_from_env()


def test_child_captures_output_and_stops_only_itself(tmp_path):
    code = ("import signal, sys, time\n"
            "signal.signal(signal.SIGINT, lambda *_: (print('bye', flush=True), sys.exit(3)))\n"
            "print('up', flush=True)\n"
            "time.sleep(60)\n")
    child = procs.Child([sys.executable, "-c", code], env=procs.ros_env(9), log_path=tmp_path / "c.log", name="c")
    try:
        end_ok = False
        for _ in range(200):
            if "up" in child.output():
                end_ok = True
                break
            child.wait(0.05)
        assert end_ok and child.alive()
        assert os.getpgid(child.pid) == child.pid  # own session: a terminal's Ctrl-C does not reach it
        assert child.stop(20) == 3
        assert child.output().split() == ["up", "bye"]
        err = child.fail("step failed")
        assert isinstance(err, procs.ChildError) and "bye" in str(err) and "step failed" in str(err)
    finally:
        child.stop(5, signal.SIGKILL)


def test_messages_build_images_with_exact_stamps():
    pytest.importorskip("rclpy")
    from m3l_ros.image_codec import decode_compressed_depth, decode_message
    from m3l_ros.messages import camera_info_msg, compressed_depth_msg, image_msg, stamp_ns

    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    msg = image_msg(rgb, "rgb8", stamp=1_700_000_000_123_456_789, frame_id="cam")
    assert (msg.height, msg.width, msg.step, msg.encoding, msg.header.frame_id) == (2, 3, 9, "rgb8", "cam")
    assert stamp_ns(msg.header) == 1_700_000_000_123_456_789
    np.testing.assert_array_equal(decode_message(msg), rgb)
    s = 1234.5678
    m = image_msg(None, "16UC1", stamp=s)
    assert m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 == s  # tests compare float stamps
    depth = np.full((4, 5), 1500, np.uint16)
    cm = compressed_depth_msg(depth, "16UC1", stamp=5)
    assert cm.format == "16UC1; compressedDepth png"
    np.testing.assert_array_equal(decode_compressed_depth(cm.format, bytes(cm.data))[0], depth)
    info = camera_info_msg(480, 640, stamp=5)
    assert (info.height, info.width) == (480, 640) and info.k[2] == pytest.approx(319.5)


def test_xdist_workers_get_different_ros_domains(monkeypatch):
    from m3l_ros.procs import pick_domain_id

    domains = {}
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        domains[worker] = pick_domain_id()
    assert domains["gw0"] != domains["gw1"] and all(1 <= d <= 101 for d in domains.values())
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    assert 1 <= pick_domain_id() <= 101
