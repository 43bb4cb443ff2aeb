"""Shared pytest set-up: every test, and every process a test starts, runs the code in this tree.

One copy of the code under test: the repository root goes first on ``sys.path`` and on
``PYTHONPATH`` (inherited by child processes such as ``python -m m3l_ros.segment_node``,
``ros2 run`` and ``ros2 launch``), so an installed copy in the venv never shadows the tree.
The installed package still provides what only an install can: ``share/m3l_ros`` (launch and
config files, the ament index marker) and ``lib/m3l_ros`` executables.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
_paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(REPO)]
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *_paths])
# Makes assigning a large ``data`` field 100x slower (see docs); never inherit it.
os.environ.pop("ROS_PYTHON_CHECK_FIELDS", None)
