"""Launch the M3L RGB-D segmentation node on a camera's colour and depth streams.

The input topics default to the RealSense ROS 2 driver (realsense2_camera, Jazzy)
with ``align_depth.enable:=true``.

Examples::

    # RealSense defaults, bundled demo model
    ros2 launch m3l_ros segment.launch.py

    # Your own checkpoint on the GPU, in a namespace
    ros2 launch m3l_ros segment.launch.py checkpoint:=/models/m3l_b2.safetensors device:=cuda namespace:=robot1

    # Another camera driver
    ros2 launch m3l_ros segment.launch.py \\
        rgb_topic:=/zed/zed_node/rgb/image_rect_color \\
        depth_topic:=/zed/zed_node/depth/depth_registered \\
        camera_info_topic:=/zed/zed_node/rgb/camera_info

    # Replaying a bag with its clock (ros2 bag play --clock ...)
    ros2 launch m3l_ros segment.launch.py use_sim_time:=true params_file:=/path/to/my_segment.yaml

Outputs (under the node's name): ``labels``, ``colored``, ``camera_info``,
``mode``, ``class_names`` and ``/diagnostics``.
"""
from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

PACKAGE = "m3l_ros"


def _default_params_file() -> str:
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:  # no ament index: use the source tree next to this file
        return str(Path(__file__).resolve().parents[1] / "config" / "segment.yaml")
    try:
        return str(Path(get_package_share_directory(PACKAGE)) / "config" / "segment.yaml")
    except (PackageNotFoundError, OSError):  # not installed (source checkout) or no AMENT_PREFIX_PATH
        return str(Path(__file__).resolve().parents[1] / "config" / "segment.yaml")


ARGUMENTS = (
    ("checkpoint", "", "Path to a .safetensors checkpoint. Empty = the params file's value "
     "(whose default, empty, selects the bundled demo model)."),
    ("params_file", _default_params_file(), "YAML file with the node's parameters (/**: ros__parameters: form)."),
    ("device", "", "Inference device: auto, cpu, cuda or cuda:N. Empty = the params file's value (auto)."),
    ("namespace", "", "Namespace for the node and its topics."),
    ("use_sim_time", "false", "Use /clock (true when replaying a bag with --clock)."),
    ("rgb_topic", "/camera/camera/color/image_raw", "Colour image topic (rgb8, bgr8, rgba8, bgra8 or mono8)."),
    ("depth_topic", "/camera/camera/aligned_depth_to_color/image_raw",
     "Depth image registered to the colour camera (16UC1 mm or 32FC1 m)."),
    ("camera_info_topic", "/camera/camera/color/camera_info",
     "Colour CameraInfo, republished as ~/camera_info alongside the labels."),
)


def _launch_node(context, *args, **kwargs):
    # Only explicitly given values override the params file.
    overrides = {"use_sim_time": LaunchConfiguration("use_sim_time").perform(context).lower() in ("true", "1", "yes")}
    for name in ("checkpoint", "device"):
        value = LaunchConfiguration(name).perform(context)
        if value:
            overrides[name] = ParameterValue(value, value_type=str)  # never re-typed by YAML parsing
    return [Node(
        package=PACKAGE,
        executable="segment_node",
        name="segment_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[LaunchConfiguration("params_file"), overrides],
        remappings=[
            ("rgb/image", LaunchConfiguration("rgb_topic")),
            ("depth/image", LaunchConfiguration("depth_topic")),
            ("rgb/camera_info", LaunchConfiguration("camera_info_topic")),
        ],
    )]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=description)
         for name, default, description in ARGUMENTS]
        + [OpaqueFunction(function=_launch_node)]
    )
