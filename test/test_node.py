"""Process-level tests of segment_node with real rclpy (Jazzy wheels) and a tiny random checkpoint.

One node process runs the main flow (tests 02-07 share it, in file order):
RGB-D -> depth lost -> back -> RGB lost -> both lost -> back -> malformed burst ->
parameters -> SIGINT. Two more short-lived processes check SIGTERM and start-up errors.
Expected labels are computed in this process with the same checkpoint and ``Segmenter``.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from diagnostic_msgs.msg import DiagnosticStatus

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ros_helpers import REPO, Harness, NodeProcess, make_tiny_checkpoint, pick_domain_id, ros_env  # noqa: E402

from m3l_ros.image_codec import decode_message, depth_from_image, resize_nearest  # noqa: E402

H, W = 32, 40
TIMEOUT = 0.3  # rgb_timeout and depth_timeout of the node under test
PERIOD = 0.05  # the test cameras publish at 20 Hz
SLACK = 1.0  # scheduling allowance on a loaded 2-core machine; only used as an upper bound
NS, NAME = "/m3l_test", "seg"
RGB_TOPIC = "/test_cam/color/image_raw"  # remapped on the command line: proves rgb/image is remappable
DEPTH_TOPIC = f"{NS}/depth/image"  # the default relative name, resolved in the namespace
INFO_TOPIC = f"{NS}/rgb/camera_info"
CONFIG = REPO / "config" / "segment.yaml"
LAUNCH = REPO / "launch" / "segment.launch.py"


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", num_classes=5, seed=0)


@pytest.fixture(scope="session")
def segmenter(tiny_checkpoint):
    from m3l_core.inference import Segmenter

    return Segmenter.from_checkpoint(tiny_checkpoint, device="cpu")


@dataclass
class Scene:
    rgb: np.ndarray
    depth_mm: np.ndarray
    expected: dict[str, np.ndarray]  # mode -> labels the Segmenter gives in this process

    def classify(self, labels: np.ndarray) -> str | None:
        hits = [m for m, e in self.expected.items() if labels.shape == e.shape and np.array_equal(labels, e)]
        return hits[0] if len(hits) == 1 else None


@pytest.fixture(scope="module")
def scene(segmenter) -> Scene:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    depth_mm = rng.integers(400, 5000, (H, W)).astype(np.uint16)
    depth_mm[:4, :6] = 0  # some invalid pixels, as real sensors have
    expected = {
        "rgbd": segmenter.predict(rgb=rgb, depth=depth_mm),
        "rgb_only": segmenter.predict(rgb=rgb, depth=None),
        "depth_only": segmenter.predict(rgb=None, depth=depth_mm),
    }
    # Precondition: the three paths give different label maps, so each output reveals its mode.
    for a in expected:
        for b in expected:
            assert a == b or not np.array_equal(expected[a], expected[b]), f"{a} and {b} predictions coincide"
    return Scene(rgb, depth_mm, expected)


@dataclass
class Label:
    stamp: float
    frame_id: str
    encoding: str
    shape: tuple[int, int]
    mode: str | None
    labels: np.ndarray


@dataclass
class Live:
    proc: NodeProcess
    h: Harness
    scene: Scene
    overrides: dict
    sent: dict[str, list[float]] = field(default_factory=lambda: {"rgb": [], "depth": []})
    _decoded: list[Label] = field(default_factory=list)

    def labels(self) -> list[Label]:
        recs = self.h.records["labels"]
        for rec in recs[len(self._decoded):]:
            m = rec.msg
            arr = decode_message(m)
            stamp = m.header.stamp.sec + m.header.stamp.nanosec * 1e-9
            self._decoded.append(Label(stamp, m.header.frame_id, m.encoding, arr.shape, self.scene.classify(arr), arr))
        return self._decoded

    def count(self, *, after: float, mode: str) -> int:
        return sum(1 for lb in self.labels() if lb.stamp > after and lb.mode == mode)

    def mode(self) -> str | None:
        return self.h.latest_mode()

    def publish_frame(self, *, rgb: bool = True, depth: bool = True, stamp: float | None = None,
                      rgb_encoding: str = "rgb8", depth_encoding: str = "16UC1") -> float:
        s = self.h.now() if stamp is None else stamp
        sc = self.scene
        if rgb:
            img = {"rgb8": sc.rgb, "bgr8": sc.rgb[..., ::-1].copy()}[rgb_encoding]
            self.h.publish("rgb", Harness.image_msg(img, rgb_encoding, s, "cam_color"))
            self.h.publish("info", self.camera_info(s))
            self.sent["rgb"].append(s)
        if depth:
            d = sc.depth_mm if depth_encoding == "16UC1" else depth_from_image(sc.depth_mm, "16UC1")
            self.h.publish("depth", Harness.image_msg(d, depth_encoding, s, "cam_depth"))
            self.sent["depth"].append(s)
        return s

    @staticmethod
    def camera_info(stamp: float):
        from sensor_msgs.msg import CameraInfo

        info = CameraInfo(width=W, height=H, distortion_model="plumb_bob")
        info.header.stamp.sec, info.header.stamp.nanosec = int(stamp), int((stamp % 1) * 1e9)
        info.header.frame_id = "cam_color"
        info.k = [30.0, 0.0, W / 2, 0.0, 30.0, H / 2, 0.0, 0.0, 1.0]
        return info

    def stream(self, until, *, timeout: float = 15.0, **frame_kwargs) -> bool:
        return self.h.spin_until(until, timeout, tick=lambda: self.publish_frame(**frame_kwargs), period=PERIOD)

    def diag_when(self, pred, timeout: float = 10.0) -> dict:
        ok = self.h.spin_until(lambda: (d := self.h.latest_diagnostics()) is not None and pred(d), timeout)
        d = self.h.latest_diagnostics()
        assert ok, f"diagnostics never matched; last: {d}\n{self.proc.output()}"
        return d


@pytest.fixture(scope="module")
def live(tiny_checkpoint, scene, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("node")
    domain = pick_domain_id()
    # Test-only values on top of config/segment.yaml (same /** form): short timeouts, RELIABLE
    # inputs (best-effort drops frames on loopback), a deeper queue so no test message is lost.
    overrides = {"checkpoint": str(tiny_checkpoint), "rgb_timeout": TIMEOUT, "depth_timeout": TIMEOUT,
                 "qos_reliability": "reliable", "qos_depth": 20, "diagnostics_period": 0.2, "device": "cpu"}
    override_file = tmp / "test_overrides.yaml"
    override_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": overrides}}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROS_DOMAIN_ID", str(domain))
        mp.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        proc = NodeProcess(["--params-file", str(CONFIG), "--params-file", str(override_file),
                            "-r", f"__ns:={NS}", "-r", f"__node:={NAME}", "-r", f"rgb/image:={RGB_TOPIC}"],
                           env=ros_env(domain), log_path=tmp / "node.log")
        h = Harness(domain, NS, NAME, RGB_TOPIC, DEPTH_TOPIC, INFO_TOPIC)
        try:
            up = h.spin_until(lambda: (h.class_names() is not None and h.latest_mode() is not None)
                              or not proc.alive(), 90)
            assert up and proc.alive(), f"node did not come up:\n{proc.output()}"
            yield Live(proc, h, scene, overrides)
        finally:
            h.close()
            proc.stop()


# -- 2. RGB-D in, labels out ----------------------------------------------------------------------
def test_02_rgbd_labels_carry_input_header_and_size(live, scene, segmenter):
    h = live.h
    assert live.mode() == "no_input"  # transient-local: received although published before we joined
    names = h.class_names()
    assert names["class_names"] == segmenter.class_names and names["label_encoding"] == "mono8"
    assert names["palette"] == segmenter.palette.tolist()

    t0 = h.now()
    assert live.stream(lambda: live.count(after=t0, mode="rgbd") >= 8 and len(h.records["colored"]) >= 3,
                       rgb_encoding="bgr8"), live.proc.output()
    assert live.mode() == "rgbd"
    got = [lb for lb in live.labels() if lb.stamp >= t0]
    assert got and all(lb.mode == "rgbd" for lb in got), [lb.mode for lb in got]
    sent = set(live.sent["rgb"])
    for lb in got:
        assert lb.stamp in sent  # the input's stamp, never now()
        assert lb.frame_id == "cam_color"  # from the RGB header in rgbd mode
        assert lb.shape == (H, W) and lb.encoding == "mono8"
    # ~/colored: rgb8 with the checkpoint palette; ~/camera_info: the input's info with the labels' header
    col = h.records["colored"][-1].msg
    assert col.encoding == "rgb8" and (col.height, col.width) == (H, W)
    np.testing.assert_array_equal(decode_message(col), segmenter.palette[scene.expected["rgbd"]])
    label_headers = {(r.msg.header.stamp.sec, r.msg.header.stamp.nanosec, r.msg.header.frame_id)
                     for r in h.records["labels"]}
    infos = h.records["camera_info"]
    assert infos and all((i.msg.header.stamp.sec, i.msg.header.stamp.nanosec, i.msg.header.frame_id) in label_headers
                         for i in infos)
    assert (infos[-1].msg.width, infos[-1].msg.height) == (W, H)
    d = live.diag_when(lambda d: d["mode"] == "rgbd" and float(d["latency_p95_ms"]) > 0)
    assert d["_level"] == DiagnosticStatus.OK and float(d["rgb_rate_hz"]) > 0 and float(d["depth_rate_hz"]) > 0
    assert float(d["latency_p50_ms"]) <= float(d["latency_p95_ms"])
    assert d["rejected_total"] == "0"


# -- 3. depth lost -> rgb_only -> back ----------------------------------------------------------------
def test_03_depth_loss_switches_to_rgb_only_then_back(live, scene):
    h = live.h
    t0 = h.now()
    assert live.stream(lambda: live.mode() == "rgbd" and live.count(after=t0, mode="rgbd") >= 3)
    t_stop = live.sent["depth"][-1]
    modes_before = len(h.records["mode"])
    assert live.stream(lambda: live.count(after=t_stop, mode="rgb_only") >= 5, depth=False), live.proc.output()
    after = [lb for lb in live.labels() if lb.stamp > t_stop]
    # Labels keep flowing and equal Segmenter.predict(rgb=..., depth=None), with the RGB header.
    assert after and all(lb.mode == "rgb_only" for lb in after), [lb.mode for lb in after]
    assert all(lb.frame_id == "cam_color" and lb.stamp in set(live.sent["rgb"]) for lb in after)
    gap = after[0].stamp - t_stop
    print(f"depth lost: first rgb_only label {gap:.3f} s after the last depth frame "
          f"(depth_timeout {TIMEOUT} s + one frame {PERIOD} s)")
    assert TIMEOUT / 2 <= gap <= TIMEOUT + PERIOD + SLACK
    assert "rgb_only" in [r.msg.data for r in h.records["mode"][modes_before:]]
    assert live.mode() == "rgb_only"
    # depth returns
    t_back = live.publish_frame()
    assert live.stream(lambda: live.count(after=t_back, mode="rgbd") >= 3), live.proc.output()
    assert live.mode() == "rgbd"
    assert [lb.mode for lb in live.labels()[-3:]] == ["rgbd"] * 3


# -- 4. RGB lost -> depth_only; both lost -> no_input; recovery ---------------------------------------------
def test_04_rgb_loss_depth_only_then_no_input_then_recovery(live, scene):
    h = live.h
    t0 = h.now()
    assert live.stream(lambda: live.mode() == "rgbd" and live.count(after=t0, mode="rgbd") >= 3)
    t_stop = live.sent["rgb"][-1]
    assert live.stream(lambda: live.count(after=t_stop, mode="depth_only") >= 5, rgb=False,
                       depth_encoding="32FC1"), live.proc.output()
    after = [lb for lb in live.labels() if lb.stamp > t_stop]
    assert after and all(lb.mode == "depth_only" for lb in after), [lb.mode for lb in after]
    # in depth_only the header comes from the depth image
    assert all(lb.frame_id == "cam_depth" and lb.stamp in set(live.sent["depth"]) for lb in after)
    gap = after[0].stamp - t_stop
    print(f"rgb lost: first depth_only label {gap:.3f} s after the last RGB frame")
    assert TIMEOUT / 2 <= gap <= TIMEOUT + PERIOD + SLACK
    assert live.mode() == "depth_only"
    d = live.diag_when(lambda d: d["mode"] == "depth_only")
    assert d["_level"] == DiagnosticStatus.WARN

    # both stop: no_input, and nothing is published
    assert h.spin_until(lambda: live.mode() == "no_input", 10), live.mode()
    h.spin(0.2)
    n_labels, n_colored, n_info = (len(h.records[k]) for k in ("labels", "colored", "camera_info"))
    h.spin(3 * TIMEOUT + 0.3)
    assert (len(h.records["labels"]), len(h.records["colored"]), len(h.records["camera_info"])) == \
        (n_labels, n_colored, n_info)
    d = live.diag_when(lambda d: d["mode"] == "no_input")
    assert d["_level"] == DiagnosticStatus.ERROR

    # recovery
    t_rec = live.publish_frame()
    assert live.stream(lambda: live.count(after=t_rec, mode="rgbd") >= 3), live.proc.output()
    assert live.mode() == "rgbd"
    seen = [r.msg.data for r in h.records["mode"]]
    for a, b in (("rgbd", "depth_only"), ("depth_only", "no_input"), ("no_input", "rgbd")):
        assert any(x == a and y == b for x, y in zip(seen, seen[1:])), seen


# -- 5. malformed burst ----------------------------------------------------------------------------------------
def test_05_malformed_burst_is_rejected_counted_and_survived(live, scene, segmenter):
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    h = live.h
    img = Harness.image_msg
    small_depth = np.ascontiguousarray(scene.depth_mm[::2, ::2])  # 16x20: size mismatch with RGB
    bad = {  # name -> (topic key, message factory(stamp), counter key)
        "rgb unsupported encoding": ("rgb", lambda s: img(None, "yuv422", s, "cam_color", height=H, width=W,
                                                          step=2 * W, data=bytes(2 * W * H)), "rgb.unsupported_encoding"),
        "rgb data too short": ("rgb", lambda s: img(None, "rgb8", s, "cam_color", height=H, width=W, step=3 * W,
                                                    data=bytes(3 * W * H - 7)), "rgb.data_too_short"),
        "rgb zero size": ("rgb", lambda s: img(None, "rgb8", s, "cam_color", height=0, width=0, step=0, data=b""),
                          "rgb.zero_size"),
        "rgb step too small": ("rgb", lambda s: img(None, "rgb8", s, "cam_color", height=H, width=W, step=3 * W - 3,
                                                    data=bytes(3 * W * H)), "rgb.bad_step"),
        "depth wrong encoding": ("depth", lambda s: img(scene.rgb, "rgb8", s, "cam_depth"),
                                 "depth.unsupported_encoding"),
        "depth data too short": ("depth", lambda s: img(None, "16UC1", s, "cam_depth", height=H, width=W, step=2 * W,
                                                        data=bytes(10)), "depth.data_too_short"),
        "depth zero size": ("depth", lambda s: img(None, "32FC1", s, "cam_depth", height=0, width=W, step=4 * W,
                                                   data=b""), "depth.zero_size"),
    }
    t0 = h.now()
    assert live.stream(lambda: live.mode() == "rgbd" and live.count(after=t0, mode="rgbd") >= 3)
    before = live.diag_when(lambda d: True)
    assert before["rejected_total"] == "0"

    # One malformed message per tick, between good RGB-D frames.
    for name, (key, make, _) in bad.items():
        s = live.publish_frame()
        h.publish(key, make(s))
        h.spin(PERIOD)
    # all-invalid depth (counts as missing), a size mismatch, and a stamp jumping back 100 s (bag loop)
    s = live.publish_frame(depth=False)
    h.publish("depth", img(np.zeros((H, W), np.uint16), "16UC1", s, "cam_depth"))
    h.spin(PERIOD)
    s_mismatch = live.publish_frame(depth=False)
    h.publish("depth", img(small_depth, "16UC1", s_mismatch, "cam_depth"))
    h.spin(PERIOD)
    s_back = live.publish_frame(stamp=h.now() - 100.0)
    h.spin(PERIOD)
    # An incompatible publisher: best-effort into the node's reliable subscription.
    be_pub = h.node.create_publisher(Image, RGB_TOPIC, QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))

    t_good = h.now()
    assert live.stream(lambda: live.count(after=t_good, mode="rgbd") >= 5), live.proc.output()
    assert live.proc.alive()
    by_stamp = {lb.stamp: lb for lb in live.labels()}
    # the mismatched depth was resized to the RGB size (nearest) and used
    expect_mismatch = segmenter.predict(rgb=scene.rgb, depth=resize_nearest(small_depth, H, W))
    assert s_mismatch in by_stamp and np.array_equal(by_stamp[s_mismatch].labels, expect_mismatch)
    # after the backwards jump the pairing state was reset and that pair was still segmented
    assert s_back in by_stamp and by_stamp[s_back].mode == "rgbd"

    want = {k: 1 for _, _, k in bad.values()} | {"depth.low_valid_depth": 1, "depth.size_mismatch": 1}
    d = live.diag_when(lambda d: all(int(d.get(f"rejected.{k}", 0)) >= v for k, v in want.items())
                       and int(d["incompatible_qos_events"]) >= 1 and d["pairing_resets"] == "1")
    for k, v in want.items():
        assert int(d[f"rejected.{k}"]) == v, (k, d)
    assert int(d["rejected_total"]) == sum(want.values())
    assert d["pairing_resets.rgb"] == "1"
    log = live.proc.output()
    assert f"dropped a message on {RGB_TOPIC}: field 'step'" in log
    assert f"dropped a message on {DEPTH_TOPIC}: field 'data'" in log
    assert f"dropped a message on {RGB_TOPIC}: field 'encoding'" in log
    assert "resizing depth to the RGB size" in log
    assert "incompatible QoS" in log and "qos_reliability:=best_effort" in log
    assert "went backwards" in log
    h.node.destroy_publisher(be_pub)


# -- 6. parameters from config/segment.yaml ----------------------------------------------------------------------
def _call(h: Harness, future, timeout=10.0):
    assert h.spin_until(future.done, timeout), "parameter service call timed out"
    return future.result()


def test_06_parameters_load_from_config_yaml(live, segmenter):
    from rcl_interfaces.msg import ParameterType
    from rclpy.parameter import Parameter, parameter_value_to_python
    from rclpy.parameter_client import AsyncParameterClient

    from m3l_ros.segment_node import PARAMS

    h = live.h
    config = yaml.safe_load(CONFIG.read_text())["/**"]["ros__parameters"]
    declared = {p.name: p for p in PARAMS}
    assert set(config) == set(declared), "config/segment.yaml and the declared parameters differ"
    assert all(config[k] == declared[k].default for k in config), "config/segment.yaml values differ from defaults"

    client = AsyncParameterClient(h.node, f"{NS}/{NAME}")
    assert client.wait_for_services(timeout_sec=10.0)
    names = sorted(declared) + ["class_names", "use_sim_time"]
    resp = _call(h, client.get_parameters(names))
    values = {n: parameter_value_to_python(v) for n, v in zip(names, resp.values)}
    for k in config:
        expected = live.overrides.get(k, config[k])  # the test file was loaded after config/segment.yaml
        assert values[k] == pytest.approx(expected) if isinstance(expected, float) else values[k] == expected, k
    assert values["class_names"] == segmenter.class_names
    assert values["use_sim_time"] is False

    desc = {d.name: d for d in _call(h, client.describe_parameters(names)).descriptors}
    assert all(desc[n].description for n in names if n != "use_sim_time")
    assert desc["checkpoint"].read_only and desc["class_names"].read_only and desc["device"].read_only
    assert not desc["rgb_timeout"].read_only
    assert desc["min_valid_depth_fraction"].floating_point_range[0].to_value == 1.0
    assert desc["class_names"].type == ParameterType.PARAMETER_STRING_ARRAY

    results = _call(h, client.set_parameters([Parameter("sync_slop", value=0.03)])).results
    assert results[0].successful
    assert not _call(h, client.set_parameters([Parameter("class_names", value=["x"])])).results[0].successful
    assert not _call(h, client.set_parameters([Parameter("rgb_timeout", value=100.0)])).results[0].successful
    assert _call(h, client.set_parameters([Parameter("sync_slop", value=0.02)])).results[0].successful


# -- 7. SIGINT ---------------------------------------------------------------------------------------------------------
def test_07_sigint_exits_zero_without_traceback(live):
    live.proc.send(signal.SIGINT)
    rc = live.proc.wait(15)
    out = live.proc.output()
    assert rc == 0, out
    assert "Traceback" not in out, out


# -- own processes: use_sim_time + SIGTERM, start-up errors ------------------------------------------------------------------------
def _start(tmp_path, args):
    domain = pick_domain_id()
    return NodeProcess(["-r", f"__ns:={NS}_{os.getpid()}", *args], env=ros_env(domain), log_path=tmp_path / "node.log")


def test_sim_time_watchdog_follows_clock_then_sigterm(tiny_checkpoint, scene, tmp_path):
    """With use_sim_time the watchdog runs on /clock: a paused clock is not a lost stream."""
    from rosgraph_msgs.msg import Clock

    domain = pick_domain_id()
    ns = f"{NS}_sim"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROS_DOMAIN_ID", str(domain))
        mp.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        proc = NodeProcess(["-p", f"checkpoint:={tiny_checkpoint}", "-p", "device:=cpu", "-p", "use_sim_time:=true",
                            "-p", "qos_reliability:=reliable", "-p", f"rgb_timeout:={TIMEOUT}",
                            "-p", f"depth_timeout:={TIMEOUT}", "-r", f"__ns:={ns}", "-r", f"__node:={NAME}"],
                           env=ros_env(domain), log_path=tmp_path / "node.log")
        h = Harness(domain, ns, NAME, f"{ns}/rgb/image", f"{ns}/depth/image", f"{ns}/rgb/camera_info")
        live = Live(proc, h, scene, {})
        clock_pub = h.node.create_publisher(Clock, "/clock", 10)
        sim = [1000.0]

        def tick(*, depth: bool = True, advance: float = PERIOD) -> None:
            sim[0] += advance
            msg = Clock()
            msg.clock.sec, msg.clock.nanosec = int(sim[0]), int(round((sim[0] % 1) * 1e9))
            clock_pub.publish(msg)
            live.publish_frame(depth=depth, stamp=sim[0])

        try:
            assert h.spin_until(lambda: h.latest_mode() is not None or not proc.alive(), 90), proc.output()
            assert h.spin_until(lambda: live.count(after=0, mode="rgbd") >= 3, 15, tick=tick, period=PERIOD), \
                proc.output()
            assert live.mode() == "rgbd"
            # Depth stops while the clock is paused (wall time runs on): still rgbd, no switch.
            h.spin_until(lambda: False, 4 * TIMEOUT, tick=lambda: tick(depth=False, advance=0.0), period=PERIOD)
            assert live.mode() == "rgbd"
            assert all(lb.mode == "rgbd" for lb in live.labels())
            # The clock moves on past depth_timeout: now depth is lost.
            t_stop = live.sent["depth"][-1]
            assert h.spin_until(lambda: live.count(after=t_stop, mode="rgb_only") >= 3, 15,
                                tick=lambda: tick(depth=False), period=PERIOD), proc.output()
            assert live.mode() == "rgb_only"
            first = min(lb.stamp for lb in live.labels() if lb.mode == "rgb_only")
            # in sim seconds, quantised to frames: it no longer depends on machine load
            assert TIMEOUT - PERIOD - 1e-6 <= first - t_stop <= TIMEOUT + 2 * PERIOD + 1e-6

            proc.send(signal.SIGTERM)
            rc = proc.wait(15)
            assert rc == 0, proc.output()
            assert "Traceback" not in proc.output()
        finally:
            h.close()
            proc.stop()


@pytest.mark.parametrize("args, needles", [
    (["-p", "checkpoint:=/nonexistent/model.safetensors"],
     ["checkpoint file not found: /nonexistent/model.safetensors", "parameter 'checkpoint'"]),
    (["-p", "device:=tpu"], ["parameter 'device'", "tpu"]),
    (["-p", "rgb_timeout:=-1.0"], ["parameter 'rgb_timeout'"]),
])
def test_startup_errors_are_clear(tmp_path, args, needles):
    proc = _start(tmp_path, args)
    try:
        rc = proc.wait(60)
        out = proc.output()
        assert rc == 1, out
        for n in needles:
            assert n in out, out
        assert "Traceback" not in out, out
    finally:
        proc.stop()


def test_empty_checkpoint_means_the_bundled_demo_model(monkeypatch, tmp_path):
    import m3l_ros.segment_node as sn

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
    from m3l_ros.segment_node import class_names_json

    payload = json.loads(class_names_json(["floor", "wall"], np.array([[1, 2, 3], [4, 5, 6]], np.uint8)))
    assert payload == {"class_names": ["floor", "wall"], "palette": [[1, 2, 3], [4, 5, 6]], "label_encoding": "mono8"}
    assert json.loads(class_names_json([str(i) for i in range(300)], np.zeros((300, 3))))["label_encoding"] == "16UC1"


# -- launch file ---------------------------------------------------------------------------------------------------------
LAUNCH_ARGS = {"checkpoint", "params_file", "device", "namespace", "use_sim_time", "rgb_topic", "depth_topic",
               "camera_info_topic"}


def test_launch_file_is_valid_python_and_declares_documented_arguments():
    tree = ast.parse(LAUNCH.read_text(), filename=str(LAUNCH))
    doc = ast.get_docstring(tree)
    assert doc and "ros2 launch m3l_ros segment.launch.py" in doc
    funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in funcs
    args = next(n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "ARGUMENTS")
    declared = {}
    for elt in args.elts:
        name, default, description = elt.elts
        declared[name.value] = (default, description)
        text = description.value if isinstance(description, ast.Constant) else ast.unparse(description)
        assert len(text) > 15, f"launch argument {name.value} needs a description"
    assert set(declared) == LAUNCH_ARGS
    assert declared["rgb_topic"][0].value == "/camera/camera/color/image_raw"
    assert declared["depth_topic"][0].value == "/camera/camera/aligned_depth_to_color/image_raw"
    assert declared["camera_info_topic"][0].value == "/camera/camera/color/camera_info"
    src = LAUNCH.read_text()
    for needle in ('executable="segment_node"', 'package=PACKAGE', 'PACKAGE = "m3l_ros"', "get_package_share_directory",
                   "DeclareLaunchArgument(", "description=description", '("rgb/image"', '("depth/image"',
                   '("rgb/camera_info"'):
        assert needle in src, needle


def test_launch_description_builds_with_launch_ros():
    pytest.importorskip("launch_ros")
    from launch import LaunchDescription

    spec = importlib.util.spec_from_file_location("segment_launch", LAUNCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ld = mod.generate_launch_description()
    assert isinstance(ld, LaunchDescription)
    args = {a.name: a for a in ld.get_launch_arguments()}
    assert set(args) == LAUNCH_ARGS
    assert all(a.description for a in args.values())
    assert args["params_file"].default_value[0].text.endswith("config/segment.yaml")


def test_launch_node_action_with_stub_launch_modules(monkeypatch):
    """Without launch_ros installed: run the launch file's logic against minimal stand-ins that record
    what it builds (catches errors the AST check cannot; the real API is covered by the test above)."""
    import types

    class Recorder:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

    class LaunchConfiguration(Recorder):
        def perform(self, context):
            return context[self.args[0]]

    mods = {
        "launch": types.SimpleNamespace(LaunchDescription=Recorder),
        "launch.actions": types.SimpleNamespace(DeclareLaunchArgument=Recorder, OpaqueFunction=Recorder),
        "launch.substitutions": types.SimpleNamespace(LaunchConfiguration=LaunchConfiguration),
        "launch_ros.actions": types.SimpleNamespace(Node=Recorder),
        "launch_ros.parameter_descriptions": types.SimpleNamespace(ParameterValue=Recorder),
        "launch_ros": types.SimpleNamespace(),
    }
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location("segment_launch_stubbed", LAUNCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ld = mod.generate_launch_description()
    actions = ld.args[0]
    declared = {a.kwargs.get("name", a.args[0] if a.args else None): a.kwargs for a in actions[:-1]}
    assert set(declared) == LAUNCH_ARGS and all(k["description"] for k in declared.values())
    assert declared["params_file"]["default_value"].endswith("config/segment.yaml")
    launch_node = actions[-1].kwargs["function"]

    context = {"use_sim_time": "true", "checkpoint": "", "device": "cuda", "params_file": "/p.yaml",
               "namespace": "robot1", "rgb_topic": "/a", "depth_topic": "/b", "camera_info_topic": "/c"}
    (node,) = launch_node(context)
    kw = node.kwargs
    assert kw["package"] == "m3l_ros" and kw["executable"] == "segment_node"
    overrides = kw["parameters"][1]
    assert overrides["use_sim_time"] is True
    assert "checkpoint" not in overrides  # empty: the params file decides
    assert overrides["device"].args == ("cuda",) and overrides["device"].kwargs == {"value_type": str}
    assert [(src, cfg.args[0]) for src, cfg in kw["remappings"]] == [
        ("rgb/image", "rgb_topic"), ("depth/image", "depth_topic"), ("rgb/camera_info", "camera_info_topic")]
