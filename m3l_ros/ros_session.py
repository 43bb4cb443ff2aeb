"""One rclpy session for the command-line tools (replay, replay_eval), and their DDS transport."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator, Sequence

import rclpy
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions


PROFILE_NAME = "fastdds_large_images.xml"
PROFILE_VARS = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")


def large_image_profile() -> Path | None:
    """The packaged Fast DDS profile for camera-size images: in the source tree, or in the
    install's ``share/m3l_ros/config`` (pip: under ``sys.prefix``; colcon: the package prefix)."""
    here = Path(__file__).resolve()
    candidates = [here.parents[1] / "config" / PROFILE_NAME,
                  Path(sys.prefix) / "share" / "m3l_ros" / "config" / PROFILE_NAME]
    candidates += [lib.parent / "share" / "m3l_ros" / "config" / PROFILE_NAME  # <prefix>/lib/pythonX/site-packages
                   for lib in here.parents if lib.name == "lib"]
    return next((c for c in candidates if c.is_file()), None)


def use_large_image_transport() -> Path | None:
    """Give THIS process the large-image Fast DDS profile, unless the user chose a profile.

    Call before ``rclpy.init``. A 640x480 rgb8 frame (900 KB) does not fit Fast DDS's default
    512 KB shared-memory segment, and the publisher's segment is what counts: a best-effort
    publisher then loses most frames and a reliable one stalls under load. Setting the
    variable inside the process means users of the project's own publishers set nothing.
    """
    if any(os.environ.get(v) for v in PROFILE_VARS) or os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") \
            != "rmw_fastrtps_cpp":
        return None
    profile = large_image_profile()
    if profile is not None:
        os.environ["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(profile)
        logging.getLogger(__name__).debug("Fast DDS profile for large images: %s", profile)
    return profile


@contextlib.contextmanager
def ros_session(node_name: str, args: Sequence[str] | None = None) -> Iterator[tuple[Node, threading.Event]]:
    """rclpy with one node; SIGINT/SIGTERM set the yielded stop flag instead of raising.

    The tool finishes its current work when ``stop`` is set, and the node and
    the context are always shut down, so the process exits 0 without a traceback.
    """
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    use_large_image_transport()
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    try:
        node = rclpy.create_node(node_name)
        yield node, stop
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
