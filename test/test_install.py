"""The installed package (``make install``: a normal pip install) works with ``ros2 run`` and ``ros2 launch``.

These tests run the INSTALLED copy (the tree is taken off PYTHONPATH and the working directory
is a temporary one), so they prove what a user gets from ``make install``. Issue 9, item 3.
"""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from m3l_ros.procs import Child, GraphProbe, ros_env

PREFIX = Path(sys.prefix)
LIB = PREFIX / "lib" / "m3l_ros"
ROS_EXECUTABLES = {"segment_node", "segment_lifecycle_node", "record", "replay", "replay_eval"}
CONSOLE_SCRIPTS = {"m3l-segment-node", "m3l-record", "m3l-replay", "m3l-replay-eval"}
H, W = 48, 64


def _installed_entry_points() -> set[str]:
    try:
        dist = importlib.metadata.distribution("m3l_ros")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("m3l_ros is not installed in this venv: run `make install`")
    return {ep.name for ep in dist.entry_points if ep.group == "console_scripts"}


def test_console_scripts_carry_the_prefix_and_ros_executables_are_in_lib():
    names = _installed_entry_points()
    assert CONSOLE_SCRIPTS <= names and all(n.startswith("m3l-") for n in names), names
    bindir = Path(sys.executable).parent
    for n in names:
        assert os.access(bindir / n, os.X_OK), n
    for generic in ("segment_node", "record", "replay", "replay_eval"):
        assert not (bindir / generic).exists(), f"generic name {generic} in {bindir}"
    found = {p.name for p in LIB.iterdir() if os.access(p, os.X_OK)} if LIB.is_dir() else set()
    assert ROS_EXECUTABLES <= found, f"{LIB}: {sorted(found)}"
    shebang = (LIB / "segment_node").read_text().splitlines()[0]
    assert shebang == "#!/bin/sh" or Path(shebang[2:]).resolve() == Path(sys.executable).resolve(), shebang
    share = PREFIX / "share" / "m3l_ros"
    assert (share / "launch" / "segment.launch.py").is_file() and (share / "config" / "segment.yaml").is_file()
    assert (PREFIX / "share" / "ament_index" / "resource_index" / "packages" / "m3l_ros").is_file()


@pytest.fixture(scope="module")
def installed_env(ros2_cli, ros_domain, tmp_path_factory):
    """The user's environment after `make install`: only AMENT_PREFIX_PATH added, the tree not on PYTHONPATH."""
    _installed_entry_points()
    if not (LIB / "segment_node").is_file():
        pytest.skip(f"{LIB}/segment_node is missing: run `make install`")
    env = ros_env(ros_domain, AMENT_PREFIX_PATH=str(PREFIX))
    env.pop("PYTHONPATH", None)
    return env


def test_ros2_pkg_lists_the_executables(ros2_cli, installed_env, tmp_path):
    out = subprocess.run([ros2_cli, "pkg", "executables", "m3l_ros"], env=installed_env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert {line.split()[1] for line in out.stdout.splitlines()} == ROS_EXECUTABLES


def _labels_from(child: Child, env: dict, ns: str) -> int:
    """Publish small frames on the node's default-named inputs in ``ns`` until 3 labels come back."""
    from sensor_msgs.msg import Image

    from m3l_ros.messages import image_msg

    probe = GraphProbe(int(env["ROS_DOMAIN_ID"]), "m3l_install_probe")
    try:
        labels = probe.subscribe("labels", Image, f"{ns}/segment_node/labels")
        rgb_pub, depth_pub = probe.publisher(Image, f"{ns}/rgb/image"), probe.publisher(Image, f"{ns}/depth/image")
        rgb = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
        depth = np.full((H, W), 2000, np.uint16)

        def tick():
            stamp = probe.now_ns()
            rgb_pub.publish(image_msg(rgb, "rgb8", stamp=stamp))
            depth_pub.publish(image_msg(depth, "16UC1", stamp=stamp))

        ok = probe.spin_until(lambda: len(labels) >= 3, 150, tick=tick, period=0.1, children=[child],
                              what="labels")
        assert ok, child.output()
        return len(labels)
    finally:
        probe.close()


@pytest.mark.timeout(300)
def test_ros2_run_starts_the_installed_node(ros2_cli, installed_env, tmp_path, tiny_checkpoint):
    ns = f"/m3l_install_run_{os.getpid()}"
    child = Child([ros2_cli, "run", "m3l_ros", "segment_node", "--ros-args", "-r", f"__ns:={ns}",
                   "-p", f"checkpoint:={tiny_checkpoint}", "-p", "device:=cpu"],
                  env=installed_env, cwd=tmp_path, log_path=tmp_path / "run.log", name="ros2 run")
    try:
        assert _labels_from(child, installed_env, ns) >= 3
        assert "site-packages" in _module_origin(installed_env, tmp_path)
    finally:
        rc = child.stop(30, group=True)  # a terminal's Ctrl-C: ros2 run waits for its child to exit
    assert rc == 0, child.output()


@pytest.mark.timeout(300)
def test_ros2_launch_starts_the_installed_node(ros2_cli, installed_env, tmp_path, tiny_checkpoint):
    ns = f"/m3l_install_launch_{os.getpid()}"
    child = Child([ros2_cli, "launch", "m3l_ros", "segment.launch.py", f"checkpoint:={tiny_checkpoint}",
                   "device:=cpu", f"namespace:={ns}", f"rgb_topic:={ns}/rgb/image", f"depth_topic:={ns}/depth/image"],
                  env=installed_env, cwd=tmp_path, log_path=tmp_path / "launch.log", name="ros2 launch")
    try:
        assert _labels_from(child, installed_env, ns) >= 3
        assert "[segment_node-1]: process started" in child.output()
    finally:
        rc = child.stop(30)
    assert rc == 0, child.output()


def _module_origin(env: dict, cwd: Path) -> str:
    out = subprocess.run([sys.executable, "-c", "import m3l_ros; print(m3l_ros.__file__)"], env=env, cwd=cwd,
                         capture_output=True, text=True, timeout=60)
    return out.stdout.strip()
