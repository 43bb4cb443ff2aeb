"""CPU thread count: one setting (``num_threads`` / ``--threads``) for every entry point.

torch's default uses every core for intra-op work. Next to a ROS executor, DDS threads,
DataLoader workers or a second process, that oversubscribes a small robot computer and runs
several times slower (see docs/threads.md). The default here, ``0`` = auto, takes half the
usable cores (at least 1) and leaves the rest to everything else; a positive number is taken
as given.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def usable_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def resolve_threads(num_threads: int = 0) -> int:
    """``0`` -> auto (half the usable cores, at least 1); ``n > 0`` -> n."""
    if num_threads < 0:
        raise ValueError(f"num_threads must be >= 0 (0 = auto), got {num_threads}")
    return num_threads if num_threads > 0 else max(1, usable_cores() // 2)


def configure_threads(num_threads: int = 0) -> int:
    """Set torch's intra-op threads (and OpenCV's) once for this process; returns the count used."""
    import cv2
    import torch

    n = resolve_threads(num_threads)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    cv2.setNumThreads(n)
    log.debug("using %d CPU thread(s) (num_threads=%d, %d usable cores)", n, num_threads, usable_cores())
    return n
