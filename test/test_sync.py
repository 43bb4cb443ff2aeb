"""ROS-free tests of the approximate-time pairing (m3l_ros.sync), with injected time."""
from __future__ import annotations

import pytest

from m3l_ros.sync import ApproxTimePairer, Frame, Job
from m3l_ros.watchdog import ModeWatchdog


def _pairer(slop=0.02, timeout=0.3) -> ApproxTimePairer:
    return ApproxTimePairer(slop=slop, rgb_timeout=timeout, depth_timeout=timeout)


def F(stamp, received=None, tag=None):
    return Frame(stamp=stamp, received=stamp if received is None else received, data=tag)


def test_pairs_within_slop_and_keeps_each_frame_once():
    p = _pairer()
    p.add("rgb", F(1.000, tag="r1"), mode="rgbd")
    assert p.take(now=1.0, mode="rgbd") is None  # waiting for depth
    p.add("depth", F(1.015, tag="d1"), mode="rgbd")
    job = p.take(now=1.02, mode="rgbd")
    assert job == Job("rgbd", F(1.000, tag="r1"), F(1.015, tag="d1"))
    assert job.primary.data == "r1"
    assert p.take(now=1.02, mode="rgbd") is None  # consumed
    assert p.dropped == 0


def test_older_frame_outside_slop_is_dropped_and_newer_waits():
    p = _pairer()
    p.add("depth", F(1.00, tag="d1"), mode="rgbd")
    p.add("rgb", F(1.10, tag="r2"), mode="rgbd")  # d1 can never pair any more
    assert p.drops["unpaired"] == 1
    assert p.last_unpaired_offset == pytest.approx(0.10)
    assert p.pending["depth"] is None and p.pending["rgb"].data == "r2"
    p.add("depth", F(1.11, tag="d2"), mode="rgbd")
    job = p.take(now=1.12, mode="rgbd")
    assert (job.rgb.data, job.depth.data) == ("r2", "d2")


def test_only_the_newest_frame_and_pair_are_kept():
    p = _pairer(slop=0.01)
    for i in range(5):  # rgb arrives while inference is busy
        p.add("rgb", F(1 + 0.1 * i, tag=f"r{i}"), mode="rgbd")
    assert p.drops["superseded"] == 4
    p.add("depth", F(1.4, tag="d4"), mode="rgbd")
    # a complete newer pair replaces the one nobody took yet
    p.add("rgb", F(1.5, tag="r5"), mode="rgbd")
    p.add("depth", F(1.5, tag="d5"), mode="rgbd")
    assert p.drops["superseded"] == 4 + 2
    job = p.take(now=1.5, mode="rgbd")
    assert (job.rgb.data, job.depth.data) == ("r5", "d5")


def test_single_modality_modes_emit_frames_alone():
    p = _pairer()
    p.add("rgb", F(2.0, tag="r"), mode="rgb_only")
    job = p.take(now=2.0, mode="rgb_only")
    assert job.mode == "rgb_only" and job.depth is None and job.primary.data == "r"
    p.add("depth", F(2.1, tag="d"), mode="depth_only")
    job = p.take(now=2.1, mode="depth_only")
    assert job.mode == "depth_only" and job.rgb is None and job.primary.data == "d"
    p.add("rgb", F(2.2), mode="no_input")
    assert p.take(now=2.2, mode="no_input") is None


def test_waiting_rgb_goes_out_alone_when_depth_is_declared_dead():
    p = _pairer(timeout=0.3)
    p.add("rgb", F(5.0, received=5.0, tag="r"), mode="rgbd")
    assert p.take(now=5.01, mode="rgbd") is None
    job = p.take(now=5.05, mode="rgb_only")  # the watchdog has just switched
    assert job.mode == "rgb_only" and job.rgb.data == "r"


def test_a_frame_older_than_its_timeout_is_never_paired():
    p = _pairer(slop=1.0, timeout=0.3)
    p.add("rgb", F(10.0, received=10.0, tag="old"), mode="rgbd")
    # depth arrives 0.5 s later with a stamp inside the slop; the RGB frame expired
    assert p.take(now=10.5, mode="rgbd") is None
    assert p.drops["expired"] == 1
    p.add("depth", F(10.5, received=10.5), mode="rgbd")
    assert p.take(now=10.5, mode="rgbd") is None
    # a ready pair that waited too long is discarded too
    p.add("rgb", F(10.6, received=10.6), mode="rgbd")
    assert p.ready is not None
    assert p.take(now=11.0, mode="rgbd") is None
    assert p.drops["expired"] == 3


def test_backwards_stamps_reset_the_pairing_state():
    p = _pairer(slop=0.02)
    for t in (100.0, 100.1):
        p.add("rgb", F(t), mode="rgbd")
        p.add("depth", F(t), mode="rgbd")
    p.take(now=100.1, mode="rgbd")
    p.add("depth", F(100.2, tag="old-timeline"), mode="rgbd")
    # the bag loops: rgb jumps back to 0
    assert p.add("rgb", F(0.0, received=100.25, tag="r0"), mode="rgbd") is True
    assert p.resets == 1
    assert p.drops["reset"] == 1  # the held depth frame from the old timeline
    assert p.pending["depth"] is None
    # depth's own jump is expected after the reset and is not a second reset
    assert p.add("depth", F(0.0, received=100.26, tag="d0"), mode="rgbd") is False
    job = p.take(now=100.26, mode="rgbd")
    assert (job.rgb.data, job.depth.data) == ("r0", "d0")
    assert p.resets == 1


def test_slop_and_timeouts_can_change_live():
    p = _pairer(slop=0.01)
    p.set_params(slop=0.2, rgb_timeout=1.0)
    p.add("rgb", F(1.0), mode="rgbd")
    p.add("depth", F(1.15), mode="rgbd")
    assert p.take(now=1.9, mode="rgbd") is None  # depth_timeout 0.3 still applies to the pair
    p.add("rgb", F(2.0), mode="rgbd")
    p.add("depth", F(2.15), mode="rgbd")
    assert p.take(now=2.2, mode="rgbd").mode == "rgbd"


def test_stream_scenario_with_watchdog_depth_stops_and_returns():
    """30 Hz RGB-D, depth stops for 1 s: the first RGB-only job comes within timeout + 1 frame."""
    timeout, dt = 0.3, 1 / 30
    wd = ModeWatchdog(rgb_timeout=timeout, depth_timeout=timeout)
    p = _pairer(slop=0.005, timeout=timeout)
    jobs = []
    for i in range(90):
        t = i * dt
        for m in ("rgb", "depth"):
            if m == "depth" and 30 <= i < 60:
                continue  # depth is lost between 1 s and 2 s
            wd.feed(m, t)
            mode, _ = wd.update(t)
            p.add(m, F(t, received=t), mode=mode)
        # the worker polls a few times between frames
        for k in range(4):
            now = t + k * dt / 4
            mode, _ = wd.update(now)
            job = p.take(now=now, mode=mode)
            if job:
                jobs.append((now, job))
    modes = [j.mode for _, j in jobs]
    first_rgb_only = next(now for now, j in jobs if j.mode == "rgb_only")
    last_depth = max(j.depth.stamp for _, j in jobs if j.depth is not None and j.depth.stamp < 1.5)
    assert last_depth + timeout < first_rgb_only <= last_depth + timeout + dt + 1e-9
    assert all(m == "rgb_only" for now, j in jobs for m in [j.mode] if last_depth + timeout + dt < now < 2.0)
    assert modes[-1] == "rgbd"
    first_back = next(j for _, j in jobs if j.mode == "rgbd" and j.rgb.stamp >= 60 * dt - 1e-9)
    assert first_back.rgb.stamp == pytest.approx(60 * dt)  # pairs again with the first returning depth frame
    assert wd.transitions == 3  # no_input -> rgbd -> rgb_only -> rgbd (the start-up grace avoids a flicker)


def test_returning_stream_joins_the_waiting_single_modality_job():
    p = _pairer(slop=0.01)
    p.add("rgb", F(3.0, tag="r"), mode="rgb_only")  # ready as rgb_only, not taken yet
    p.add("depth", F(3.005, tag="d"), mode="rgbd")  # depth is back with a matching stamp
    job = p.take(now=3.01, mode="rgbd")
    assert job.mode == "rgbd" and (job.rgb.data, job.depth.data) == ("r", "d")
    # a non-matching stamp does not upgrade
    p.add("rgb", F(4.0, tag="r2"), mode="rgb_only")
    p.add("depth", F(4.1, tag="d2"), mode="rgbd")
    job = p.take(now=4.1, mode="rgbd")
    assert job.mode == "rgb_only" and job.rgb.data == "r2"
    assert p.pending["depth"].data == "d2"
