"""Process-level tests of segment_node with real rclpy (Jazzy wheels) and a tiny random checkpoint.

One node process serves the flow tests of this module (``live``); each test first establishes
the state it needs (RGB-D streaming) and asserts on what happens after its own start (label
stamps, counter deltas), so the tests pass in any order. Short-lived processes of their own
check use_sim_time and start-up errors. Expected labels are computed in this process with the
same checkpoint and ``Segmenter``. No wall-clock time is asserted: label stamps, counts and
ordering only (sim seconds where time matters).
"""
from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("rclpy")  # every test here runs a node process (ROS-free node tests: test_node_variants.py)
from diagnostic_msgs.msg import DiagnosticStatus

from ros_helpers import REPO, Harness, NodeProcess, pick_domain_id, ros_env

from m3l_core.vocab import DEPTH_ONLY, NO_INPUT, RGB_ONLY, RGBD, UNSYNCED
from m3l_ros.image_codec import decode_message, depth_from_image, resize_nearest

H, W = 32, 40
TIMEOUT = 0.3  # rgb_timeout and depth_timeout of the node under test
PERIOD = 0.05  # the test cameras publish at 20 Hz
NS, NAME = "/m3l_test", "seg"
RGB_TOPIC = "/test_cam/color/image_raw"  # remapped on the command line: proves rgb/image is remappable
DEPTH_TOPIC = f"{NS}/depth/image"  # the default relative name, resolved in the namespace
INFO_TOPIC = f"{NS}/rgb/camera_info"
CONFIG = REPO / "config" / "segment.yaml"


# -- fixtures -------------------------------------------------------------------------------
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
        RGBD: segmenter.predict(rgb=rgb, depth=depth_mm),
        RGB_ONLY: segmenter.predict(rgb=rgb, depth=None),  # also what unsynced publishes
        DEPTH_ONLY: segmenter.predict(rgb=None, depth=depth_mm),
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
                      rgb_encoding: str = "rgb8", depth_encoding: str = "16UC1", depth_offset: float = 0.0) -> float:
        s = self.h.now() if stamp is None else stamp
        sc = self.scene
        if rgb:
            img = {"rgb8": sc.rgb, "bgr8": sc.rgb[..., ::-1].copy()}[rgb_encoding]
            self.h.publish("rgb", Harness.image_msg(img, rgb_encoding, s, "cam_color"))
            self.h.publish("info", self.camera_info(s))
            self.sent["rgb"].append(s)
        if depth:
            d = sc.depth_mm if depth_encoding == "16UC1" else depth_from_image(sc.depth_mm, "16UC1")
            self.h.publish("depth", Harness.image_msg(d, depth_encoding, s + depth_offset, "cam_depth"))
            self.sent["depth"].append(s + depth_offset)
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

    def log_has(self, *needles: str, timeout: float = 20.0) -> bool:
        """All needles in the node's log (which reaches the file with some delay)."""
        return self.h.spin_until(lambda: all(n in self.proc.output() for n in needles), timeout)

    def start_rgbd(self) -> float:
        """Stream RGB-D until the node is in rgbd and labels flow; a stamp after which a test looks."""
        t0 = self.h.now()
        assert self.stream(lambda: self.mode() == RGBD and self.count(after=t0, mode=RGBD) >= 3), self.proc.output()
        return self.h.now()

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
                 "qos_reliability": "reliable", "qos_depth": 20, "diagnostics_period": 0.2, "device": "cpu",
                 "max_input_pixels": H * W}
    override_file = tmp / "test_overrides.yaml"
    override_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": overrides}}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROS_DOMAIN_ID", str(domain))
        mp.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        proc = NodeProcess(["--params-file", str(CONFIG), "--params-file", str(override_file),
                            "-r", f"__ns:={NS}", "-r", f"__node:={NAME}", "-r", f"rgb/image:={RGB_TOPIC}"],
                           env=ros_env(domain), log_path=tmp / "node.log")
        h = None
        try:
            h = Harness(domain, NS, NAME, RGB_TOPIC, DEPTH_TOPIC, INFO_TOPIC)
            up = h.spin_until(lambda: (h.class_names() is not None and h.latest_mode() is not None)
                              or not proc.alive(), 90)
            assert up and proc.alive(), f"node did not come up:\n{proc.output()}"
            yield Live(proc, h, scene, overrides)
        finally:
            if h is not None:
                h.close()
            proc.stop()


# -- RGB-D in, labels out ------------------------------------------------------------------------------
def test_rgbd_labels_carry_input_header_and_size(live, scene, segmenter):
    h = live.h
    assert live.mode() in (NO_INPUT, RGBD)  # transient-local: received although published before we joined
    names = h.class_names()
    assert names["class_names"] == segmenter.class_names and names["label_encoding"] == "mono8"
    assert names["palette"] == segmenter.palette.tolist()

    t0 = h.now()
    n_colored = len(h.records["colored"])
    assert live.stream(lambda: live.count(after=t0, mode=RGBD) >= 8 and len(h.records["colored"]) >= n_colored + 3,
                       rgb_encoding="bgr8"), live.proc.output()
    assert live.mode() == RGBD
    got = [lb for lb in live.labels() if lb.stamp >= t0]
    assert got and all(lb.mode == RGBD for lb in got), [lb.mode for lb in got]
    sent = set(live.sent["rgb"])
    for lb in got:
        assert lb.stamp in sent  # the input's stamp, never now()
        assert lb.frame_id == "cam_color"  # from the RGB header in rgbd mode
        assert lb.shape == (H, W) and lb.encoding == "mono8"
    # ~/colored: rgb8 with the checkpoint palette; ~/camera_info: the input's info with the labels' header
    col = h.records["colored"][-1].msg
    assert col.encoding == "rgb8" and (col.height, col.width) == (H, W)
    np.testing.assert_array_equal(decode_message(col), segmenter.palette[scene.expected[RGBD]])
    label_headers = {(r.msg.header.stamp.sec, r.msg.header.stamp.nanosec, r.msg.header.frame_id)
                     for r in h.records["labels"]}
    infos = h.records["camera_info"]
    assert infos and all((i.msg.header.stamp.sec, i.msg.header.stamp.nanosec, i.msg.header.frame_id) in label_headers
                         for i in infos)
    assert (infos[-1].msg.width, infos[-1].msg.height) == (W, H)
    d = live.diag_when(lambda d: d["mode"] == RGBD and float(d["latency_p95_ms"]) > 0
                       and int(d["received.rgb"]) >= 8 and int(d["received.depth"]) >= 8)
    assert d["_level"] == DiagnosticStatus.OK and float(d["rgb_rate_hz"]) > 0 and float(d["depth_rate_hz"]) > 0
    assert float(d["latency_p50_ms"]) <= float(d["latency_p95_ms"])
    assert d["qos.rgb"] == d["qos.depth"] == "reliable"  # the explicit value, not auto
    assert d["backend"] and d["healthy_mode"] == RGBD and int(d["num_threads"]) >= 1


# -- depth lost -> rgb_only -> back ----------------------------------------------------------------------
def test_depth_loss_switches_to_rgb_only_then_back(live, scene):
    h = live.h
    live.start_rgbd()
    t_stop = live.sent["depth"][-1]
    modes_before = len(h.records["mode"])
    assert live.stream(lambda: live.count(after=t_stop, mode=RGB_ONLY) >= 5, depth=False), live.proc.output()
    after = [lb for lb in live.labels() if lb.stamp > t_stop]
    # Labels keep flowing: rgbd labels of frames still waiting for their pair are possible only before the
    # switch; from the first rgb_only label on, every label equals Segmenter.predict(rgb=..., depth=None).
    first = next(k for k, lb in enumerate(after) if lb.mode == RGB_ONLY)
    assert all(lb.mode == RGB_ONLY for lb in after[first:]), [lb.mode for lb in after]
    assert all(lb.mode is None or lb.mode == RGB_ONLY for lb in after[:first]) and first == 0
    assert all(lb.frame_id == "cam_color" and lb.stamp in set(live.sent["rgb"]) for lb in after)
    seen = [r.msg.data for r in h.records["mode"][modes_before:]]
    assert RGB_ONLY in seen and DEPTH_ONLY not in seen and NO_INPUT not in seen, seen
    assert live.mode() == RGB_ONLY
    # depth returns
    t_back = live.publish_frame()
    assert live.stream(lambda: live.count(after=t_back, mode=RGBD) >= 3), live.proc.output()
    assert live.mode() == RGBD
    assert [lb.mode for lb in live.labels()[-3:]] == [RGBD] * 3


# -- RGB lost -> depth_only; both lost -> no_input; recovery -------------------------------------------------
def test_rgb_loss_depth_only_then_no_input_then_recovery(live, scene):
    h = live.h
    live.start_rgbd()
    t_stop = live.sent["rgb"][-1]
    assert live.stream(lambda: live.count(after=t_stop, mode=DEPTH_ONLY) >= 5, rgb=False,
                       depth_encoding="32FC1"), live.proc.output()
    after = [lb for lb in live.labels() if lb.stamp > t_stop]
    assert after and all(lb.mode == DEPTH_ONLY for lb in after), [lb.mode for lb in after]
    # in depth_only the header comes from the depth image
    assert all(lb.frame_id == "cam_depth" and lb.stamp in set(live.sent["depth"]) for lb in after)
    assert live.mode() == DEPTH_ONLY
    d = live.diag_when(lambda d: d["mode"] == DEPTH_ONLY)
    assert d["_level"] == DiagnosticStatus.WARN

    # both stop: no_input, and nothing is published
    assert h.spin_until(lambda: live.mode() == NO_INPUT, 10), live.mode()
    h.spin(0.2)
    n_labels, n_colored, n_info = (len(h.records[k]) for k in ("labels", "colored", "camera_info"))
    h.spin(3 * TIMEOUT + 0.3)
    assert (len(h.records["labels"]), len(h.records["colored"]), len(h.records["camera_info"])) == \
        (n_labels, n_colored, n_info)
    d = live.diag_when(lambda d: d["mode"] == NO_INPUT)
    assert d["_level"] == DiagnosticStatus.ERROR

    # recovery
    t_rec = live.publish_frame()
    assert live.stream(lambda: live.count(after=t_rec, mode=RGBD) >= 3), live.proc.output()
    assert live.mode() == RGBD
    seen = [r.msg.data for r in h.records["mode"]]
    for a, b in ((RGBD, DEPTH_ONLY), (DEPTH_ONLY, NO_INPUT), (NO_INPUT, RGBD)):
        assert any(x == a and y == b for x, y in zip(seen, seen[1:])), seen


def test_both_streams_stopping_together_go_straight_to_no_input(live):
    h = live.h
    live.start_rgbd()
    n_modes = len(h.records["mode"])
    assert h.spin_until(lambda: live.mode() == NO_INPUT, 10), live.mode()
    seen = [r.msg.data for r in h.records["mode"][n_modes:]]
    assert set(seen) <= {RGBD, NO_INPUT} and seen[-1] == NO_INPUT, seen  # never rgb_only or depth_only


# -- stamp offset: unsynced, RGB keeps flowing ---------------------------------------------------------------
def test_stamp_offset_reports_unsynced_and_keeps_labels_flowing(live, scene):
    h = live.h
    live.start_rgbd()
    n_modes = len(h.records["mode"])
    t0 = live.sent["rgb"][-1]
    # depth stamps 0.5 s ahead (e.g. two cameras without a shared clock): nothing can pair
    assert live.stream(lambda: live.count(after=t0, mode=RGB_ONLY) >= 5 and live.mode() == UNSYNCED,
                       depth_offset=0.5), live.proc.output()
    seen = [r.msg.data for r in h.records["mode"][n_modes:]]
    assert UNSYNCED in seen and RGB_ONLY not in seen and DEPTH_ONLY not in seen, seen
    after = [lb for lb in live.labels() if lb.stamp > t0]
    first = next(k for k, lb in enumerate(after) if lb.mode == RGB_ONLY)
    # from the first RGB-alone label on: every label is the learned-depth-token prediction, RGB header
    assert all(lb.mode == RGB_ONLY and lb.frame_id == "cam_color" for lb in after[first:])
    def diag_unsynced() -> bool:
        d = h.latest_diagnostics()
        return d is not None and d["mode"] == UNSYNCED and "stamp_offset_s" in d \
            and int(d.get("processed.unsynced", 0)) >= 3

    assert live.stream(diag_unsynced, depth_offset=0.5), h.latest_diagnostics()  # the camera keeps running
    d = h.latest_diagnostics()
    assert d["_level"] == DiagnosticStatus.WARN and "sync_slop" in d["_message"]
    assert float(d["stamp_offset_s"]) == pytest.approx(-0.5, abs=0.1)  # RGB - depth, arrival jitter allowed
    assert live.log_has("sync_slop", "mode -> unsynced"), live.proc.output()
    # stamps agree again: back to rgbd with fused labels
    t_back = live.publish_frame()
    assert live.stream(lambda: live.count(after=t_back, mode=RGBD) >= 3), live.proc.output()
    assert live.mode() == RGBD


# -- malformed burst ----------------------------------------------------------------------------------------
def test_malformed_burst_is_rejected_counted_and_survived(live, scene, segmenter):
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
        "rgb too many pixels": ("rgb", lambda s: img(np.zeros((H + 1, W, 3), np.uint8), "rgb8", s, "cam_color"),
                                "rgb.too_many_pixels"),
        "depth wrong encoding": ("depth", lambda s: img(scene.rgb, "rgb8", s, "cam_depth"),
                                 "depth.unsupported_encoding"),
        "depth data too short": ("depth", lambda s: img(None, "16UC1", s, "cam_depth", height=H, width=W, step=2 * W,
                                                        data=bytes(10)), "depth.data_too_short"),
        "depth zero size": ("depth", lambda s: img(None, "32FC1", s, "cam_depth", height=0, width=W, step=4 * W,
                                                   data=b""), "depth.zero_size"),
    }
    live.start_rgbd()
    before = live.diag_when(lambda d: True)

    def delta(d: dict, key: str) -> int:
        return int(d.get(key, 0)) - int(before.get(key, 0))

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
    assert live.stream(lambda: live.count(after=t_good, mode=RGBD) >= 5), live.proc.output()
    assert live.proc.alive()
    by_stamp = {lb.stamp: lb for lb in live.labels()}
    # the mismatched depth was resized to the RGB size (nearest) and used
    expect_mismatch = segmenter.predict(rgb=scene.rgb, depth=resize_nearest(small_depth, H, W))
    assert s_mismatch in by_stamp and np.array_equal(by_stamp[s_mismatch].labels, expect_mismatch)
    # after the backwards jump the pairing state was reset and that pair was still segmented
    assert s_back in by_stamp and by_stamp[s_back].mode == RGBD

    want = {k: 1 for _, _, k in bad.values()} | {"depth.low_valid_depth": 1}
    d = live.diag_when(lambda d: all(delta(d, f"rejected.{k}") >= v for k, v in want.items())
                       and delta(d, "incompatible_qos_events") >= 1 and delta(d, "pairing_resets") == 1)
    for k, v in want.items():
        assert delta(d, f"rejected.{k}") == v, (k, d)
    assert int(d["rejected.depth.size_mismatch"]) >= 1  # counted per resized pair (first occurrence: this test or later)
    assert delta(d, "rejected_total") == sum(want.values()) + delta(d, "rejected.depth.size_mismatch")
    assert delta(d, "pairing_resets.rgb") == 1
    assert live.log_has(f"dropped a message on {RGB_TOPIC}: field 'step'",
                        f"dropped a message on {DEPTH_TOPIC}: field 'data'",
                        f"dropped a message on {RGB_TOPIC}: field 'encoding'",
                        f"dropped a message on {RGB_TOPIC}: field 'height*width'", "max_input_pixels",
                        "resizing depth to the RGB size", "incompatible QoS", "qos_reliability:=auto",
                        "went backwards"), live.proc.output()
    h.node.destroy_publisher(be_pub)


# -- parameters from config/segment.yaml ----------------------------------------------------------------------
def _call(h: Harness, future, timeout=10.0):
    assert h.spin_until(future.done, timeout), "parameter service call timed out"
    return future.result()


def test_parameters_load_from_config_yaml(live, segmenter):
    from rcl_interfaces.msg import ParameterType
    from rclpy.parameter import Parameter, parameter_value_to_python
    from rclpy.parameter_client import AsyncParameterClient

    from m3l_ros.node_params import PARAMS

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
    assert desc["qos_reliability"].read_only and desc["image_transport"].read_only and desc["backend"].read_only
    assert not desc["rgb_timeout"].read_only
    assert desc["min_valid_depth_fraction"].floating_point_range[0].to_value == 1.0
    assert desc["class_names"].type == ParameterType.PARAMETER_STRING_ARRAY

    results = _call(h, client.set_parameters([Parameter("sync_slop", value=0.03)])).results
    assert results[0].successful
    assert not _call(h, client.set_parameters([Parameter("class_names", value=["x"])])).results[0].successful
    assert not _call(h, client.set_parameters([Parameter("rgb_timeout", value=100.0)])).results[0].successful
    assert _call(h, client.set_parameters([Parameter("sync_slop", value=0.02)])).results[0].successful


# -- own processes: use_sim_time, start-up errors ------------------------------------------------------------------
def _start(tmp_path, args):
    domain = pick_domain_id()
    return NodeProcess(["-r", f"__ns:={NS}_{os.getpid()}", *args], env=ros_env(domain), log_path=tmp_path / "node.log")


def test_sim_time_watchdog_follows_clock_and_a_stalled_clock_is_reported(tiny_checkpoint, scene, tmp_path):
    """With use_sim_time the watchdog runs on /clock: a paused clock is not a lost stream, but a clock
    that stands still while frames keep coming is reported (diagnostics WARN), never silently OK."""
    from rosgraph_msgs.msg import Clock

    domain = pick_domain_id()
    ns = f"{NS}_sim"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROS_DOMAIN_ID", str(domain))
        mp.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        proc = NodeProcess(["-p", f"checkpoint:={tiny_checkpoint}", "-p", "device:=cpu", "-p", "use_sim_time:=true",
                            "-p", "qos_reliability:=reliable", "-p", f"rgb_timeout:={TIMEOUT}",
                            "-p", f"depth_timeout:={TIMEOUT}", "-p", "diagnostics_period:=0.5",
                            "-r", f"__ns:={ns}", "-r", f"__node:={NAME}"],
                           env=ros_env(domain), log_path=tmp_path / "node.log")
        try:
            h = Harness(domain, ns, NAME, f"{ns}/rgb/image", f"{ns}/depth/image", f"{ns}/rgb/camera_info")
        except BaseException:
            proc.stop()
            raise
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
            assert h.spin_until(lambda: live.count(after=0, mode=RGBD) >= 3, 15, tick=tick, period=PERIOD), \
                proc.output()
            assert live.mode() == RGBD
            # Depth stops while the clock is paused (wall time runs on): still rgbd, no switch.
            h.spin_until(lambda: False, 4 * TIMEOUT, tick=lambda: tick(depth=False, advance=0.0), period=PERIOD)
            assert live.mode() == RGBD
            assert all(lb.mode == RGBD for lb in live.labels())
            # The clock moves on past depth_timeout (+ loss_grace): now depth is lost.
            t_stop = live.sent["depth"][-1]
            assert h.spin_until(lambda: live.count(after=t_stop, mode=RGB_ONLY) >= 3, 15,
                                tick=lambda: tick(depth=False), period=PERIOD), proc.output()
            assert live.mode() == RGB_ONLY
            first = min(lb.stamp for lb in live.labels() if lb.mode == RGB_ONLY)
            # in sim seconds, quantised to frames: it no longer depends on machine load
            grace = 0.15
            assert TIMEOUT + grace - PERIOD - 1e-6 <= first - t_stop <= TIMEOUT + grace + 2 * PERIOD + 1e-6
            # /clock stops for good while frames keep coming: the frozen watchdog is reported
            d = live.diag_when(lambda d: float(d["clock_stalled_s"]) >= 3.5, timeout=30)  # (shown rounded)
            assert d["_level"] >= DiagnosticStatus.WARN and "node clock has not moved" in d["_message"]
            assert h.spin_until(lambda: "use_sim_time is true but the node clock has not moved" in proc.output(), 20)

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
    (["-p", "qos_reliability:=sometimes"], ["parameter 'qos_reliability'", "auto, reliable, best_effort"]),
    (["-p", "image_transport:=theora"], ["parameter 'image_transport'", "raw, compressed"]),
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
