"""Replay evaluation analysis with injected times (issue 10, item 5; issue 14: replay_eval split).

ROS-free except the last test, which drives ``ReplayEvaluator``'s callbacks through a fake
node (rclpy message classes only, no middleware). No wall clock is read anywhere.
"""
from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from m3l_core import vocab
from m3l_ros.replay_analysis import (
    FrameRecord, build_report, frame_confusion, frame_miou, output_latencies, switch_latencies)
from m3l_ros.replay_format import format_markdown, format_summary, write_report

RGB = "/camera/camera/color/image_raw"
DEPTH = "/camera/camera/aligned_depth_to_color/image_raw"
MS = 1_000_000


def test_latency_uses_the_latest_earlier_input_and_counts_the_rest():
    inputs = {1: [10.00, 10.01, 10.02], 2: [10.10], 3: [10.50]}
    outputs = [(1, 10.06), (2, 10.09), (3, 10.58), (4, 10.60)]
    r = output_latencies(outputs, inputs)
    assert r["latency_s"][0] == pytest.approx(0.04)  # from the last input of the frame (10.02)
    assert r["latency_s"][1] is None and r["negative_excluded"] == 1  # labels before their input
    assert r["latency_s"][2] == pytest.approx(0.08)
    assert r["latency_s"][3] is None and r["no_input"] == 1


def test_looped_bag_without_restamp_never_gives_negative_latency():
    """The issue's case: a 10-frame bag looped, latency longer than the bag period.

    Stamps repeat every 0.667 s; a frame's labels arrive 0.4 s after its inputs, so the
    NEXT loop's copy of the same stamp is closer in time than its own input, which the
    old closest-arrival rule turned into -0.267 s.
    """
    period, lag, n, loops = 10 / 15, 0.4, 10, 5
    inputs: dict[int, list[float]] = {}
    outputs = []
    for k in range(loops):
        for i in range(n):
            t_in = k * period + i / 15
            inputs.setdefault(i, []).append(t_in)
            outputs.append((i, t_in + lag))
    r = output_latencies(outputs, inputs)
    lat = [v for v in r["latency_s"] if v is not None]
    assert len(lat) == n * loops and r["negative_excluded"] == 0 and r["no_input"] == 0
    assert min(lat) == pytest.approx(lag) and max(lat) == pytest.approx(lag)


def _events(drop=(1.0, 2.0), topic=DEPTH, t_finish=3.0):
    return [{"event": "start", "wall_time": 0.0},
            {"event": "drop_start", "topic": topic, "wall_time": drop[0], "bag_time": drop[0]},
            {"event": "drop_end", "topic": topic, "wall_time": drop[1], "bag_time": drop[1]},
            {"event": "finished", "wall_time": t_finish, "published": {RGB: 60}, "suppressed": {DEPTH: 20}}]


def _no_gt_run():
    """60 frames at 20 Hz for 3 s; depth withheld 1-2 s; the node reports rgb_only from 1.15 to 2.05 s."""
    inputs, outputs = {}, []
    for i in range(60):
        t = i / 20
        inputs[i * 50 * MS] = [t, t + 0.002]
        outputs.append((i * 50 * MS, t + 0.030 + (0.010 if 1.15 <= t < 2.05 else 0.0)))
    inputs[999] = [5.0]  # an input whose labels never came: no effect on latency
    outputs.append((7 * 50 * MS, 0.30))  # a duplicate output arriving before... its input at 0.35: excluded
    modes = [(0.0, "rgbd"), (1.15, "rgb_only"), (2.05, "rgbd")]
    return inputs, outputs, modes


def test_report_without_ground_truth_has_counts_rates_latency_and_switches(tmp_path):
    inputs, outputs, modes = _no_gt_run()
    rep = build_report([], modes, _events(), frames_gt=0, frames_out=len(outputs), outputs=outputs, inputs=inputs)
    assert rep["overall"] is None and rep["frames"]["matched"] == 0
    assert list(rep["per_mode"]) == ["rgbd", "rgb_only"]  # vocabulary order
    pm = rep["per_mode"]
    # Outputs arrive 30 ms after frames at 0.00..2.95 s; those at 1.15 s..2.00 s take 40 ms.
    # rgb_only covers arrivals in [1.15, 2.05): frames 23..40 (t_in 1.15..2.00 -> arrival 1.19..2.04) = 18
    assert pm["rgb_only"]["frames"] == 18 and pm["rgbd"]["frames"] == 61 - 18
    assert pm["rgb_only"]["latency_ms_p50"] == pytest.approx(38.0)  # 40 ms after the first input, 38 after the last
    assert pm["rgbd"]["latency_ms_p50"] == pytest.approx(28.0)
    assert pm["rgb_only"]["miou"] is None and pm["rgb_only"]["scored"] == 0
    assert pm["rgb_only"]["time_s"] == pytest.approx(0.9)
    assert pm["rgb_only"]["rate_hz"] == pytest.approx(18 / 0.9)
    assert rep["output"]["frames"] == 61 and rep["output"]["rate_hz"] == pytest.approx(60 / (2.98 - 0.03), rel=1e-6)
    lat = rep["latency_ms"]
    assert lat["n"] == 60 and lat["negative_excluded"] == 1 and lat["min"] > 0
    sw = [(s["event"], s["expected_mode"], s["reached"], round(s["latency_s"], 3)) for s in rep["switches"]]
    assert sw == [("drop_start", "rgb_only", True, 0.15), ("drop_end", "rgbd", True, 0.05)]

    text = format_summary(rep)
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.split()[:1] in (["rgbd"], ["rgb_only"])}
    assert rows["rgb_only"][1:3] == ["18", "20.0"] and rows["rgb_only"][3] == "n/a"
    assert "1 excluded: labels arrived before any input" in text and "150 ms" in text and "no ground truth received" in text
    md = format_markdown(rep)
    assert "| rgb_only | 18 | n/a | n/a | 38.0 | 38.0 | 20.0 |" in md and "No ground truth received: accuracy not measured." in md
    paths = write_report(rep, _events(), tmp_path)
    assert json.loads(paths["json"].read_text())["per_mode"]["rgb_only"]["frames"] == 18
    assert paths["png"].stat().st_size > 1000


def test_report_with_ground_truth_scores_matched_frames_only():
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 255]], np.uint8)
    bad = gt.copy()
    bad[0] = 2
    recs = []
    for t, pred in ((0.1, gt.copy()), (1.3, bad)):
        cm = frame_confusion(pred, gt, 3)
        recs.append(FrameRecord(stamp_ns=int(t * 1e9), t_gt=t, t_pred=t + 0.05, cm=cm, miou=frame_miou(cm)))
    outputs = [(r.stamp_ns, r.t_pred) for r in recs] + [(123, 0.6)]  # one output without ground truth
    inputs = {r.stamp_ns: [r.t_gt] for r in recs} | {123: [0.58]}
    modes = [(0.0, "rgbd"), (1.2, "rgb_only")]
    rep = build_report(recs, modes, _events(drop=(1.1, 2.5)), class_names=["a", "b", "c"], frames_gt=2,
                       frames_out=3, unmatched_out=1, outputs=outputs, inputs=inputs)
    assert rep["per_mode"]["rgbd"]["frames"] == 2 and rep["per_mode"]["rgbd"]["scored"] == 1
    assert rep["per_mode"]["rgbd"]["miou"] == pytest.approx(100.0)
    assert rep["per_mode"]["rgb_only"]["miou"] == pytest.approx(100 / 9)
    assert rep["latency_ms"]["n"] == 3 and rep["latency_ms"]["p50"] == pytest.approx(50.0)
    assert [d["miou"] is None for d in rep["frames_detail"]] == [False, True, False]
    assert rep["switches"][0]["latency_s"] == pytest.approx(0.1)


def test_any_mode_with_the_expected_presence_counts_as_a_switch(monkeypatch):
    """A node mode added to the vocabulary (e.g. ``unsynced``: RGB only) satisfies a depth dropout."""
    monkeypatch.setitem(vocab.MODE_PRESENCE, "unsynced_test", (True, False))
    modes = [(0.0, "rgbd"), (1.3, "unsynced_test"), (2.2, "rgbd")]
    sw = switch_latencies(_events(), modes, rgb_topics={RGB}, depth_topics={DEPTH})
    assert [(s["expected_mode"], s["reached"]) for s in sw] == [("rgb_only", True), ("rgbd", True)]
    assert sw[0]["latency_s"] == pytest.approx(0.3) and sw[1]["latency_s"] == pytest.approx(0.2)
    assert not switch_latencies(_events(), [(0.0, "rgbd"), (1.3, "depth_only")], rgb_topics={RGB},
                                depth_topics={DEPTH})[0]["reached"]


def test_empty_run_prints_counts_not_empty_tables():
    rep = build_report([], [], [], frames_gt=0, frames_out=0)
    text = format_summary(rep)
    assert "(no label images received)" in text and "no dropout events" in text
    assert rep["latency_ms"]["n"] == 0 and rep["output"]["rate_hz"] is None


def test_evaluator_callbacks_on_one_injected_clock():
    """ReplayEvaluator's glue: arrival times from the injected clock, raw input stamps, event times replaced."""
    pytest.importorskip("rclpy")
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from m3l_ros.bag_io import get_typestore, image_msg
    from m3l_ros.replay_eval import EvalConfig, ReplayEvaluator

    subs = {}

    class FakeNode:
        def create_subscription(self, msg_type, topic, callback, qos, raw=False):
            subs[topic] = callback

    now = [0.0]
    ev = ReplayEvaluator(FakeNode(), EvalConfig(receive_stamps=False, num_classes=3), clock=lambda: now[0])
    cfg = ev.config
    assert {RGB, DEPTH, cfg.labels_topic, cfg.gt_topic, cfg.mode_topic, cfg.events_topic} <= set(subs)
    for topic in (RGB, cfg.labels_topic, cfg.gt_topic, cfg.mode_topic, cfg.events_topic):
        with pytest.raises(TypeError):  # one argument is not enough: rclpy then passes the message info
            inspect.signature(subs[topic]).bind(object())

    ts = get_typestore()
    label = np.array([[0, 1], [2, 2]], np.uint8)

    def ros_image(stamp):
        m = Image(height=2, width=2, encoding="mono8", step=2, data=label.tobytes())
        m.header.stamp.sec, m.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        return m

    def at(t, topic, msg):
        now[0] = t
        subs[topic](msg, None)

    at(0.0, cfg.events_topic, String(data=json.dumps({"event": "start", "wall_time": 1e9})))
    at(0.0, cfg.mode_topic, String(data="rgbd"))
    for i in range(4):
        stamp = 5_000_000_000 + i * 50 * MS
        raw = bytes(ts.serialize_cdr(image_msg(ts, label, "mono8", stamp, "cam"), "sensor_msgs/msg/Image"))
        at(i * 0.05, cfg.gt_topic, ros_image(stamp))
        at(i * 0.05 + 0.001, RGB, raw)
        at(i * 0.05 + 0.002, DEPTH, raw)
        at(i * 0.05 + 0.032, cfg.labels_topic, ros_image(stamp))
    at(0.2, cfg.events_topic, String(data=json.dumps({"event": "finished", "wall_time": 2e9})))
    rep = ev.report()
    assert rep["frames"] == {"ground_truth_in": 4, "labels_out": 4, "matched": 4, "unmatched_out": 0,
                             "out_per_in": 1.0}
    assert rep["latency_ms"]["p50"] == pytest.approx(30.0) and rep["latency_ms"]["n"] == 4
    assert rep["per_mode"]["rgbd"]["miou"] == pytest.approx(100.0)
    assert rep["t0_wall"] == 0.0  # the event's own wall_time (another process's clock) is not used
    assert [e["sent_wall_time"] for e in ev.events] == [1e9, 2e9]
