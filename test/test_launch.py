"""``ros2 launch`` of the tree's ``launch/segment.launch.py`` with the upstream ROS 2 tools (issue 9, item 4).

The launch file is the tree's (given by path); the node executables are ``<venv>/lib/m3l_ros/*``
from ``make install``, whose launchers import the tree (conftest puts it first on PYTHONPATH).
Skips with a reason when the ROS 2 tools or the install are missing.

Exit statuses of ``ros2 launch`` (documented in the README):
* 0: the launch ended by Ctrl-C/SIGINT (also twice), or the node exited 0 by itself;
* 1: the node exited non-zero by itself (e.g. FATAL at start-up), or a launch error
  (unknown argument, mistyped value, missing params_file);
* SIGTERM to ``ros2 launch``: upstream ``ros2 launch`` has no SIGTERM handler and is killed by it
  (status 143 in a shell, -15 here); the node, started by a ``lib/m3l_ros`` launcher that asks
  for SIGTERM when its parent dies, then shuts down instead of living on orphaned.
"""
from __future__ import annotations

import importlib.util
import os
import re
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from m3l_ros.procs import Child, ros_env

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch" / "segment.launch.py"
H, W = 48, 64


def _launch_module():
    spec = importlib.util.spec_from_file_location("m3l_segment_launch", LAUNCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def launch_env(ros2_cli, ros_domain):
    prefix = Path(sys.prefix)
    if not (prefix / "lib" / "m3l_ros" / "segment_node").is_file():
        pytest.skip(f"{prefix}/lib/m3l_ros/segment_node is missing: run `make install` first")
    return ros_env(ros_domain, AMENT_PREFIX_PATH=str(prefix))


def _launch(ros2_cli: str, env: dict, tmp: Path, *args: str, name: str = "launch") -> Child:
    # -X faulthandler (ros2 launch only, not inherited by the node): a launch that hangs is sent
    # SIGABRT and prints every thread's stack into its log, so the failure says where it hung.
    return Child([sys.executable, "-X", "faulthandler", ros2_cli, "launch", str(LAUNCH), *args], env=env,
                 log_path=tmp / f"{name}.log", name=name)


def _run(ros2_cli, env, tmp, *args, timeout=120.0) -> tuple[int | None, str]:
    c = _launch(ros2_cli, env, tmp, *args)
    rc = c.wait(timeout)
    c.stop(5)
    return rc, c.output()


# -- no node needed ---------------------------------------------------------------------------
def test_show_args_lists_every_argument_and_print_shows_the_node(ros2_cli, launch_env, tmp_path):
    mod = _launch_module()
    rc, out = _run(ros2_cli, launch_env, tmp_path, "--show-args", timeout=60)
    assert rc == 0, out
    shown = re.findall(r"^    '(\w+)':\n        (.+)$", out, re.M)
    assert [n for n, _ in shown] == mod.DECLARED
    assert all(len(desc) > 20 for _, desc in shown), shown
    rc, out = _run(ros2_cli, launch_env, tmp_path, "--print", timeout=60)
    assert rc == 0, out
    assert "ExecInPkg(pkg='m3l_ros', exec='segment_node')" in out
    assert "ExecInPkg(pkg='m3l_ros', exec='segment_lifecycle_node')" in out
    assert "OnProcessExit" in out and "OpaqueFunction" not in out


@pytest.mark.parametrize("args,message", [
    (["params_file:=/nonexistent/segment.yaml"], "params_file:='/nonexistent/segment.yaml': no such file"),
    (["qos_reliablity:=reliable"], "unknown launch argument 'qos_reliablity' (did you mean qos_reliability?)"),
    (["rgb_timeout:=fast"], "launch argument rgb_timeout:='fast' is not a float"),
    (["image_transport:=theora"], 'Argument "image_transport" provided value "theora" is not valid'),
])
def test_bad_arguments_fail_the_launch(ros2_cli, launch_env, tmp_path, args, message):
    rc, out = _run(ros2_cli, launch_env, tmp_path, *args, "device:=cpu", timeout=60)
    assert rc == 1, out
    assert message in out
    assert "process started" not in out or "exited with code" in out  # no node left running on defaults


def test_a_node_that_dies_at_startup_ends_the_launch(ros2_cli, launch_env, tmp_path):
    rc, out = _run(ros2_cli, launch_env, tmp_path, f"checkpoint:={tmp_path / 'missing.safetensors'}",
                   "device:=cpu", timeout=120)
    assert rc == 1, out
    assert re.search(r"\[FATAL\].*checkpoint file not found: .*missing\.safetensors", out), out
    assert "exited with code 1" in out and "Traceback" not in out


# -- a running node ---------------------------------------------------------------------------
def _probe_run(ros2_cli, env, tmp, checkpoint, ns, *extra, params_file=None):
    """Start the launch, feed frames until labels come back; (child, probe, labels list)."""
    from sensor_msgs.msg import Image

    from m3l_ros.messages import image_msg
    from m3l_ros.procs import GraphProbe

    args = [f"checkpoint:={checkpoint}", "device:=cpu", f"namespace:={ns}", f"rgb_topic:={ns}/cam/rgb",
            f"depth_topic:={ns}/cam/depth", f"camera_info_topic:={ns}/cam/info", *extra]
    if params_file is not None:
        args.append(f"params_file:={params_file}")
    child = _launch(ros2_cli, env, tmp, *args)
    probe = GraphProbe(int(env["ROS_DOMAIN_ID"]), "m3l_launch_probe")
    labels = probe.subscribe("labels", Image, f"{ns}/segment_node/labels")
    rgb_pub, depth_pub = probe.publisher(Image, f"{ns}/cam/rgb"), probe.publisher(Image, f"{ns}/cam/depth")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    depth = rng.integers(500, 4000, (H, W), dtype=np.uint16)

    def tick():
        stamp = probe.now_ns()
        rgb_pub.publish(image_msg(rgb, "rgb8", stamp=stamp, frame_id="cam"))
        depth_pub.publish(image_msg(depth, "16UC1", stamp=stamp, frame_id="cam"))

    try:
        ok = probe.spin_until(lambda: len(labels) >= 3, 150, tick=tick, period=0.1, children=[child],
                              what="labels from the launched node")
    except Exception:
        probe.close()
        child.stop(10)
        raise
    if not ok:
        probe.close()
        child.stop(10)
        pytest.fail(f"no labels within 150 s:\n{child.output()}")
    return child, probe, labels


def _get_parameters(probe, node: str, names: list[str]) -> dict:
    return {"_listed": probe.list_parameters(node), **probe.get_parameters(node, names)}


@pytest.mark.timeout(300)
def test_arguments_namespace_and_params_file_take_effect_then_double_sigint(ros2_cli, launch_env, tmp_path,
                                                                              tiny_checkpoint):
    mod = _launch_module()
    params = tmp_path / "my_segment.yaml"
    params.write_text("/**:\n  ros__parameters:\n    rgb_timeout: 0.7\n    depth_timeout: 0.4\n"
                      "    diagnostics_period: 0.5\n")
    ns = f"/m3l_launch_{os.getpid()}"
    child, probe, labels = _probe_run(ros2_cli, launch_env, tmp_path, tiny_checkpoint, ns,
                                      "depth_timeout:=0.9", "sync_slop:=0.03", "publish_colored:=false",
                                      params_file=params)
    try:
        got = _get_parameters(probe, f"{ns}/segment_node", ["rgb_timeout", "depth_timeout", "sync_slop",
                                                           "diagnostics_period", "checkpoint", "device",
                                                           "publish_colored"])
        assert labels[-1].msg.height == H and labels[-1].msg.width == W
        assert got["rgb_timeout"] == pytest.approx(0.7)  # params_file
        assert got["diagnostics_period"] == pytest.approx(0.5)  # params_file
        assert got["depth_timeout"] == pytest.approx(0.9)  # launch argument wins over the file
        assert got["sync_slop"] == pytest.approx(0.03) and got["publish_colored"] is False
        assert got["checkpoint"] == str(tiny_checkpoint) and got["device"] == "cpu"
        # Every parameter the node declares is a launch argument (README: "every node parameter").
        # Not inputs: rclpy's own start_type_description_service, and class_names (the node reports the
        # checkpoint's classes there).
        node_params = {n for n in got["_listed"] if not n.startswith("qos_overrides.")} - {
            "start_type_description_service", "class_names"}
        launch_params = {n for n, _, _ in mod.NODE_PARAMETERS}
        assert node_params <= launch_params, f"not settable by launch argument: {sorted(node_params - launch_params)}"
    except BaseException:
        child.stop(20)
        raise
    finally:
        probe.close()
    # A terminal's Ctrl-C reaches launch and the node, then a second one 5 ms later.
    _interrupt_and_check(child, signal.SIGINT, 0.005, expected=0)


def _interrupt_and_check(child: Child, first: int, gap_s: float, *, expected: int) -> None:
    """``first`` (SIGINT: to the whole process group, as a terminal's Ctrl-C; SIGTERM: to ros2 launch
    only), then a Ctrl-C ``gap_s`` later; the launch must exit ``expected`` with no traceback."""
    pgid = os.getpgid(child.pid)
    if first == signal.SIGINT:
        os.killpg(pgid, signal.SIGINT)
    else:
        os.kill(child.pid, first)
    time.sleep(gap_s)
    os.killpg(pgid, signal.SIGINT)
    rc = child.wait(60)
    if rc is None:  # hung: dump its threads (-X faulthandler) so the failure says where
        os.kill(child.pid, signal.SIGABRT)
        child.wait(10)
    out = child.output()
    child.stop(5)
    assert rc == expected, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out


@pytest.mark.timeout(300)
@pytest.mark.parametrize("first,gap_s", [(signal.SIGINT, 0.02), (signal.SIGINT, 0.05), (signal.SIGTERM, 0.05)])
def test_shutdown_signals_under_launch(ros2_cli, launch_env, tmp_path, tiny_checkpoint, first, gap_s):
    ns = f"/m3l_launch_sig_{os.getpid()}"
    # The SIGTERM run also covers lifecycle:=true autostart:=true (one launch fewer).
    managed = first == signal.SIGTERM and _lifecycle_available()
    extra = ["lifecycle:=true", "autostart:=true"] if managed else []
    child, probe, labels = _probe_run(ros2_cli, launch_env, tmp_path, tiny_checkpoint, ns, *extra)
    try:
        if managed:  # labels came without any manual transition: configured and activated by the launch
            from m3l_ros.procs import LifecycleClient

            assert LifecycleClient(probe, f"{ns}/segment_node").state() == "active" and len(labels) >= 3
            assert "[segment_lifecycle_node-1]: process started" in child.output()
    except BaseException:
        child.stop(20)
        raise
    finally:
        probe.close()
    # Ctrl-C twice; or `kill <launch pid>` then Ctrl-C: ros2 launch is killed by SIGTERM (upstream)
    # and the node follows it through its parent-death signal.
    _interrupt_and_check(child, first, gap_s, expected=0 if first == signal.SIGINT else -signal.SIGTERM)
    end = time.monotonic() + 30
    while _node_processes(ns) and time.monotonic() < end:
        time.sleep(0.2)
    assert not _node_processes(ns), f"node left running after the launch exited:\n{child.output()}"


def _node_processes(ns: str) -> list[int]:
    """PIDs of node processes started with this test's namespace (ours only: the namespace has our pid)."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if f"__ns:={ns}" in cmd and "segment_node" in cmd:
                pids.append(int(p.name))
    return pids


# -- lifecycle:=true ----------------------------------------------------------------------------
def _lifecycle_available() -> bool:
    import importlib

    return hasattr(importlib.import_module("m3l_ros.segment_node"), "main_lifecycle")


@pytest.mark.timeout(300)
def test_lifecycle_autostart_false_waits_for_transitions(ros2_cli, launch_env, tmp_path, tiny_checkpoint):
    if not _lifecycle_available():
        pytest.skip("m3l_ros.segment_node has no main_lifecycle yet (segment_lifecycle_node)")
    from lifecycle_msgs.msg import Transition
    from sensor_msgs.msg import Image

    from m3l_ros.messages import image_msg
    from m3l_ros.procs import GraphProbe, LifecycleClient

    ns = f"/m3l_launch_lc_{os.getpid()}"
    node = f"{ns}/segment_node"
    child = _launch(ros2_cli, launch_env, tmp_path, f"checkpoint:={tiny_checkpoint}", "device:=cpu",
                    f"namespace:={ns}", f"rgb_topic:={ns}/cam/rgb", f"depth_topic:={ns}/cam/depth",
                    "lifecycle:=true", "autostart:=false")
    probe = GraphProbe(int(launch_env["ROS_DOMAIN_ID"]), "m3l_launch_lc_probe")
    try:
        labels = probe.subscribe("labels", Image, f"{node}/labels")
        pubs = [probe.publisher(Image, f"{ns}/cam/rgb"), probe.publisher(Image, f"{ns}/cam/depth")]
        rgb, depth = np.zeros((H, W, 3), np.uint8), np.full((H, W), 1500, np.uint16)

        def tick():
            stamp = probe.now_ns()
            pubs[0].publish(image_msg(rgb, "rgb8", stamp=stamp))
            pubs[1].publish(image_msg(depth, "16UC1", stamp=stamp))

        lifecycle = LifecycleClient(probe, node)
        assert lifecycle.state() == "unconfigured"
        probe.spin_until(lambda: False, 1.0, tick=tick, period=0.1)
        assert labels == []  # unconfigured: no model, no output
        for t in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
            assert lifecycle.transition(t)
        assert probe.spin_until(lambda: len(labels) >= 3, 60, tick=tick, period=0.1, children=[child]), child.output()
    finally:
        probe.close()
        rc = child.stop(30)
    assert rc == 0, child.output()
