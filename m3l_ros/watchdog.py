"""Per-modality watchdogs and the input mode they imply (ROS-free).

A QoS deadline is not a usable watchdog (a publisher with the default
deadline is incompatible with a subscriber that asks for one), so staleness is
judged here from arrival times on the node clock, which follows ``/clock``
when ``use_sim_time`` is set. Times are float seconds passed in by the caller.

Mode table (alive = a usable frame arrived within the modality's timeout)::

    rgb alive  depth alive  paired lately  mode
    yes        yes          yes            rgbd
    yes        yes          no             unsynced    (RGB with the learned depth token)
    yes        no                          rgb_only    (depth takes the learned token)
    no         yes                         depth_only  (RGB takes the learned token)
    no         no                          no_input    (nothing is published)

*Watched streams*: a uni-modal checkpoint watches only its own stream; the
other one is never alive, so an RGB model runs in ``rgb_only``, its healthy
mode (:attr:`ModeWatchdog.healthy_mode`).

*Start-up grace*: when a frame arrives while every stream is dead (at start-up,
or after ``no_input``), the streams not seen yet are presumed alive for their
own timeout. Cameras start their streams a few milliseconds apart; without the
grace the node would flicker ``no_input -> rgb_only -> rgbd``.

*Loss grace* (``loss_grace``): when one of two streams dies, the switch to the
single-modality mode waits this long after its timeout expired. If the other
stream dies within it (both cameras stopped together, staggered only by
scheduling), the mode goes straight to ``no_input`` and never shows a
single-modality mode.

*Unsynced* (``sync_timeout``): both streams alive but nothing paired for longer
than this (their stamps differ by more than ``sync_slop``). The caller passes
the time of the last pair to :meth:`ModeWatchdog.update`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from m3l_core.vocab import DEPTH_ONLY, MODALITIES, NO_INPUT, RGB_ONLY, RGBD, UNSYNCED, mode_for

EPS = 1e-9  # ROS stamps have nanosecond resolution; absorbs float rounding at the boundary


class StreamWatchdog:
    """When did one stream last deliver a usable frame, and is that recent enough?"""

    def __init__(self, timeout: float) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 s, got {timeout}")
        self.timeout = float(timeout)
        self.last: float | None = None

    def feed(self, now: float) -> None:
        self.last = now

    def age(self, now: float) -> float | None:
        """Seconds since the last usable frame, or None if none has arrived."""
        if self.last is None:
            return None
        if now < self.last:
            # The clock went backwards (e.g. a looping bag with use_sim_time).
            # Restart the count from the new time instead of waiting for it to catch up.
            self.last = now
        return now - self.last

    def alive(self, now: float) -> bool:
        age = self.age(now)
        return age is not None and age <= self.timeout + EPS


@dataclass
class ModeWatchdog:
    """The watched stream watchdogs plus the current mode (see the module docstring)."""

    rgb_timeout: float
    depth_timeout: float
    grace: bool = True  # presume unseen streams alive for one timeout after the first frame
    modalities: tuple[str, ...] = MODALITIES  # the streams the model uses
    loss_grace: float = 0.0  # s after a timeout before a single stream counts as lost
    sync_timeout: float | None = None  # s without a pair (both alive) before ``unsynced``; None: never
    mode: str = NO_INPUT
    transitions: int = 0
    rgbd_since: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        unknown = set(self.modalities) - set(MODALITIES)
        if unknown or not self.modalities:
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {self.modalities}")
        self.streams = {"rgb": StreamWatchdog(self.rgb_timeout), "depth": StreamWatchdog(self.depth_timeout)}
        self.presumed_since: dict[str, float | None] = {m: None for m in self.streams}

    @property
    def healthy_mode(self) -> str:
        """The mode with every stream the model uses alive (``rgbd``, or a uni-modal model's own mode)."""
        return mode_for(rgb="rgb" in self.modalities, depth="depth" in self.modalities)

    def feed(self, modality: str, now: float) -> None:
        """A usable frame of ``modality`` arrived at ``now``."""
        if modality not in self.modalities:
            return
        if self.grace and not any(self.streams[m].alive(now) for m in self.modalities):
            for m in self.modalities:
                self.presumed_since[m] = now if m != modality else None
        self.streams[modality].feed(now)
        self.presumed_since[modality] = None

    def alive(self, modality: str, now: float) -> bool:
        """Fresh frame within the timeout, or still inside the start-up grace."""
        if modality not in self.modalities:
            return False
        stream = self.streams[modality]
        if stream.alive(now):
            return True
        since = self.presumed_since[modality]
        if since is None:
            return False
        if now < since or now - since > stream.timeout + EPS:
            self.presumed_since[modality] = None  # grace over (or the clock jumped back)
            return False
        return True

    def dead_for(self, modality: str, now: float) -> float:
        """Seconds since ``modality``'s timeout expired (0 while alive or if it never lived)."""
        stream = self.streams[modality]
        last = stream.last if stream.last is not None else self.presumed_since[modality]
        if last is None:
            return 0.0
        return max(0.0, now - last - stream.timeout)

    def age(self, modality: str, now: float) -> float | None:
        return self.streams[modality].age(now)

    def update(self, now: float, *, last_pair: float | None = None) -> tuple[str, bool]:
        """Re-evaluate at ``now`` (``last_pair``: node-clock time of the newest RGB-D pair); (mode, changed)."""
        rgb, depth = self.alive("rgb", now), self.alive("depth", now)
        mode = mode_for(rgb=rgb, depth=depth)
        if mode == RGBD:
            if self.rgbd_since is None or self.mode not in (RGBD, UNSYNCED) or now < self.rgbd_since:
                self.rgbd_since = now
            since = self.rgbd_since if last_pair is None or last_pair > now else max(self.rgbd_since, last_pair)
            if self.sync_timeout is not None and now - since > self.sync_timeout + EPS:
                mode = UNSYNCED
        elif (mode in (RGB_ONLY, DEPTH_ONLY) and self.mode in (RGBD, UNSYNCED)
              and self.dead_for("depth" if rgb else "rgb", now) < self.loss_grace - EPS):
            mode = self.mode  # one stream just died: wait for the loss grace before switching
        changed = mode != self.mode
        if changed:
            self.mode = mode
            self.transitions += 1
        return mode, changed

    def set_timeouts(self, *, rgb_timeout: float | None = None, depth_timeout: float | None = None) -> None:
        if rgb_timeout is not None:
            if not rgb_timeout > 0:
                raise ValueError(f"rgb_timeout must be > 0 s, got {rgb_timeout}")
            self.rgb_timeout = self.streams["rgb"].timeout = float(rgb_timeout)
        if depth_timeout is not None:
            if not depth_timeout > 0:
                raise ValueError(f"depth_timeout must be > 0 s, got {depth_timeout}")
            self.depth_timeout = self.streams["depth"].timeout = float(depth_timeout)


class ClockMonitor:
    """Notices a node clock that stands still while wall time runs (``use_sim_time`` without ``/clock``).

    The watchdog runs on the node clock, so a frozen clock freezes it: streams never time out.
    Fed from a steady (wall) timer; :meth:`stalled_for` is how long the node clock has not moved.
    """

    def __init__(self) -> None:
        self.last_node: float | None = None
        self.since_wall: float | None = None

    def feed(self, *, node_now: float, wall_now: float) -> None:
        if self.last_node is None or node_now != self.last_node:
            self.last_node, self.since_wall = node_now, wall_now

    def stalled_for(self, wall_now: float) -> float:
        return 0.0 if self.since_wall is None else max(0.0, wall_now - self.since_wall)
