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

    # A managed (lifecycle) node, configured and activated by the launch; autostart:=false
    # leaves it unconfigured for `ros2 lifecycle set /segment_node configure` etc.
    ros2 launch m3l_ros segment.launch.py lifecycle:=true autostart:=true

Every node parameter is a launch argument. Its default, empty, means "the params_file's
value" (``config/segment.yaml``: the node's defaults); a value given on the command line wins
over the file. Values are type-checked here, unknown argument names and a missing
params_file are errors, and a node that exits on its own (e.g. a FATAL configuration error
at start-up) ends the launch: ``ros2 launch`` then exits 1 (0 when the node exited 0).

Outputs (under the node's name): ``labels``, ``colored``, ``camera_info``,
``mode``, ``class_names`` and ``/diagnostics``.
"""
import difflib
import tempfile
from pathlib import Path

import yaml
from launch import LaunchDescription
from launch.action import Action
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler, Shutdown
from launch.conditions import IfCondition, UnlessCondition
from launch.event_handlers import OnProcessExit
from launch.events import matches_action
from launch.logging import launch_config
from launch.substitution import Substitution
from launch.substitutions import AndSubstitution, LaunchConfiguration, SubstitutionFailure
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

from m3l_ros.node_params import PARAMS

PACKAGE = "m3l_ros"
NODE_NAME = "segment_node"

# Node parameters: one launch argument each, from the node's own table (m3l_ros.node_params,
# which imports neither torch nor rclpy), so a new parameter is a launch argument at once.
NODE_PARAMETERS = tuple(
    (p.name, type(p.default), f"{p.description} Empty = the params_file's value (node default: {p.default!r}).")
    for p in PARAMS) + (
    ("use_sim_time", bool, "Use /clock (true when replaying a bag with --clock). Empty = the params_file's value "
     "(node default: False)."),)
BOOLEANS = ["true", "false"]
CHOICES = {p.name: list(p.choices) for p in PARAMS if p.choices and p.name != "device"}  # cuda:N is open-ended
CHOICES.update({name: BOOLEANS for name, kind, _ in NODE_PARAMETERS if kind is bool})


def _default_params_file() -> str:
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:  # no ament index: use the source tree next to this file
        return str(Path(__file__).resolve().parents[1] / "config" / "segment.yaml")
    try:
        return str(Path(get_package_share_directory(PACKAGE)) / "config" / "segment.yaml")
    except (PackageNotFoundError, OSError):  # not installed (source checkout) or no AMENT_PREFIX_PATH
        return str(Path(__file__).resolve().parents[1] / "config" / "segment.yaml")


OTHER_ARGUMENTS = (
    ("params_file", _default_params_file(), "YAML file with the node's parameters (/**: ros__parameters: "
     "form). A missing file is an error.", None),
    ("namespace", "", "Namespace for the node and its topics.", None),
    ("rgb_topic", "/camera/camera/color/image_raw", "Colour image topic (rgb8, bgr8, rgba8, bgra8 or mono8).", None),
    ("depth_topic", "/camera/camera/aligned_depth_to_color/image_raw",
     "Depth image registered to the colour camera (16UC1 mm or 32FC1 m).", None),
    ("camera_info_topic", "/camera/camera/color/camera_info",
     "Colour CameraInfo, republished as ~/camera_info alongside the labels.", None),
    ("lifecycle", "false", "Run segment_lifecycle_node, a managed node (configure loads the model, activate "
     "subscribes).", BOOLEANS),
    ("autostart", "true", "With lifecycle:=true: configure and activate it at start. false leaves it "
     "unconfigured for `ros2 lifecycle set`.", BOOLEANS),
)
DECLARED = [name for name, _, _ in NODE_PARAMETERS] + [name for name, *_ in OTHER_ARGUMENTS]


def _parse(name: str, kind: type, text: str):
    if kind is str:
        return text
    if kind is bool:
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
    else:
        try:
            return kind(text)
        except ValueError:
            pass
    raise SubstitutionFailure(f"launch argument {name}:={text!r} is not a {kind.__name__}")


class ExistingFile(Substitution):
    """The path a substitution names, or a launch error when that file does not exist."""

    def __init__(self, argument: str) -> None:
        super().__init__()
        self.argument = argument

    def describe(self) -> str:
        return f"ExistingFile(LaunchConfig('{self.argument}'))"

    def perform(self, context) -> str:
        path = Path(LaunchConfiguration(self.argument).perform(context)).expanduser()
        if not path.is_file():
            raise SubstitutionFailure(f"launch argument {self.argument}:={str(path)!r}: no such file")
        return str(path.resolve())


class ExplicitParameters(Substitution):
    """A params file holding only the node parameters given on the command line, type-checked."""

    def describe(self) -> str:
        return "ExplicitParameters(non-empty node-parameter launch arguments)"

    def perform(self, context) -> str:
        values = {}
        for name, kind, _ in NODE_PARAMETERS:
            text = LaunchConfiguration(name).perform(context)
            if text != "":
                values[name] = _parse(name, kind, text)
        # In this launch's log directory (~/.ros/log/<run>/), next to its logs, not left in /tmp.
        with tempfile.NamedTemporaryFile("w", prefix="m3l_launch_params_", suffix=".yaml", delete=False,
                                         dir=launch_config.log_dir) as f:
            yaml.safe_dump({"/**": {"ros__parameters": values}}, f)
        return f.name


class RejectUnknownArguments(Action):
    """``ros2 launch`` ignores undeclared ``name:=value`` arguments; a typo must not go unnoticed."""

    def execute(self, context):
        for arg in context.argv:
            name = arg.split(":=", 1)[0]
            if ":=" in arg and name not in DECLARED:
                near = difflib.get_close_matches(name, DECLARED, n=1)
                hint = f" (did you mean {near[0]}?)" if near else ""
                raise RuntimeError(f"unknown launch argument {name!r}{hint}; see `ros2 launch {PACKAGE} "
                                   f"segment.launch.py --show-args`")


def _on_node_exit(event, context):
    """The node ended by itself: end the launch, and fail it unless the node exited 0."""
    if context.is_shutdown:
        return None  # the launch is ending anyway (Ctrl-C); a second Shutdown trips launch_ros
    if event.returncode == 0:
        return [Shutdown(reason=f"{event.action.name} exited with code {event.returncode}")]
    raise RuntimeError(f"{event.action.name} exited with code {event.returncode} (see its log above); "
                       "ending the launch")


def generate_launch_description() -> LaunchDescription:
    lifecycle = LaunchConfiguration("lifecycle")
    node_kwargs = dict(
        package=PACKAGE, name=NODE_NAME, namespace=LaunchConfiguration("namespace"), output="screen",
        emulate_tty=True, parameters=[ExistingFile("params_file"), ExplicitParameters()],
        remappings=[
            ("rgb/image", LaunchConfiguration("rgb_topic")),
            ("depth/image", LaunchConfiguration("depth_topic")),
            ("rgb/camera_info", LaunchConfiguration("camera_info_topic")),
        ],
    )
    plain = Node(executable="segment_node", condition=UnlessCondition(lifecycle), **node_kwargs)
    managed = LifecycleNode(executable="segment_lifecycle_node", condition=IfCondition(lifecycle), **node_kwargs)
    auto = IfCondition(AndSubstitution(lifecycle, LaunchConfiguration("autostart")))

    def change_state(transition: int, **kwargs) -> EmitEvent:
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(managed), transition_id=transition),
                         **kwargs)

    arguments = [DeclareLaunchArgument(name, default_value="", description=desc, choices=(
        ["", *CHOICES[name]] if CHOICES.get(name) else None)) for name, _, desc in NODE_PARAMETERS]
    arguments += [DeclareLaunchArgument(name, default_value=default, description=desc, choices=choices)
                  for name, default, desc, choices in OTHER_ARGUMENTS]
    return LaunchDescription([
        *arguments,
        RejectUnknownArguments(),
        RegisterEventHandler(OnProcessExit(target_action=plain, on_exit=_on_node_exit)),
        RegisterEventHandler(OnProcessExit(target_action=managed, on_exit=_on_node_exit)),
        plain,
        managed,
        # autostart: configure once the node is up, activate once configure has finished.
        RegisterEventHandler(OnStateTransition(
            target_lifecycle_node=managed, start_state="configuring", goal_state="inactive",
            entities=[change_state(Transition.TRANSITION_ACTIVATE)]), condition=auto),
        change_state(Transition.TRANSITION_CONFIGURE, condition=auto),
    ])
