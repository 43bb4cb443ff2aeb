"""ROS-free replay logic: dropout windows and playback timing.

Everything here takes times as arguments (seconds or nanoseconds), never reads a
clock, so the replay's behaviour is unit-testable without ROS or sleeping.

* :func:`parse_drop` turns ``TOPIC@START:END`` into a :class:`DropWindow`
  (seconds from the bag's start; an empty END means "until the end").
* :class:`DropoutTracker` says whether a topic is suppressed at a bag time and
  reports each window boundary once, in time order, so the replay can announce
  it when playback reaches it.
* :class:`PlaybackScheduler` maps bag time to a wall-clock deadline for a rate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

DROP_START = "drop_start"
DROP_END = "drop_end"


@dataclass(frozen=True)
class DropWindow:
    """Suppress ``topic`` while ``start_s <= t < end_s`` (t in seconds from the bag's start)."""

    topic: str
    start_s: float
    end_s: float = math.inf

    def __post_init__(self) -> None:
        if not self.topic:
            raise ValueError("drop window needs a topic")
        if not (math.isfinite(self.start_s) and self.start_s >= 0):
            raise ValueError(f"drop window for {self.topic}: start must be a finite number >= 0, got {self.start_s}")
        if not self.end_s > self.start_s:
            raise ValueError(f"drop window for {self.topic}: end ({self.end_s}) must be after start ({self.start_s})")

    def active(self, t: float) -> bool:
        return self.start_s <= t < self.end_s

    def to_dict(self) -> dict:
        return {"topic": self.topic, "start_s": self.start_s, "end_s": None if math.isinf(self.end_s) else self.end_s}

    def spec(self) -> str:
        end = "" if math.isinf(self.end_s) else f"{self.end_s:g}"
        return f"{self.topic}@{self.start_s:g}:{end}"


def parse_drop(spec: str) -> DropWindow:
    """``TOPIC@START:END`` -> :class:`DropWindow`. Times are seconds from the bag's start; END may be empty.

    ROS topic names can contain neither ``@`` nor ``:``, so the split is unambiguous.
    """
    usage = f"bad --drop {spec!r}: expected TOPIC@START:END in seconds from the bag's start, e.g. /camera/depth@2.0:4.5"
    topic, sep, span = spec.strip().rpartition("@")
    if not sep or not topic or ":" not in span:
        raise ValueError(usage)
    start_txt, _, end_txt = span.partition(":")
    try:
        start = float(start_txt)
        end = math.inf if end_txt.strip() == "" else float(end_txt)
    except ValueError:
        raise ValueError(usage) from None
    try:
        return DropWindow(topic=topic, start_s=start, end_s=end)
    except ValueError as err:
        raise ValueError(f"bad --drop {spec!r}: {err}") from None


@dataclass(frozen=True)
class Boundary:
    """A window opening (``drop_start``) or closing (``drop_end``) at ``time_s``.

    ``truncated`` marks a close forced by the end of the bag (the window ran past it).
    """

    time_s: float
    kind: str
    window: DropWindow
    truncated: bool = False


class DropoutTracker:
    """Which topics are suppressed at a bag time, and which window boundaries were just crossed.

    Call :meth:`advance` with non-decreasing bag times (seconds from the bag's start).
    A boundary at exactly a message's time is reported before that message, which
    matches the half-open window: the message at ``start`` is dropped, the one at
    ``end`` is published again.
    """

    def __init__(self, windows: Sequence[DropWindow]) -> None:
        self.windows = list(windows)
        bounds = [Boundary(w.start_s, DROP_START, w) for w in self.windows]
        bounds += [Boundary(w.end_s, DROP_END, w) for w in self.windows if math.isfinite(w.end_s)]
        # Ends before starts at equal times, so back-to-back windows read as "end, start".
        self._bounds = sorted(bounds, key=lambda b: (b.time_s, b.kind != DROP_END))
        self.reset()

    def reset(self) -> None:
        """Start over from bag time 0 (a new loop iteration)."""
        self._next = 0
        self._open: list[DropWindow] = []

    @property
    def open_windows(self) -> list[DropWindow]:
        return list(self._open)

    def advance(self, t: float) -> list[Boundary]:
        """Boundaries with ``time_s <= t`` not reported yet, in time order."""
        out = []
        while self._next < len(self._bounds) and self._bounds[self._next].time_s <= t:
            b = self._bounds[self._next]
            self._next += 1
            if b.kind == DROP_START:
                self._open.append(b.window)
            else:
                self._open.remove(b.window)
            out.append(b)
        return out

    def close(self, t: float) -> list[Boundary]:
        """At the end of the bag (time ``t``): forced ``drop_end`` for every window still open."""
        out = [Boundary(t, DROP_END, w, truncated=True) for w in self._open]
        self._open = []
        self._next = len(self._bounds)
        return out

    def suppressed(self, topic: str, t: float) -> bool:
        """True if any window of ``topic`` covers bag time ``t`` (independent of :meth:`advance`)."""
        return any(w.topic == topic and w.active(t) for w in self.windows)


@dataclass
class PlaybackScheduler:
    """Maps bag time to a deadline on any monotonic clock, at ``rate`` x real time.

    The clock is injected: :meth:`start` takes "now" and the bag time that plays at
    that moment; :meth:`deadline` then gives when a message stamped ``bag_ns`` is due.
    A replay that falls behind publishes late messages at once and does not skip,
    like ``ros2 bag play``.
    """

    rate: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"rate must be a finite number > 0, got {self.rate}")
        self._t0: float | None = None
        self._bag0 = 0

    def start(self, now: float, bag_start_ns: int) -> None:
        self._t0 = float(now)
        self._bag0 = int(bag_start_ns)

    def _check(self) -> float:
        if self._t0 is None:
            raise RuntimeError("PlaybackScheduler.start() must be called first")
        return self._t0

    def deadline(self, bag_ns: int) -> float:
        """Clock time at which the message with bag time ``bag_ns`` is due."""
        return self._check() + (int(bag_ns) - self._bag0) * 1e-9 / self.rate

    def wait(self, bag_ns: int, now: float) -> float:
        """Seconds still to wait before publishing ``bag_ns`` (0 when due or late)."""
        return max(0.0, self.deadline(bag_ns) - now)

    def bag_time_ns(self, now: float) -> int:
        """The bag time playing at clock time ``now`` (for ``/clock``); never before the start."""
        return self._bag0 + int(round(max(0.0, now - self._check()) * self.rate * 1e9))


def shift_stamp(stamp_ns: int, *, bag_start_ns: int, new_start_ns: int, rate: float) -> int:
    """Re-stamp: the bag time ``stamp_ns`` mapped onto a playback that started at ``new_start_ns``.

    Stamps equal in the bag stay equal (so RGB, depth and ground truth of one frame still
    match), and at ``rate`` 1 a stamp equals the wall time its message is due.
    """
    return int(new_start_ns) + int(round((int(stamp_ns) - int(bag_start_ns)) / rate))
