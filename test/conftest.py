"""Shared pytest set-up: every test, and every process a test starts, runs the code in this tree.

One copy of the code under test: the repository root goes first on ``sys.path`` and on
``PYTHONPATH`` (inherited by child processes such as ``python -m m3l_ros.segment_node``,
``ros2 run`` and ``ros2 launch``), so an installed copy in the venv never shadows the tree.
The installed package still provides what only an install can: ``share/m3l_ros`` (launch and
config files, the ament index marker) and ``lib/m3l_ros`` executables.
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
_paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(REPO)]
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *_paths])
# Makes assigning a large ``data`` field 100x slower (see docs); never inherit it.
os.environ.pop("ROS_PYTHON_CHECK_FIELDS", None)
# A shell without job control starts background jobs with SIGINT ignored, and an ignored signal stays
# ignored across exec: `ros2 launch` started by the tests would then never stop on Ctrl-C. Restore it,
# so children start with the default disposition whatever started this run.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
# Converted-model cache (OpenVINO/ONNX conversions of checkpoints): one private directory per run,
# shared by this process and its children, removed at exit; the user's ~/.cache is never touched.
_CACHE = tempfile.mkdtemp(prefix="m3l-test-cache-")
os.environ["M3L_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)
# In-process rclpy (test drivers) stays on this machine too, like every child (m3l_ros.procs.ros_env).
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ros_domain() -> int:
    """This run's private ROS_DOMAIN_ID (children get it through ``m3l_ros.procs.ros_env``)."""
    from m3l_ros.procs import pick_domain_id

    return pick_domain_id()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-weight tiny checkpoint (32x32 input, 5 classes): fast to load in a node process."""
    from ros_helpers import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(scope="session")
def ros2_cli() -> str:
    """The upstream ``ros2`` CLI with launch_ros (test tooling from ../shared/ros2-tools), or a skip."""
    from m3l_ros.procs import ros2_executable

    exe = ros2_executable()
    if exe is None:
        pytest.skip("the upstream ROS 2 tools (ros2 launch/run, launch_ros) are not installed; "
                    "`make test-tools` installs them from ../shared/ros2-tools")
    return exe
