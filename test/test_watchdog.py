"""ROS-free tests of the watchdog state machine (m3l_ros.watchdog) and the diagnostics meters
(m3l_ros.stats), with injected time."""
from __future__ import annotations

import pytest

from m3l_core.vocab import DEPTH_ONLY, MODE_PRESENCE, MODES, NO_INPUT, RGB_ONLY, RGBD, UNSYNCED, mode_for
from m3l_ros.node_diagnostics import ERROR, OK, WARN, health
from m3l_ros.stats import LatencyStats, RateMeter, Throttle
from m3l_ros.watchdog import ClockMonitor, ModeWatchdog, StreamWatchdog


def test_mode_table():
    assert mode_for(rgb=True, depth=True) == RGBD
    assert mode_for(rgb=True, depth=False) == RGB_ONLY  # not unsynced, which shares the presence
    assert mode_for(rgb=False, depth=True) == DEPTH_ONLY
    assert mode_for(rgb=False, depth=False) == NO_INPUT
    assert MODES == ("rgbd", "rgb_only", "depth_only", "no_input", "unsynced")
    assert MODE_PRESENCE[UNSYNCED] == (True, False)


def test_stream_watchdog_timeout_boundary_and_clock_jump():
    w = StreamWatchdog(0.3)
    assert w.age(5.0) is None and not w.alive(5.0)
    w.feed(10.0)
    assert w.alive(10.3) and not w.alive(10.3001)
    assert w.age(10.25) == pytest.approx(0.25)
    # sim time jumps back (bag loop): the age restarts instead of going negative
    assert w.age(2.0) == 0.0
    assert w.alive(2.3) and not w.alive(2.31)
    with pytest.raises(ValueError, match="timeout"):
        StreamWatchdog(0.0)


def _drive(wd: ModeWatchdog, t0: float, t1: float, dt: float, feeds: tuple[str, ...]) -> list[tuple[float, str]]:
    """Feed the given streams every dt seconds in [t0, t1); return (time, new mode) changes."""
    changes = []
    t = t0
    while t < t1 - 1e-12:
        for m in feeds:
            wd.feed(m, t)
        for now in (t, t + dt / 2):
            mode, changed = wd.update(now)
            if changed:
                changes.append((round(now, 6), mode))
        t = round(t + dt, 9)
    return changes


def test_full_state_machine_with_recovery():
    wd = ModeWatchdog(rgb_timeout=0.3, depth_timeout=0.5)
    assert wd.update(0.0) == ("no_input", False)
    ch = _drive(wd, 0.0, 1.0, 0.1, ("rgb", "depth"))
    assert ch == [(0.0, "rgbd")]
    ch = _drive(wd, 1.0, 2.0, 0.1, ("rgb",))  # depth stops after its frame at 0.9
    assert ch == [(1.45, "rgb_only")]  # first check past 0.9 + 0.5
    ch = _drive(wd, 2.0, 3.0, 0.1, ("rgb", "depth"))
    assert ch == [(2.0, "rgbd")]
    ch = _drive(wd, 3.0, 4.0, 0.1, ("depth",))  # rgb stops after 2.9
    assert ch == [(3.25, "depth_only")]  # first check past 2.9 + 0.3
    ch = _drive(wd, 4.0, 5.0, 0.1, ())  # both stop; depth's last frame was 3.9
    assert ch == [(4.45, "no_input")]
    ch = _drive(wd, 5.0, 6.0, 0.1, ("rgb", "depth"))
    assert ch == [(5.0, "rgbd")]
    assert wd.transitions == 6


def test_startup_grace_avoids_flicker_and_expires():
    wd = ModeWatchdog(rgb_timeout=0.3, depth_timeout=0.3)
    wd.feed("rgb", 1.0)  # rgb's first frame arrives a moment before depth's
    assert wd.update(1.0) == ("rgbd", True)
    wd.feed("depth", 1.01)
    assert wd.update(1.01) == ("rgbd", False)
    # with the grace off the node would flicker through rgb_only
    wd2 = ModeWatchdog(rgb_timeout=0.3, depth_timeout=0.3, grace=False)
    wd2.feed("rgb", 1.0)
    assert wd2.update(1.0) == ("rgb_only", True)
    # depth never arrives: the grace ends after depth_timeout like a normal loss
    wd3 = ModeWatchdog(rgb_timeout=1.0, depth_timeout=0.3)
    for k in range(7):
        wd3.feed("rgb", 1.0 + 0.05 * k)
    assert wd3.update(1.3) == ("rgbd", True)
    assert wd3.update(1.31) == ("rgb_only", True)
    assert wd3.alive("depth", 1.31) is False and wd3.age("depth", 1.31) is None


def test_grace_is_not_granted_while_a_stream_is_alive():
    wd = ModeWatchdog(rgb_timeout=0.3, depth_timeout=0.3)
    for k in range(5):
        wd.feed("rgb", k * 0.1)
        wd.feed("depth", k * 0.1)
    wd.update(0.4)
    wd.feed("rgb", 0.5)  # depth just stopped; rgb keeps coming, no new grace for depth
    wd.feed("rgb", 0.6)
    wd.feed("rgb", 0.7)
    assert wd.update(0.71) == ("rgb_only", True)


def test_timeouts_change_live_and_validate():
    wd = ModeWatchdog(rgb_timeout=0.3, depth_timeout=0.3)
    wd.feed("rgb", 0.0)
    wd.feed("depth", 0.0)
    wd.update(0.0)
    wd.set_timeouts(depth_timeout=2.0)
    assert wd.update(1.0) == ("depth_only", True)
    with pytest.raises(ValueError, match="rgb_timeout"):
        wd.set_timeouts(rgb_timeout=-1.0)


def test_rate_meter_measures_and_decays():
    r = RateMeter(window=2.0)
    assert r.rate(0.0) == 0.0
    for k in range(21):
        r.tick(k * 0.05)  # 20 Hz for 1 s
    assert r.rate(1.0) == pytest.approx(20.0)
    assert r.rate(1.5) == pytest.approx(20 / 1.5)  # quiet time lowers the rate
    assert r.rate(10.0) == 0.0  # everything left the window
    r.tick(11.0)
    r.tick(5.0)  # clock jumped back: start over
    assert r.rate(5.0) == 0.0 and r.count == 23


def test_latency_percentiles():
    lat = LatencyStats(maxlen=100)
    assert lat.percentile(50) is None
    for v in range(1, 101):
        lat.add(v / 1000)
    assert lat.percentile(50) == pytest.approx(0.0505)
    assert lat.percentile(95) == pytest.approx(0.09505)
    for _ in range(100):
        lat.add(1.0)  # old samples leave the ring
    assert lat.percentile(50) == 1.0 and lat.count == 200


def test_throttle_counts_suppressed_messages_per_key():
    th = Throttle(2.0)
    assert th.allow(("rgb", "zero_size"), 0.0) == (True, 0)
    assert th.allow(("rgb", "zero_size"), 0.5) == (False, 0)
    assert th.allow(("rgb", "zero_size"), 1.0) == (False, 0)
    assert th.allow(("depth", "zero_size"), 1.0) == (True, 0)  # another key is independent
    assert th.allow(("rgb", "zero_size"), 2.0) == (True, 2)


# -- issue 9 item 7: modes match the model and the clock -------------------------------------------------
def test_both_streams_stopping_together_never_show_a_single_modality_mode():
    """Depth stops 40 ms before RGB (scheduling): within loss_grace, so straight to no_input."""
    for lag in (0.0, 0.021, 0.053, 0.1):
        wd = ModeWatchdog(rgb_timeout=0.5, depth_timeout=0.5, loss_grace=0.15)
        ch = _drive(wd, 0.0, 1.0, 0.01, ("rgb", "depth"))
        ch += _drive(wd, 1.0, 1.0 + lag, 0.01, ("rgb",))
        ch += _drive(wd, 1.0 + lag, 3.0, 0.01, ())
        assert [m for _, m in ch] == [RGBD, NO_INPUT], (lag, ch)


def test_loss_grace_delays_a_real_single_stream_loss_by_the_grace_only():
    wd = ModeWatchdog(rgb_timeout=0.5, depth_timeout=0.5, loss_grace=0.15)
    _drive(wd, 0.0, 1.0, 0.01, ("rgb", "depth"))
    ch = _drive(wd, 1.0, 3.0, 0.01, ("rgb",))  # depth's last frame at 0.99
    assert [m for _, m in ch] == [RGB_ONLY]
    assert ch[0][0] == pytest.approx(0.99 + 0.5 + 0.15, abs=0.006)
    # the grace never delays no_input or a recovery
    ch = _drive(wd, 3.0, 4.0, 0.01, ("rgb", "depth"))
    assert ch == [(3.0, RGBD)]


def test_uni_modal_model_watches_only_its_stream_and_its_mode_is_healthy():
    wd = ModeWatchdog(rgb_timeout=0.3, depth_timeout=0.3, modalities=("rgb",))
    assert wd.healthy_mode == RGB_ONLY
    wd.feed("depth", 0.0)  # a depth stream the model does not use changes nothing
    assert wd.update(0.0) == (NO_INPUT, False)
    ch = _drive(wd, 0.0, 1.0, 0.05, ("rgb", "depth"))
    assert ch == [(0.0, RGB_ONLY)]
    assert health(RGB_ONLY, healthy_mode=wd.healthy_mode)[0] == OK
    assert health(RGB_ONLY, healthy_mode=RGBD)[0] == WARN  # the same mode is degraded for an RGB-D model
    depth_model = ModeWatchdog(rgb_timeout=0.3, depth_timeout=0.3, modalities=("depth",))
    assert depth_model.healthy_mode == DEPTH_ONLY
    with pytest.raises(ValueError, match="modalities"):
        ModeWatchdog(rgb_timeout=0.3, depth_timeout=0.3, modalities=())


def test_sync_timeout_gives_unsynced_until_a_pair():
    wd = ModeWatchdog(rgb_timeout=0.5, depth_timeout=0.5, sync_timeout=0.5)
    for k in range(30):
        t = k * 0.05
        wd.feed("rgb", t)
        wd.feed("depth", t)
        mode, _ = wd.update(t, last_pair=0.2)  # the last pair was at 0.2 s
        assert mode == (UNSYNCED if t > 0.7 + 1e-9 else RGBD), t
    assert wd.update(1.5, last_pair=1.5) == (RGBD, True)
    assert health(UNSYNCED, healthy_mode=RGBD, offset=-0.5, slop=0.02) == (
        WARN, "RGB and depth stamps never pair (RGB - depth stamp offset -0.500 s, sync_slop 0.02 s): "
              "RGB only with the learned depth token")


def test_a_stalled_node_clock_is_reported():
    cm = ClockMonitor()
    for wall in range(10):  # use_sim_time without /clock: node time stays 0
        cm.feed(node_now=0.0, wall_now=float(wall))
    assert cm.stalled_for(9.0) == 9.0
    level, message = health(RGBD, healthy_mode=RGBD, clock_stalled_s=cm.stalled_for(9.0))
    assert level == WARN and "node clock has not moved for 9 s" in message
    assert health(NO_INPUT, healthy_mode=RGBD, clock_stalled_s=9.0)[0] == ERROR
    cm.feed(node_now=5.0, wall_now=10.0)  # the clock moves again
    assert cm.stalled_for(10.5) == 0.5
    assert health(RGBD, healthy_mode=RGBD, clock_stalled_s=0.5) == (OK, "RGB-D")
