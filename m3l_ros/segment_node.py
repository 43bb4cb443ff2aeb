"""``segment_node``: RGB-D semantic segmentation that keeps working when a camera stream dies.

Run it::

    ros2 run m3l_ros segment_node --ros-args -r rgb/image:=/camera/camera/color/image_raw \\
        -r depth/image:=/camera/camera/aligned_depth_to_color/image_raw
    python -m m3l_ros.segment_node --ros-args --params-file config/segment.yaml -p checkpoint:=model.safetensors
    ros2 run m3l_ros segment_lifecycle_node      # managed: ros2 lifecycle set /segment_node configure|activate

Topics (inputs are relative and remappable, outputs are private):

* in  ``rgb/image`` (rgb8, bgr8, rgba8, bgra8, mono8), ``depth/image`` (16UC1 mm, 32FC1 m),
  or with ``image_transport:=compressed`` ``rgb/image/compressed`` and
  ``depth/image/compressedDepth``; ``rgb/camera_info`` (optional)
* out ``~/labels`` (mono8 ids, 16UC1 past 255 classes), ``~/colored`` (rgb8, only with
  subscribers), ``~/camera_info``, ``~/mode`` (transient local), ``~/class_names``
  (transient local JSON), ``/diagnostics``

This module holds two thin node shells around one class of logic
(:class:`m3l_ros.node_core.SegmentCore`) and the process entry points. Exit status: 0 after
SIGINT, SIGTERM or a lifecycle ``shutdown`` (a requested stop, also while the model loads;
further signals during the shutdown are ignored), 1 on a configuration error (one FATAL line
naming the parameter). Only the standard library is imported before the signal handlers are in
place, so even an early Ctrl-C ends without a traceback.
"""
from __future__ import annotations

import signal
import sys
from typing import Any

EXIT_OK, EXIT_FAILURE = 0, 1


class ShutdownRequested(BaseException):
    """The first SIGINT/SIGTERM while the node is starting (e.g. loading the model): unwind and exit 0."""


class SignalGuard:
    """SIGINT/SIGTERM handling for the whole process, installed before anything slow is imported.

    The first signal interrupts start-up (:class:`ShutdownRequested`) or, once the node runs,
    only sets :attr:`signal_name` for the spin loop to notice. Every later signal is ignored:
    a terminal's Ctrl-C plus the one ``ros2 launch`` forwards must not raise in the middle of
    the shutdown. rclpy's own handlers are not installed (``SignalHandlerOptions.NO``).
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.interruptible = True

    def install(self) -> "SignalGuard":
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal_name is not None:
            return
        self.signal_name = signal.Signals(signum).name
        if self.interruptible:
            self.interruptible = False
            raise ShutdownRequested(self.signal_name)


def __getattr__(name: str) -> Any:
    """``SegmentNode``, ``SegmentLifecycleNode``, ``PARAMS``... without importing rclpy at module import."""
    if name in ("SegmentNode", "SegmentLifecycleNode"):
        from m3l_ros import node_shells

        return getattr(node_shells, name)
    from m3l_ros import node_params

    if hasattr(node_params, name):
        return getattr(node_params, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _run(args: list[str] | None, *, lifecycle: bool) -> int:
    guard = SignalGuard().install()
    node = None
    try:
        import rclpy
        import rclpy.logging
        from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        from m3l_ros.node_params import StartupError
        from m3l_ros.node_shells import SegmentLifecycleNode, SegmentNode
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
        try:
            node = SegmentLifecycleNode() if lifecycle else SegmentNode()
            guard.interruptible = False  # from here on a signal only sets the flag the loop checks
            if lifecycle:
                node.autostart()
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            while guard.signal_name is None and not node.finished and rclpy.ok():
                executor.spin_once(timeout_sec=0.1)
        except StartupError as e:
            rclpy.logging.get_logger("segment_node").fatal(str(e))
            return EXIT_FAILURE
        except ExternalShutdownException:
            pass
    except ShutdownRequested:
        pass
    finally:
        guard.interruptible = False
        if node is not None:
            node.close()
        if "rclpy" in sys.modules:
            sys.modules["rclpy"].try_shutdown()
        # Interpreter finalisation resets Python-level handlers to SIG_DFL (but leaves SIG_IGN), so a
        # second Ctrl-C arriving while torch/OpenVINO are torn down would kill the process by SIGINT.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
    return EXIT_OK


def main(args: list[str] | None = None) -> int:
    """Entry point for ``ros2 run m3l_ros segment_node`` and ``python -m m3l_ros.segment_node``."""
    return _run(args, lifecycle=False)


def main_lifecycle(args: list[str] | None = None) -> int:
    """Entry point for ``ros2 run m3l_ros segment_lifecycle_node``: the same node, managed (configure/activate)."""
    return _run(args, lifecycle=True)


if __name__ == "__main__":
    sys.exit(main())
