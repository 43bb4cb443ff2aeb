"""M3L-ROS: ROS 2 plumbing around the ROS-free M3L segmentation core (``m3l_core``).

Modules. "ROS-free" ones import neither rclpy nor ROS messages at module level and are
tested without ROS.

The node (``segment_node`` and ``segment_lifecycle_node`` executables):

* ``segment_node``: the entry points (``main(args=None)``, ``main_lifecycle()``).
* ``node_shells``: the plain and the lifecycle node, thin shells around ``node_core``.
* ``node_core``: the node's logic: subscriptions, pairing, inference, publishing.
* ``node_params``: the parameter table (names, defaults, ranges, descriptions, validation).
* ``node_qos``: input and output QoS and the ``qos_reliability: auto`` rule.
* ``node_inputs``: one input message without ROS: size cap, decode, depth rule, size match.
* ``node_model``: checkpoint, device, precision, backend and threads -> a ``Segmenter``.
* ``node_diagnostics``: the health level and message for a mode, and ``/diagnostics`` (ROS-free).
* ``sync``: approximate-time RGB-D pairing that keeps only the newest frames (ROS-free).
* ``watchdog``: per-modality stream watchdogs and the input mode they imply (ROS-free).
* ``stats``: rate, latency and log-throttle meters for diagnostics (ROS-free).

Images and messages:

* ``image_codec``: sensor_msgs Image and CompressedImage fields <-> numpy, without cv_bridge (ROS-free).
* ``messages``: the one builder of sensor_msgs messages from numpy arrays.

Bags, replay and evaluation (``record``, ``replay``, ``replay_eval`` executables):

* ``record``: write an RGB-D bag from synthetic scenes or a folder dataset.
* ``bag_io``: read and write rosbag2 bags with ``rosbags`` (no rclpy).
* ``bag_camera_info``: camera intrinsics for bags: a calibration file or an ideal pinhole (ROS-free).
* ``replay``: play a bag with rclpy, with sensor-dropout injection.
* ``dropout``: dropout windows and playback timing (ROS-free).
* ``replay_eval``: score the node live while a bag replays.
* ``replay_analysis``: what ``replay_eval`` measures, as pure functions of arrival times (ROS-free).
* ``replay_format``: the replay report as text, Markdown and a timeline plot (ROS-free).

Tools:

* ``ros_session``: one rclpy session for the command-line tools.
* ``procs``: the one harness for child processes on a private ROS graph (tests, demo, benchmarks).
"""
