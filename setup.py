"""ament_python package ``m3l_ros``: installs ``m3l_core`` and ``m3l_ros``.

Works with ``colcon build`` on an apt ROS 2 machine and with a plain
``pip install .`` (not editable: an editable install skips the data files).
"""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "m3l_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=["m3l_core", "m3l_core.*", "m3l_ros", "m3l_ros.*"]),
    package_data={"m3l_ros": ["models/*.safetensors", "models/*.md"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        (f"share/{PACKAGE}/config/train", glob("config/train/*.yaml")),
    ],
    python_requires=">=3.10",
    zip_safe=False,
    maintainer="M3L-ROS engineers",
    maintainer_email="eng@m3l-ros.dev",
    description="Missing-modality-robust RGB-D semantic segmentation (Linear Fusion + M3L) with a ROS 2 node.",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "segment_node = m3l_ros.segment_node:main",
            "record = m3l_ros.record:main",
            "replay = m3l_ros.replay:main",
            "replay_eval = m3l_ros.replay_eval:main",
        ],
    },
)
