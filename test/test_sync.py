"""ROS-free tests of the approximate-time pairing (m3l_ros.sync), with injected time."""
from __future__ import annotations

import pytest

from m3l_core.vocab import DEPTH_ONLY, NO_INPUT, RGB_ONLY, RGBD, UNSYNCED
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
    assert p.stamp_offset == pytest.approx(0.0)  # arrival times equal the stamps here: no clock offset
    assert p.newest("depth") is None and p.newest("rgb").data == "r2"
    p.add("depth", F(1.11, tag="d2"), mode="rgbd")
    job = p.take(now=1.12, mode="rgbd")
    assert (job.rgb.data, job.depth.data) == ("r2", "d2")


def test_only_the_newest_frame_and_pair_are_kept():
    p = _pairer(slop=0.01)
    for i in range(5):  # rgb arrives while depth is late
        p.add("rgb", F(1 + 0.1 * i, tag=f"r{i}"), mode="rgbd")
    assert p.dropped == 0  # held: depth may still come for any of them
    p.add("depth", F(1.4, tag="d4"), mode="rgbd")
    assert p.drops["superseded"] == 4  # r0-r3 are older than the pair (r4, d4)
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
    assert p.drops["reset"] == 1  # the held depth frame from the old timeline
    assert p.newest("depth") is None
    # depth's own jump is expected after the reset and is not a second reset
    assert p.add("depth", F(0.0, received=100.26, tag="d0"), mode="rgbd") is False
    job = p.take(now=100.26, mode="rgbd")
    assert (job.rgb.data, job.depth.data) == ("r0", "d0")


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
    assert p.newest("depth").data == "d2"


# -- unsynced: both streams alive, stamps never within sync_slop (issue 9 item 2) -------------------------
def _run_node_logic(*, offset: float, seconds: float = 3.0, rate: float = 15.0, slop: float = 0.02,
                    timeout: float = 0.5, offset_from: float = 0.0):
    """The node's watchdog + pairer loop with injected time: a camera publishes RGB and depth together
    at ``rate``; depth stamps carry ``offset`` from ``offset_from`` s on. Returns (mode changes, jobs)."""
    wd = ModeWatchdog(rgb_timeout=timeout, depth_timeout=timeout, loss_grace=0.15, sync_timeout=timeout)
    p = _pairer(slop=slop, timeout=timeout)
    changes, jobs = [], []
    for i in range(int(seconds * rate)):
        t = i / rate
        for m in ("rgb", "depth"):
            stamp = t + (offset if m == "depth" and t >= offset_from else 0.0)
            wd.feed(m, t)
            mode, changed = wd.update(t, last_pair=p.last_paired_at)
            changes += [(t, mode)] if changed else []
            p.add(m, F(stamp, received=t, tag=(m, i)), mode=mode)
        for k in range(3):  # the worker polls between frames
            now = t + k / (3 * rate)
            mode, changed = wd.update(now, last_pair=p.last_paired_at)
            changes += [(now, mode)] if changed else []
            job = p.take(now=now, mode=mode)
            if job is not None:
                jobs.append((now, job))
    return changes, jobs, p


@pytest.mark.parametrize("offset", [0.03, 0.5, 180.0])
def test_constant_stamp_offset_is_reported_as_unsynced_and_rgb_keeps_flowing(offset):
    changes, jobs, p = _run_node_logic(offset=offset)
    assert [m for _, m in changes] == [RGBD, UNSYNCED]
    t_unsynced = changes[1][0]
    assert 0.5 < t_unsynced <= 0.5 + 1 / 15 + 1e-9  # sync_timeout after the start, to the next check
    assert p.pairs == 0
    # labels keep flowing: every RGB frame after the switch becomes a job, RGB alone, RGB header
    late = [j for now, j in jobs if now > t_unsynced]
    assert all(j.mode == UNSYNCED and j.depth is None and j.primary.data[0] == "rgb" for j in late)
    # no RGB frame is lost to the unsynced path: each one after the switch is segmented once
    assert [j.primary.data[1] for j in late] == [i for i in range(45) if i / 15 > t_unsynced]
    assert p.stamp_offset == pytest.approx(-offset, abs=1e-6)  # RGB stamps run behind depth by `offset`


def test_offset_within_slop_pairs_and_stays_rgbd():
    changes, jobs, p = _run_node_logic(offset=0.01)
    assert [m for _, m in changes] == [RGBD]
    assert jobs and all(j.mode == RGBD and j.depth is not None for _, j in jobs)
    assert p.stamp_offset is None and p.pairs == len(jobs)


def test_unsynced_ends_with_the_first_pair():
    # the offset lasts from 1 s to 2 s only (offset_from / a second run with offset 0 simulated below)
    wd = ModeWatchdog(rgb_timeout=0.5, depth_timeout=0.5, sync_timeout=0.5)
    p = _pairer(slop=0.02, timeout=0.5)
    modes = []
    for i in range(45):
        t = i / 15
        off = 0.5 if 15 <= i < 30 else 0.0
        for m, stamp in (("rgb", t), ("depth", t + off)):
            wd.feed(m, t)
            mode, _ = wd.update(t, last_pair=p.last_paired_at)
            p.add(m, F(stamp, received=t, tag=(m, i)), mode=mode)
        mode, _ = wd.update(t, last_pair=p.last_paired_at)
        job = p.take(now=t, mode=mode)
        modes.append((i, mode, job.mode if job else None))
    seq = [m for k, (_, m, _) in enumerate(modes) if k == 0 or m != modes[k - 1][1]]
    assert seq == [RGBD, UNSYNCED, RGBD]
    start = next(i for i, m, _ in modes if m == UNSYNCED)
    assert start == 22  # last pair at frame 14 (t=0.933 s), + sync_timeout 0.5 s -> the check at frame 22
    back = next(i for i, m, _ in modes if i > start and m == RGBD)
    # frame 30's RGB meets the held depth frame 29 (stamped 0.5 s ahead) and is dropped from pairing;
    # frame 31 is the first pair with equal stamps, and ends it
    assert back == 31
    assert modes[back][2] == RGBD  # and that pair is segmented as RGB-D


def test_unsynced_rgb_job_is_upgraded_when_its_depth_partner_arrives():
    p = _pairer(slop=0.02)
    p.add("rgb", F(1.0, tag="r"), mode=UNSYNCED)
    assert p.ready == Job(UNSYNCED, F(1.0, tag="r"), None)
    p.add("depth", F(1.01, tag="d"), mode=UNSYNCED)
    job = p.take(now=1.02, mode=UNSYNCED)
    assert job.mode == RGBD and (job.rgb.data, job.depth.data) == ("r", "d")
    assert p.pairs == 1 and p.last_paired_at == 1.01
    # an RGB frame already segmented alone is not segmented twice when its partner shows up late
    p.add("rgb", F(2.0, tag="r2"), mode=UNSYNCED)
    assert p.take(now=2.0, mode=UNSYNCED).mode == UNSYNCED
    p.add("depth", F(2.0, tag="d2"), mode=UNSYNCED)
    assert p.take(now=2.0, mode=UNSYNCED) is None and p.pairs == 2


def test_every_mode_of_the_vocabulary_is_handled():
    for mode in (RGBD, RGB_ONLY, DEPTH_ONLY, NO_INPUT, UNSYNCED):
        p = _pairer()
        p.add("rgb", F(1.0), mode=mode)
        p.take(now=1.0, mode=mode)
    with pytest.raises(ValueError, match="unknown mode"):
        _pairer().take(now=0.0, mode="bogus")


def test_a_stream_arriving_frames_late_still_pairs_every_frame():
    """RealSense publishes aligned depth after the colour frame of the same moment; at 30 Hz on a
    loaded machine it lands two to three colour frames later. Every frame must still pair (one held
    frame per stream paired none of them)."""
    dt, lag = 1 / 30, 3
    p = _pairer(slop=0.005, timeout=0.5)
    jobs = []
    for i in range(60 + lag):
        t = i * dt
        if i < 60:
            p.add("rgb", F(t, received=t, tag=i), mode="rgbd")
        if i >= lag:  # depth of frame i - lag arrives now
            p.add("depth", F((i - lag) * dt, received=t, tag=i - lag), mode="rgbd")
        job = p.take(now=t, mode="rgbd")
        if job is not None:
            jobs.append(job)
    assert [(j.rgb.data, j.depth.data) for j in jobs] == [(i, i) for i in range(60)]
    assert p.dropped == 0


def test_a_burst_after_a_stall_pairs_again_at_once():
    """A RELIABLE stream whose lost fragments are being repaired stalls, then delivers its backlog
    at once: the newest pair in the burst is segmented, the older frames are dropped as superseded."""
    dt = 1 / 15
    p = _pairer(slop=0.005, timeout=1.0)
    for i in range(6):  # depth keeps coming; rgb frames 0-5 are held up in the middleware
        p.add("depth", F(i * dt, received=i * dt, tag=i), mode="rgbd")
    assert p.take(now=5 * dt, mode="rgbd") is None
    burst = 5 * dt + 0.01
    for i in range(6):  # the repaired backlog arrives within a few ms
        p.add("rgb", F(i * dt, received=burst, tag=i), mode="rgbd")
    job = p.take(now=burst, mode="rgbd")
    assert (job.rgb.data, job.depth.data) == (5, 5)
    assert p.drops["unpaired"] == 0 and p.newest("rgb") is None and p.newest("depth") is None


def test_the_history_is_bounded():
    p = ApproxTimePairer(slop=0.005, rgb_timeout=10.0, depth_timeout=10.0, history=4)
    for i in range(10):  # depth never comes; the timeout is long
        p.add("rgb", F(i * 0.1, tag=i), mode="rgbd")
    assert [f.data for f in p.pending["rgb"]] == [6, 7, 8, 9]
    assert p.drops["superseded"] == 6
    with pytest.raises(ValueError, match="history"):
        ApproxTimePairer(slop=0.01, rgb_timeout=1, depth_timeout=1, history=0)
