"""Per-modality watchdogs and the input mode they imply (ROS-free).

A QoS deadline is not a usable watchdog (a publisher with the default
deadline is incompatible with a subscriber that asks for one), so staleness is
judged here from arrival times on the node clock, which follows ``/clock``
when ``use_sim_time`` is set. Times are float seconds passed in by the caller.

Mode table (alive = a usable frame arrived within the modality's timeout)::

    rgb alive  depth alive   mode
    yes        yes           rgbd
    yes        no            rgb_only     (depth takes the learned token)
    no         yes           depth_only   (RGB takes the learned token)
    no         no            no_input     (nothing is published)

Start-up grace: when a frame arrives while every stream is dead (at start-up,
or after ``no_input``), the streams not seen yet are presumed alive for their
own timeout. Cameras start their streams a few milliseconds apart; without the
grace the node would flicker ``no_input -> rgb_only -> rgbd`` and process the
first frame without its partner. A stream that really is missing is declared
dead after its timeout, exactly as if it had just stopped.
"""
from __future__ import annotations

from dataclasses import dataclass, field

EPS = 1e-9  # ROS stamps have nanosecond resolution; absorbs float rounding at the boundary
MODES = ("rgbd", "rgb_only", "depth_only", "no_input")


def mode_for(*, rgb: bool, depth: bool) -> str:
    """The mode for the given stream liveness."""
    if rgb and depth:
        return "rgbd"
    if rgb:
        return "rgb_only"
    if depth:
        return "depth_only"
    return "no_input"


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
class ModeChange:
    previous: str
    mode: str
    now: float


@dataclass
class ModeWatchdog:
    """Both stream watchdogs plus the current mode and its history."""

    rgb_timeout: float
    depth_timeout: float
    grace: bool = True  # presume unseen streams alive for one timeout after the first frame
    mode: str = "no_input"
    transitions: int = 0
    history: list[ModeChange] = field(default_factory=list)  # bounded to the last 100 changes

    def __post_init__(self) -> None:
        self.streams = {"rgb": StreamWatchdog(self.rgb_timeout), "depth": StreamWatchdog(self.depth_timeout)}
        self.presumed_since: dict[str, float | None] = {m: None for m in self.streams}

    def feed(self, modality: str, now: float) -> None:
        """A usable frame of ``modality`` arrived at ``now``."""
        if self.grace and not any(s.alive(now) for s in self.streams.values()):
            for m in self.streams:
                self.presumed_since[m] = now if m != modality else None
        self.streams[modality].feed(now)
        self.presumed_since[modality] = None

    def alive(self, modality: str, now: float) -> bool:
        """Fresh frame within the timeout, or still inside the start-up grace."""
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

    def age(self, modality: str, now: float) -> float | None:
        return self.streams[modality].age(now)

    def update(self, now: float) -> tuple[str, bool]:
        """Re-evaluate at ``now``; returns (mode, changed)."""
        mode = mode_for(rgb=self.alive("rgb", now), depth=self.alive("depth", now))
        changed = mode != self.mode
        if changed:
            self.history.append(ModeChange(self.mode, mode, now))
            del self.history[:-100]
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
