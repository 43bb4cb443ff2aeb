"""Small ROS-free meters for diagnostics: rates, latency percentiles, log throttling.

All of them take the current time (float seconds) as an argument.
"""
from __future__ import annotations

from collections import deque

import numpy as np


class RateMeter:
    """Event rate over a sliding time window (the diagnostic_updater FrequencyStatus idea)."""

    def __init__(self, window: float = 5.0, maxlen: int = 1000) -> None:
        self.window = float(window)
        self.times: deque[float] = deque(maxlen=maxlen)
        self.count = 0  # events ever seen

    def tick(self, now: float) -> None:
        if self.times and now < self.times[-1]:
            self.times.clear()  # clock went backwards (bag loop); start over
        self.times.append(now)
        self.count += 1

    def rate(self, now: float) -> float:
        """Events per second in the last ``window`` seconds (0 with fewer than two events)."""
        while self.times and (now - self.times[0] > self.window or now < self.times[0]):
            self.times.popleft()
        if len(self.times) < 2:
            return 0.0
        # n events span n-1 intervals. Measuring up to `now` (not to the last event) makes
        # a stream that stopped decay towards 0 instead of freezing at its old rate.
        span = max(now, self.times[-1]) - self.times[0]
        return (len(self.times) - 1) / span if span > 0 else 0.0


class LatencyStats:
    """The last ``maxlen`` latencies and their percentiles."""

    def __init__(self, maxlen: int = 200) -> None:
        self.values: deque[float] = deque(maxlen=maxlen)
        self.count = 0

    def add(self, seconds: float) -> None:
        self.values.append(float(seconds))
        self.count += 1

    def percentile(self, q: float) -> float | None:
        """q in [0, 100]; None before the first sample."""
        if not self.values:
            return None
        return float(np.percentile(np.fromiter(self.values, float), q))


class Throttle:
    """Allow one message per key per ``period`` and count what was suppressed in between."""

    def __init__(self, period: float) -> None:
        self.period = float(period)
        self.last: dict[object, float] = {}
        self.suppressed: dict[object, int] = {}

    def allow(self, key: object, now: float) -> tuple[bool, int]:
        """(emit?, how many were suppressed since the last emitted one)."""
        last = self.last.get(key)
        if last is None or now - last >= self.period or now < last:
            self.last[key] = now
            return True, self.suppressed.pop(key, 0)
        self.suppressed[key] = self.suppressed.get(key, 0) + 1
        return False, 0
