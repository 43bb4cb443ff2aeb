"""M3L-ROS: ROS 2 plumbing around the ROS-free M3L segmentation core.

Modules (only ``segment_node`` imports rclpy):

* ``image_codec``: sensor_msgs/Image fields <-> numpy, without cv_bridge.
* ``sync``: approximate-time RGB-D pairing that keeps only the newest frames.
* ``watchdog``: per-modality stream watchdogs and the input mode they imply.
* ``stats``: rate, latency and log-throttle meters for diagnostics.
* ``segment_node``: the ``segment_node`` executable (``main(args=None)``).
"""
