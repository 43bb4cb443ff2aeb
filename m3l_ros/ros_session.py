"""One rclpy session for the command-line tools (replay, replay_eval)."""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator, Sequence

import rclpy
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions


@contextlib.contextmanager
def ros_session(node_name: str, args: Sequence[str] | None = None) -> Iterator[tuple[Node, threading.Event]]:
    """rclpy with one node; SIGINT/SIGTERM set the yielded stop flag instead of raising.

    The tool finishes its current work when ``stop`` is set, and the node and
    the context are always shut down, so the process exits 0 without a traceback.
    """
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    try:
        node = rclpy.create_node(node_name)
        yield node, stop
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
