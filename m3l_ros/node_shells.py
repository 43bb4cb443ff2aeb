"""The two thin ROS node shells around :class:`m3l_ros.node_core.SegmentCore`.

* :class:`SegmentNode` (executable ``segment_node``, the default): configures and activates at
  construction.
* :class:`SegmentLifecycleNode` (executable ``segment_lifecycle_node``): a managed node.
  ``configure`` loads the model and creates the publishers, ``activate`` subscribes and
  publishes, ``deactivate`` stops both, ``cleanup`` unloads the model, ``shutdown`` ends the
  process (exit 0). Parameter ``autostart`` (default false) runs configure + activate at start.
"""
from __future__ import annotations

from typing import Any

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node

from m3l_ros.node_core import SegmentCore
from m3l_ros.node_params import StartupError, declare_parameters

NODE_NAME = "segment_node"


class SegmentNode(Node):
    """Subscribes to RGB and depth, pairs them, watches both streams, publishes labels."""

    finished = False  # the plain node runs until a signal

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        try:
            self.core = SegmentCore(self, declare_parameters(self))
            self.core.configure()
            self.core.activate()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop the worker, release everything, destroy the node."""
        core = getattr(self, "core", None)
        if core is not None:
            core.cleanup()
        self.destroy_node()


class SegmentLifecycleNode(LifecycleNode):
    """The same node under the managed lifecycle (REP 2000 states, ``~/change_state`` services)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.finished = False
        self.core = SegmentCore(self, declare_parameters(self))
        self.declare_parameter("autostart", False, ParameterDescriptor(
            description="Configure and activate at start (else wait for the lifecycle transitions).", read_only=True))
        self._error: str | None = None

    def autostart(self) -> None:
        """With ``autostart:=true``: configure and activate now; a failure is a StartupError (exit 1)."""
        if not self.get_parameter("autostart").value:
            return
        self.trigger_configure()
        if self.core.segmenter is None:
            raise StartupError(self._error or "configure failed")
        self.trigger_activate()

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.core.configure()
        except StartupError as e:
            self._error = str(e)
            self.get_logger().error(f"configure failed: {e}")
            self.core.cleanup()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.core.activate()
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.core.deactivate()
        self.get_logger().info("deactivated: unsubscribed, publishing nothing")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.core.cleanup()
        self.get_logger().info("cleaned up: model unloaded, publishers destroyed")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.core.cleanup()
        self.finished = True
        self.get_logger().info("shutdown requested through the lifecycle; exiting")
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.core.cleanup()
        return TransitionCallbackReturn.SUCCESS

    def close(self) -> None:
        self.core.cleanup()
        self.destroy_node()
