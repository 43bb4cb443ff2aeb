"""Replay with dropout injection and the replay evaluator (issue 6, must-show 1).

Pure tests cover window parsing, the scheduler and the report analysis. Process tests run
``python -m m3l_ros.replay`` (and ``m3l_ros.replay_eval``) as subprocesses on a private
ROS domain and check what a subscriber in this process receives.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from m3l_ros import bag_io
from m3l_ros.bag_io import BagInfo, BagTopics, BagWriterConfig, TopicInfo
from m3l_ros.dropout import (
    DROP_END, DROP_START, DropoutTracker, DropWindow, PlaybackScheduler, parse_drop, shift_stamp)
from m3l_ros.replay import ReplayConfig, parse_remap, parse_wait_topic, plan_topics
from m3l_ros.replay_eval import (
    FrameMatcher, FrameRecord, build_report, format_summary, frame_confusion, frame_miou, mode_at, switch_latencies,
    write_report)

REPO = Path(__file__).resolve().parents[1]
TOPICS = BagTopics()
RGB, DEPTH, GT = TOPICS.rgb, TOPICS.depth, TOPICS.labels
N, FPS, H, W = 40, 20.0, 24, 32  # a 2 s bag of tiny frames
T0 = 1_700_000_000_000_000_000


# =============================================================================================
# Pure: dropout windows, scheduler, topic planning
# =============================================================================================

def test_parse_drop():
    assert parse_drop("/cam/depth@2:4.5") == DropWindow("/cam/depth", 2.0, 4.5)
    assert parse_drop(" /a/b@0.25: ") == DropWindow("/a/b", 0.25, math.inf)
    assert parse_drop("/a@1:2").spec() == "/a@1:2"
    for bad in ["/a", "/a@1", "@1:2", "/a@x:2", "/a@2:1", "/a@-1:2", "/a@1:1", "/a@nan:2"]:
        with pytest.raises(ValueError, match="--drop"):
            parse_drop(bad)


def test_tracker_half_open_windows_and_boundaries():
    wins = [DropWindow("/d", 0.5, 1.0), DropWindow("/d", 1.0, 1.2), DropWindow("/r", 0.7, math.inf)]
    tr = DropoutTracker(wins)
    assert not tr.suppressed("/d", 0.45) and tr.suppressed("/d", 0.5) and tr.suppressed("/d", 0.99)
    assert tr.suppressed("/d", 1.0) and tr.suppressed("/d", 1.15) and not tr.suppressed("/d", 1.2)
    assert tr.suppressed("/r", 100.0) and not tr.suppressed("/other", 0.8)
    assert tr.advance(0.4) == []
    b = tr.advance(0.5)
    assert [(x.kind, x.time_s) for x in b] == [(DROP_START, 0.5)]
    b = tr.advance(1.0)  # /r opens at 0.7; at 1.0 the first /d window closes before the next opens
    assert [(x.kind, x.window.topic, x.time_s) for x in b] == [
        (DROP_START, "/r", 0.7), (DROP_END, "/d", 1.0), (DROP_START, "/d", 1.0)]
    assert tr.advance(1.0) == []  # each boundary is reported once
    assert [(x.kind, x.time_s) for x in tr.advance(5.0)] == [(DROP_END, 1.2)]
    closed = tr.close(5.0)  # the open-ended /r window is cut by the end of the bag
    assert [(x.kind, x.window.topic, x.truncated) for x in closed] == [(DROP_END, "/r", True)]
    tr.reset()
    assert [x.time_s for x in tr.advance(0.5)] == [0.5]


def test_scheduler_maps_bag_time_to_deadlines():
    s = PlaybackScheduler(rate=2.0)
    with pytest.raises(RuntimeError):
        s.deadline(0)
    s.start(100.0, bag_start_ns=T0)
    assert s.deadline(T0) == 100.0
    assert s.deadline(T0 + 1_000_000_000) == pytest.approx(100.5)
    assert s.wait(T0 + 1_000_000_000, now=100.2) == pytest.approx(0.3)
    assert s.wait(T0 + 1_000_000_000, now=101.0) == 0.0  # late: publish at once
    assert s.bag_time_ns(100.25) == T0 + 500_000_000
    assert s.bag_time_ns(99.0) == T0
    s.start(200.0, bag_start_ns=T0)  # a loop restarts the mapping
    assert s.deadline(T0 + 2_000_000_000) == pytest.approx(201.0)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            PlaybackScheduler(rate=bad)


def test_shift_stamp_keeps_equal_stamps_equal():
    a = shift_stamp(T0 + 50_000_000, bag_start_ns=T0, new_start_ns=5_000_000_000, rate=1.0)
    assert a == 5_050_000_000
    assert shift_stamp(T0 + 50_000_000, bag_start_ns=T0, new_start_ns=5_000_000_000, rate=2.0) == 5_025_000_000


def test_plan_topics_validates_names():
    info = BagInfo(path=Path("b"), start_ns=T0, end_ns=T0 + 2 * 10**9, topics={
        RGB: TopicInfo("sensor_msgs/msg/Image", 40), DEPTH: TopicInfo("sensor_msgs/msg/Image", 40)})
    cfg = ReplayConfig(bag=Path("b"), remap=dict([parse_remap(f"{DEPTH}:=/depth/image")]),
                       drops=[parse_drop("/depth/image@0.5:1")], wait_topics=["/depth/image=2"])
    out, drops = plan_topics(info, cfg)
    assert out == {RGB: RGB, DEPTH: "/depth/image"}
    assert drops == [DropWindow(DEPTH, 0.5, 1.0)]  # a remapped name resolves to the bag topic
    with pytest.raises(ValueError, match="/nope"):
        plan_topics(info, ReplayConfig(bag=Path("b"), drops=[parse_drop("/nope@1:2")]))
    with pytest.raises(ValueError, match="/nope"):
        plan_topics(info, ReplayConfig(bag=Path("b"), topics=["/nope"]))
    with pytest.raises(ValueError, match="/nope"):
        plan_topics(info, ReplayConfig(bag=Path("b"), remap={"/nope": "/x"}))
    with pytest.raises(ValueError, match="not played"):
        plan_topics(info, ReplayConfig(bag=Path("b"), topics=[RGB], drops=[parse_drop(f"{DEPTH}@1:2")]))
    with pytest.raises(ValueError, match="FROM:=TO"):
        parse_remap("/a:/b")
    assert parse_wait_topic("/a") == ("/a", 1) and parse_wait_topic("/a=3") == ("/a", 3)
    with pytest.raises(ValueError):
        parse_wait_topic("/a=0")
    with pytest.raises(ValueError, match="rate"):
        ReplayConfig(bag=Path("b"), rate=0)


# =============================================================================================
# Pure: replay evaluation analysis
# =============================================================================================

def test_frame_matcher_by_stamp_and_arrival():
    m = FrameMatcher(max_age_s=5.0)
    g1, g2, p = np.zeros((2, 2), np.uint8), np.ones((2, 2), np.uint8), np.full((2, 2), 2, np.uint8)
    assert m.add_gt(100, 1.0, g1) == []
    [hit] = m.add_pred(100, 1.1, p)
    assert (hit.stamp_ns, hit.t_gt, hit.t_pred) == (100, 1.0, 1.1) and hit.gt is g1
    assert m.add_pred(200, 1.2, p) == []  # labels before their ground truth wait ...
    [late] = m.add_gt(200, 1.25, g2)  # ... and match when it comes
    assert (late.t_gt, late.t_pred) == (1.25, 1.2)
    # A looped bag repeats stamps: the ground truth closest in time wins.
    m.add_gt(100, 4.0, g2)
    [hit] = m.add_pred(100, 4.1, p)
    assert hit.gt is g2 and hit.t_gt == 4.0
    m.add_pred(999, 4.2, p)  # never gets ground truth
    m.add_gt(300, 20.0, g1)  # everything older than 15 s is pruned
    assert m.add_pred(100, 20.1, p) == []
    assert m.finish() == 2


def test_mode_at_and_switch_latencies():
    obs = [(0.0, "rgbd"), (1.2, "rgb_only"), (2.05, "rgbd"), (3.0, "rgbd")]
    assert mode_at(obs, -1.0) is None and mode_at(obs, 1.19) == "rgbd" and mode_at(obs, 1.19, slack=0.02) == "rgb_only"
    events = [
        {"event": "start", "wall_time": 0.0},
        {"event": "drop_start", "topic": DEPTH, "wall_time": 1.0, "bag_time": 1.0},
        {"event": "drop_end", "topic": DEPTH, "wall_time": 2.0, "bag_time": 2.0},
        {"event": "drop_start", "topic": TOPICS.camera_info, "wall_time": 2.5},
        {"event": "drop_end", "topic": TOPICS.camera_info, "wall_time": 2.7},
        {"event": "drop_start", "topic": "/remapped/rgb", "published_topic": "/remapped/rgb", "wall_time": 3.5},
        {"event": "drop_end", "topic": "/remapped/rgb", "wall_time": 3.9, "truncated": True},
    ]
    sw = switch_latencies(events, obs, rgb_topics={RGB, "/remapped/rgb"}, depth_topics={DEPTH})
    assert [s["expected_mode"] for s in sw] == ["rgb_only", "rgbd", "rgbd", "rgbd", "depth_only", "rgbd"]
    assert sw[0]["latency_s"] == pytest.approx(0.2) and sw[0]["reached"]
    assert sw[1]["latency_s"] == pytest.approx(0.05) and sw[1]["reached"]
    assert [s["switch_expected"] for s in sw[2:4]] == [False, False] and sw[2]["latency_s"] is None
    assert sw[4]["reached"] is False and sw[4]["latency_s"] is None  # node never reported depth_only
    assert sw[5]["truncated"] and sw[5]["latency_s"] is None
    early = switch_latencies([{"event": "drop_start", "topic": DEPTH, "wall_time": 1.5}], obs,
                             rgb_topics={RGB}, depth_topics={DEPTH})
    assert early[0]["already"] and early[0]["latency_s"] == 0.0  # node was in rgb_only before the window


def _frame(gt: np.ndarray, pred: np.ndarray, t: float, k: int = 3) -> FrameRecord:
    cm = frame_confusion(pred, gt, k)
    return FrameRecord(stamp_ns=int(t * 1e9), t_gt=t, t_pred=t + 0.04, cm=cm, miou=frame_miou(cm))


def test_build_report_aggregates_per_mode(tmp_path):
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 255]], np.uint8)
    perfect = _frame(gt, gt.copy(), 0.1)
    half = gt.copy()
    half[0] = 2  # class 0 and 1 row predicted as 2
    bad = _frame(gt, half, 1.1)
    # upsampled prediction: a 1x2 label image resized (nearest) to the 2x4 ground truth
    small = _frame(gt, np.array([[0, 1]], np.uint8), 1.6)
    assert perfect.miou == pytest.approx(100.0)
    # bad: IoU class0 = 0/2, class1 = 0/2, class2 = 2/6 -> mean 11.1 %
    assert bad.miou == pytest.approx(100 / 9)
    mode_obs = [(0.0, "rgbd"), (1.0, "rgb_only"), (1.5, "rgbd")]
    events = [{"event": "start", "wall_time": 0.0},
              {"event": "drop_start", "topic": DEPTH, "wall_time": 0.9},
              {"event": "drop_end", "topic": DEPTH, "wall_time": 1.4},
              {"event": "finished", "wall_time": 2.0, "published": {RGB: 3}, "suppressed": {RGB: 0}}]
    rep = build_report([perfect, bad, small], mode_obs, events, class_names=["a", "b", "c"],
                       frames_gt=4, frames_out=3, unmatched_out=0)
    assert list(rep["per_mode"]) == ["rgbd", "rgb_only"]
    assert rep["per_mode"]["rgbd"]["frames"] == 2 and rep["per_mode"]["rgb_only"]["frames"] == 1
    assert rep["per_mode"]["rgb_only"]["miou"] == pytest.approx(100 / 9)
    # rgbd = perfect + small (small predicts row 0 as [0,0,1,1] and row 1 as [0,0,1,1]):
    cm = perfect.cm + small.cm
    iou = [cm[i, i] / (cm[i].sum() + cm[:, i].sum() - cm[i, i]) for i in range(3)]
    assert rep["per_mode"]["rgbd"]["miou"] == pytest.approx(100 * np.mean(iou))
    assert rep["per_mode"]["rgbd"]["per_class_iou"]["c"] == pytest.approx(100 * iou[2])
    assert rep["latency_ms"]["p50"] == pytest.approx(40.0) and rep["latency_ms"]["n"] == 3
    assert rep["frames"]["out_per_in"] == pytest.approx(0.75)
    assert rep["replay"]["published"] == {RGB: 3}
    assert [s["latency_s"] for s in rep["switches"]] == [pytest.approx(0.1), pytest.approx(0.1)]
    assert [c["mode"] for c in rep["mode_changes"]] == ["rgbd", "rgb_only", "rgbd"]
    text = format_summary(rep)
    assert "rgb_only" in text and "100 ms" in text
    paths = write_report(rep, events, tmp_path / "r")
    assert json.loads(paths["json"].read_text())["per_mode"]["rgbd"]["frames"] == 2
    assert "| rgb_only | 1 | 11.1 |" in paths["md"].read_text()
    assert paths["png"].stat().st_size > 1000


def test_build_report_with_no_frames():
    rep = build_report([], [], [], frames_gt=0, frames_out=0)
    assert rep["overall"] is None and rep["per_mode"] == {} and rep["latency_ms"]["p50"] is None
    assert "no dropout events" in format_summary(rep)


# =============================================================================================
# Processes: replay (and the evaluator) over ROS
# =============================================================================================

@pytest.fixture(scope="module")
def ros_env(ros_domain):
    """This run's private ROS domain, for rclpy in this process and for the children."""
    pytest.importorskip("rclpy")
    from m3l_ros.procs import ros_environment

    with ros_environment(ros_domain) as env:
        yield env


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    rng = np.random.default_rng(0)
    frames = []
    for i in range(N):
        label = rng.integers(0, 4, (H, W)).astype(np.uint8)
        frames.append(dict(rgb=rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
                           depth=rng.uniform(0.5, 4.0, (H, W)).astype(np.float32), label=label, name=str(i)))
    path = tmp_path_factory.mktemp("replay") / "bag"
    bag_io.write_frames(path, frames, config=BagWriterConfig(fps=FPS, start_ns=T0), progress=False)
    return path


def _module(name: str, *args: str, env: dict, log: Path):
    from m3l_ros.procs import python_child

    return python_child(name, *args, env=env, log_path=log, cwd=REPO)


class Listener:
    """Records the order and stamps of image topics, /clock and the replay's events."""

    def __init__(self, env: dict, topics: list[str], *, clock: bool = False) -> None:
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from m3l_ros.messages import stamp_ns
        from m3l_ros.procs import GraphProbe, latched_qos

        self.probe = GraphProbe(int(env["ROS_DOMAIN_ID"]), "replay_test_listener")
        self.got: dict[str, list[int]] = {t: [] for t in topics}
        self.events: list[dict] = []
        self.clock: list[int] = []
        for t in topics:
            self.probe.subscribe(t, Image, t, 100, callback=lambda m, t=t: self.got[t].append(stamp_ns(m.header)))
        self.probe.subscribe("events", String, "/m3l_replay/events", latched_qos(100),
                             callback=lambda m: self.events.append(json.loads(m.data)))
        if clock:
            self.probe.subscribe("clock", Clock, "/clock", 100, callback=lambda m: self.clock.append(
                m.clock.sec * 10**9 + m.clock.nanosec))

    def spin_until(self, cond, timeout: float, children=()) -> bool:
        return self.probe.spin_until(cond, timeout, children=children, what="replay output")

    def finished(self) -> bool:
        return any(e["event"] == "finished" for e in self.events)

    def close(self) -> None:
        self.probe.close()


def _finish(child, timeout: float = 20.0) -> str:
    rc = child.wait(timeout)
    out = child.output()
    child.stop(5)
    if rc is None:
        pytest.fail(f"{child.name} did not exit:\n{out}")
    return out


def test_replay_order_stamps_and_dropout(ros_env, bag, tmp_path):
    lis = Listener(ros_env, [RGB, DEPTH])
    proc = None
    try:
        proc = _module("m3l_ros.replay", str(bag), "--drop", f"{DEPTH}@0.5:1.0", "--wait-for-subscribers", "20",
                       "--wait-topics", RGB, DEPTH, "--linger", "0.3", env=ros_env, log=tmp_path / "replay.log")
        assert lis.spin_until(lambda: lis.finished() and len(lis.got[RGB]) >= N, timeout=60), proc.output()
        lis.probe.spin(0.3)  # stragglers
        out = _finish(proc)
        assert proc.returncode == 0, out
    finally:
        if proc is not None:
            proc.stop(5)
        lis.close()

    all_stamps = [T0 + int(round(i * 1e9 / FPS)) for i in range(N)]
    assert lis.got[RGB] == all_stamps  # everything, in order, original stamps
    dropped = [s for s in all_stamps if 0.5 <= (s - T0) * 1e-9 < 1.0]
    assert len(dropped) == 10
    assert lis.got[DEPTH] == [s for s in all_stamps if s not in dropped]

    fin = next(e for e in lis.events if e["event"] == "finished")
    assert fin["published"][DEPTH] == 30 and fin["suppressed"][DEPTH] == 10
    assert fin["published"][RGB] == N and fin["suppressed"][RGB] == 0 and not fin["interrupted"]
    # Events in playback order: start, the window's two boundaries (bag time), finished.
    kinds = [e["event"] for e in lis.events]
    assert kinds == ["start", DROP_START, DROP_END, "finished"], kinds
    bounds = [e for e in lis.events if e["event"] in (DROP_START, DROP_END)]
    assert [(e["event"], e["bag_time"]) for e in bounds] == [(DROP_START, 0.5), (DROP_END, 1.0)]
    assert lis.events[0]["wall_time"] <= bounds[0]["wall_time"] <= bounds[1]["wall_time"] <= lis.events[-1]["wall_time"]
    assert "suppressed" in out and "finished" in out


def test_replay_loop_clock_restamp_rate_and_sigterm(ros_env, bag, tmp_path):
    lis = Listener(ros_env, [RGB, DEPTH], clock=True)
    proc = None
    try:
        proc = _module("m3l_ros.replay", str(bag), "--loop", "--rate", "2", "--clock", "--restamp",
                       "--wait-for-subscribers", "20", "--wait-topics", RGB, DEPTH, "--linger", "0.2", env=ros_env,
                       log=tmp_path / "replay.log")
        assert lis.spin_until(lambda: len(lis.got[RGB]) >= 60, timeout=60), proc.output()
        proc.send(signal.SIGTERM)
        out = _finish(proc, timeout=15)
        assert proc.returncode == 0, out
        lis.spin_until(lis.finished, timeout=5)
    finally:
        if proc is not None:
            proc.stop(5)
        lis.close()

    assert any(e["event"] == "loop" and e["iteration"] == 1 for e in lis.events)
    fin = next(e for e in lis.events if e["event"] == "finished")
    assert fin["interrupted"] and fin["iterations"] >= 2
    # Re-stamped: unique and increasing across loops, 25 ms apart in stamp time at rate 2
    # (the bag's 50 ms divided by the rate: computed from the bag, not from when they arrived).
    st = np.array(lis.got[RGB], dtype=np.int64)
    assert len(set(st.tolist())) == len(st) and (np.diff(st) > 0).all()
    assert np.median(np.diff(st)) == pytest.approx(25_000_000, abs=1_000_000)
    start = next(e for e in lis.events if e["event"] == "start")
    assert st[0] >= int(start["wall_time"] * 1e9) - 1_000_000_000  # wall-clock based, not the bag's 2023 stamps
    # RGB and depth of a frame keep one shared stamp.
    assert len(set(st.tolist()) & set(lis.got[DEPTH])) >= 50
    # /clock carries bag time, inside the bag's span.
    clock = np.array(lis.clock, dtype=np.int64)
    assert len(clock) >= 20
    assert clock.min() >= T0 and clock.max() <= T0 + 2_000_000_000
    assert np.mean(np.diff(clock) >= 0) > 0.9  # monotonic except at loop restarts


class FakeSegmenter:
    """Stands in for segment_node: labels = ground truth in rgbd, damaged labels otherwise.

    The mode follows input freshness (a stream is alive if a message came in the last 0.15 s),
    as a watchdog in the real node does.
    """

    def __init__(self, probe) -> None:
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from m3l_ros.procs import latched_qos

        self.String = String
        self.last = {"rgb": -math.inf, "depth": -math.inf}
        self.pending: list = []
        probe.subscribe("rgb", Image, RGB, 50, callback=lambda m: self.last.__setitem__("rgb", time.monotonic()))
        probe.subscribe("depth", Image, DEPTH, 50, callback=lambda m: self.last.__setitem__("depth", time.monotonic()))
        probe.subscribe("gt", Image, GT, 50, callback=lambda m: self.pending.append((time.monotonic(), m)))
        self.labels = probe.publisher(Image, "/fake/labels", 50)
        self.mode = probe.publisher(String, "/fake/mode", latched_qos())  # latched, like segment_node's ~/mode
        self.names = probe.publisher(String, "/fake/class_names", latched_qos())
        self.names.publish(String(data=json.dumps({"class_names": ["w", "x", "y", "z"]})))
        self.current = None
        probe.node.create_timer(0.01, self.tick)

    def tick(self) -> None:
        from m3l_core.vocab import mode_for
        from m3l_ros.image_codec import decode_message
        from m3l_ros.messages import image_msg

        now = time.monotonic()
        while self.pending and now - self.pending[0][0] > 0.01:  # inputs of the frame follow its ground truth
            _, gt = self.pending.pop(0)
            mode = mode_for(rgb=now - self.last["rgb"] < 0.15, depth=now - self.last["depth"] < 0.15)
            if mode != self.current:  # published on change only, like segment_node
                self.mode.publish(self.String(data=mode))
                self.current = mode
            if mode == "no_input":
                continue
            lab = decode_message(gt)
            if mode != "rgbd":
                lab = lab.copy()
                lab[: H // 2] = (lab[: H // 2] + 1) % 4
            out = image_msg(lab, "mono8")
            out.header = gt.header
            self.labels.publish(out)


def test_replay_eval_end_to_end_with_a_stand_in_node(ros_env, bag, tmp_path):
    from m3l_ros.procs import GraphProbe

    out_dir = tmp_path / "report"
    ev = _module("m3l_ros.replay_eval", "--out", str(out_dir), "--labels-topic", "/fake/labels",
                 "--mode-topic", "/fake/mode", "--class-names-topic", "/fake/class_names", "--duration", "60",
                 "--grace", "0.5", env=ros_env, log=tmp_path / "eval.log")
    probe = GraphProbe(int(ros_env["ROS_DOMAIN_ID"]), "fake_segment_node")
    rp = None
    try:
        fake = FakeSegmenter(probe)
        assert probe.spin_until(lambda: fake.labels.get_subscription_count() > 0, 60, children=[ev],
                                what="the evaluator to subscribe")
        rp = _module("m3l_ros.replay", str(bag), "--drop", f"{DEPTH}@0.5:1.0", "--wait-for-subscribers", "20",
                     "--wait-topics", RGB, DEPTH, f"{GT}=2", env=ros_env, log=tmp_path / "replay.log")
        assert probe.spin_until(lambda: not ev.alive(), 90), ev.output()
        rp_out, ev_out = _finish(rp), _finish(ev)
        assert rp.returncode == 0, rp_out
        assert ev.returncode == 0, ev_out
        rep = json.loads((out_dir / "replay_report.json").read_text())
    finally:
        for c in (ev, rp):
            if c is not None:
                c.stop(5)
        probe.close()

    assert (out_dir / "replay_report.md").is_file() and (out_dir / "replay_timeline.png").stat().st_size > 1000
    f = rep["frames"]
    assert f["ground_truth_in"] == N
    assert f["labels_out"] >= N - 3 and f["matched"] == f["labels_out"]
    assert rep["classes"] == ["w", "x", "y", "z"]
    assert rep["per_mode"]["rgbd"]["miou"] == pytest.approx(100.0)
    assert rep["per_mode"]["rgb_only"]["frames"] >= 5
    assert rep["per_mode"]["rgb_only"]["miou"] < 90.0
    sw = [(s["event"], s["expected_mode"], s["reached"]) for s in rep["switches"]]
    assert sw == [("drop_start", "rgb_only", True), ("drop_end", "rgbd", True)]
    # Order, not timing: each switch is observed after its boundary, and latencies are measured.
    assert all(s["latency_s"] is not None and s["latency_s"] >= 0.0 for s in rep["switches"])
    assert rep["latency_ms"]["n"] == f["matched"] and rep["latency_ms"]["p50"] > 0.0
    assert "rgb_only" in ev_out and "switch latency" in ev_out
