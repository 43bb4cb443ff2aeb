"""Approximate-time RGB-D pairing that keeps only the newest frames (ROS-free).

message_filters is not used: it is not installable from PyPI, it has no drop
callback, and its Python synchronizer runs the user callback under its lock.
:class:`ApproxTimePairer` holds a short history of unpaired frames per modality
(at most :data:`HISTORY`, none older than the modality's timeout) and one ready
:class:`Job`; anything older is dropped and counted, so inference never falls
behind the cameras. The history lets a stream that arrives a few frames late
still pair: a RealSense publishes aligned depth after the colour frame of the
same moment, and a RELIABLE stream catches up in bursts after its lost fragments
are repaired. With one held frame per stream such a lag pairs nothing at all.

Times are float seconds. ``stamp`` is the header stamp (pairing), ``received``
is the node-clock arrival time (staleness). The current mode comes from
:class:`m3l_ros.watchdog.ModeWatchdog`:

* ``rgbd``: the newest RGB frame with a depth frame whose stamp differs by at
  most ``slop`` pairs with it; everything older than the pair is dropped
  (``superseded``). A frame that can no longer pair (the other stream already
  has a frame stamped later than it + ``slop``, and stamps only grow) is
  dropped (``unpaired``).
* ``rgb_only`` / ``depth_only``: the newest frame of the live modality becomes
  a job by itself (the missing one takes the learned-token path).
* ``unsynced`` (both alive, stamps never within ``slop``): every RGB frame
  becomes a job by itself, with the learned depth token, and is still offered
  for pairing; the first pair ends it (:attr:`ApproxTimePairer.last_paired_at`).
* ``no_input``: nothing is produced.

A frame whose arrival is older than its modality's timeout is never paired.
A stamp that goes backwards (a bag loop) resets the pairing state: held
frames from the old timeline are dropped.
"""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from m3l_core.vocab import DEPTH_ONLY, MODALITIES, MODES, NO_INPUT, RGB_ONLY, RGBD, UNSYNCED

EPS = 1e-9  # ROS stamps have nanosecond resolution; absorbs float rounding at the boundaries
HISTORY = 10  # unpaired frames held per modality (message_filters' usual queue size): pairs across a 10-frame lag


@dataclass(frozen=True)
class Frame:
    stamp: float  # header stamp, seconds; only used to pair
    received: float  # node-clock arrival time, seconds; only used for staleness
    data: Any = None  # whatever the caller needs later (decoded image, header, ...)


@dataclass(frozen=True)
class Job:
    """One unit of inference work."""

    mode: str
    rgb: Frame | None
    depth: Frame | None

    @property
    def primary(self) -> Frame:
        """The frame whose header and size the output takes: RGB if present, else depth."""
        frame = self.rgb if self.rgb is not None else self.depth
        assert frame is not None
        return frame

    @property
    def frames(self) -> tuple[Frame, ...]:
        return tuple(f for f in (self.rgb, self.depth) if f is not None)


class ApproxTimePairer:
    """Pairs the newest RGB and depth frames; counts every frame it drops by reason.

    Drop reasons: ``superseded`` (a newer frame or pair replaced it before
    inference took it), ``unpaired`` (it can no longer find a partner within
    ``slop``), ``expired`` (older than the timeout), ``reset`` (discarded by a
    backwards stamp jump).
    """

    def __init__(self, *, slop: float, rgb_timeout: float, depth_timeout: float, history: int = HISTORY) -> None:
        if history < 1:
            raise ValueError(f"history must be >= 1 frame, got {history}")
        self.slop = float(slop)
        self.timeouts = {"rgb": float(rgb_timeout), "depth": float(depth_timeout)}
        self.history = int(history)
        self.pending: dict[str, deque[Frame]] = {m: deque() for m in MODALITIES}  # unpaired, oldest first
        self.ready: Job | None = None
        self.last_stamp: dict[str, float | None] = {m: None for m in MODALITIES}
        self.drops: Counter[str] = Counter()
        self.pairs = 0
        self.last_paired_at: float | None = None  # arrival (node clock) of the newest pair's later frame
        # For recent misses: RGB's stamp-to-arrival offset minus depth's (see stamp_offset)
        self.offsets: deque[float] = deque(maxlen=15)

    # -- public API -------------------------------------------------------
    def add(self, modality: str, frame: Frame, *, mode: str) -> bool:
        """Offer a new frame. Returns True when its stamp went backwards and the state was reset."""
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        reset = False
        last = self.last_stamp[modality]
        if last is not None and frame.stamp < last:
            self._reset_after(frame.stamp)
            reset = True
        self.last_stamp[modality] = frame.stamp
        if mode == RGBD and self._upgrade_ready(modality, frame):
            return reset
        lone_rgb = mode == UNSYNCED and modality == "rgb"
        held = self.pending[modality]
        if len(held) >= self.history:
            held.popleft()
            if not lone_rgb:  # (in unsynced, a held RGB frame was a job)
                self.drops["superseded"] += 1
        held.append(frame)
        if lone_rgb:
            self._set_ready(Job(UNSYNCED, frame, None))
        self._match(mode)
        return reset

    def take(self, *, now: float, mode: str) -> Job | None:
        """The newest ready job, or None. Expires stale frames first."""
        for m in MODALITIES:
            held = self.pending[m]
            while held and self._stale(m, held[0], now):  # arrival order: the oldest expire first
                held.popleft()
                self.drops["expired"] += 1
        self._match(mode)
        job, self.ready = self.ready, None
        if job is not None and any(self._stale(m, f, now) for m, f in (("rgb", job.rgb), ("depth", job.depth)) if f):
            self.drops["expired"] += len(job.frames)
            return None
        return job

    def newest(self, modality: str) -> Frame | None:
        """The newest unpaired frame held for ``modality``."""
        held = self.pending[modality]
        return held[-1] if held else None

    def reset(self) -> None:
        """Forget everything held (counted as ``reset`` drops)."""
        held = sum(len(h) for h in self.pending.values()) + (len(self.ready.frames) if self.ready else 0)
        self.drops["reset"] += held
        self.pending = {m: deque() for m in MODALITIES}
        self.ready = None
        self.last_stamp = {m: None for m in MODALITIES}

    def set_params(self, *, slop: float | None = None, rgb_timeout: float | None = None,
                   depth_timeout: float | None = None) -> None:
        if slop is not None:
            self.slop = float(slop)
        if rgb_timeout is not None:
            self.timeouts["rgb"] = float(rgb_timeout)
        if depth_timeout is not None:
            self.timeouts["depth"] = float(depth_timeout)

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())

    @property
    def stamp_offset(self) -> float | None:
        """How far RGB stamps run ahead of depth stamps for frames arriving together, in seconds
        (median of recent misses; None after a pair). Comparing ``stamp - received`` of each
        stream measures the clock offset itself, not the nearest frames' difference, which is
        off by up to one frame period."""
        if not self.offsets:
            return None
        values = sorted(self.offsets)
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2

    # -- internals --------------------------------------------------------
    def _stale(self, modality: str, frame: Frame, now: float) -> bool:
        return now - frame.received > self.timeouts[modality] + EPS

    def _reset_after(self, stamp: float) -> None:
        """A stamp went back to ``stamp``: drop held frames from the old (later) timeline."""
        for m in MODALITIES:
            kept = deque(f for f in self.pending[m] if f.stamp <= stamp + self.slop)
            self.drops["reset"] += len(self.pending[m]) - len(kept)
            self.pending[m] = kept
            if self.last_stamp[m] is not None and self.last_stamp[m] > stamp + self.slop:
                # the other stream will jump too; its first new frame must not count as a second reset
                self.last_stamp[m] = None
        if self.ready is not None and self.ready.primary.stamp > stamp + self.slop:
            self.drops["reset"] += len(self.ready.frames)
            self.ready = None

    def _upgrade_ready(self, modality: str, frame: Frame) -> bool:
        """A returning stream's first frame joins the single-modality job still waiting for inference."""
        job = self.ready
        if job is None or job.mode not in (RGB_ONLY, DEPTH_ONLY):
            return False
        lone = job.primary
        lone_modality = "rgb" if job.rgb is not None else "depth"
        if lone_modality == modality or abs(lone.stamp - frame.stamp) > self.slop + EPS:
            return False
        rgb, depth = (lone, frame) if lone_modality == "rgb" else (frame, lone)
        self.ready = Job(RGBD, rgb, depth)
        self._paired(rgb, depth)
        return True

    def _paired(self, rgb: Frame, depth: Frame) -> None:
        self.pairs += 1
        self.last_paired_at = max(rgb.received, depth.received)
        self.offsets.clear()

    def _set_ready(self, job: Job) -> None:
        if self.ready is not None:
            self.drops["superseded"] += len(self.ready.frames)
        self.ready = job

    def _newest_pair(self) -> tuple[Frame, Frame] | None:
        """The newest RGB frame that has a depth frame within ``slop``, with the nearest such depth frame."""
        depths = self.pending["depth"]
        for rgb in reversed(self.pending["rgb"]):
            best = min(depths, key=lambda d: abs(d.stamp - rgb.stamp), default=None)
            if best is not None and abs(best.stamp - rgb.stamp) <= self.slop + EPS:
                return rgb, best
        return None

    def _drop_through(self, modality: str, stamp: float) -> int:
        """Remove held ``modality`` frames stamped at or before the paired one's ``stamp``; how many
        of them were older than it."""
        held, removed = self.pending[modality], 0
        while held and held[0].stamp <= stamp:
            held.popleft()
            removed += 1
        return removed - 1

    def _match(self, mode: str) -> None:
        if mode in (RGBD, UNSYNCED):
            pair = self._newest_pair()
            if pair is not None:
                rgb, depth = pair
                self._paired(rgb, depth)
                job = self.ready
                if mode == RGBD:
                    self._set_ready(Job(RGBD, rgb, depth))
                elif job is not None and job.rgb is rgb:  # unsynced: the lone RGB job gets its partner
                    self.ready = Job(RGBD, rgb, depth)
                # else that RGB frame was already segmented alone; the pair only ends ``unsynced``
                older_rgb, older_depth = self._drop_through("rgb", rgb.stamp), self._drop_through("depth", depth.stamp)
                # older frames of both streams lost to a newer pair (unsynced RGB frames were jobs already)
                self.drops["superseded"] += older_depth + (older_rgb if mode == RGBD else 0)
            self._drop_unpairable(mode)
        elif mode in (RGB_ONLY, DEPTH_ONLY):
            live = "rgb" if mode == RGB_ONLY else "depth"
            held = self.pending[live]
            if held:
                frame = held.pop()
                self.drops["superseded"] += len(held)  # older frames of the live stream: only the newest runs
                held.clear()
                self._set_ready(Job(mode, frame if live == "rgb" else None, frame if live == "depth" else None))
        elif mode != NO_INPUT:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")

    def _drop_unpairable(self, mode: str) -> None:
        """Drop frames that can never pair: the other stream already holds a frame stamped later than
        theirs + ``slop`` (stamps only grow, and no held frame is within ``slop``: that would have paired)."""
        rgbs, depths = self.pending["rgb"], self.pending["depth"]
        if not rgbs or not depths:
            return
        newest_rgb, newest_depth = rgbs[-1], depths[-1]
        offset = (newest_rgb.stamp - newest_rgb.received) - (newest_depth.stamp - newest_depth.received)
        for modality, other in (("rgb", newest_depth), ("depth", newest_rgb)):
            held = self.pending[modality]
            while held and held[0].stamp < other.stamp - self.slop - EPS:
                held.popleft()
                self.offsets.append(offset)
                if not (mode == UNSYNCED and modality == "rgb"):  # an unsynced RGB frame was segmented alone
                    self.drops["unpaired"] += 1
