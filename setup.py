"""pip install of the Python code: `pip install .` (robots and CI build with colcon instead).

What a pip install has and lacks:
- the `flashrt_ros` package with its shipped weights (flashrt_ros/models/weights) and the
  `flashrt-ros` console entry;
- the CUDA sources of kernels/ as package data at flashrt_ros/kernels/;
- launch/, config/, package.xml as data in `<prefix>/share/flashrt_ros/` (where colcon puts
  them) plus the ament index marker, so ament_index_python finds them with
  AMENT_PREFIX_PATH=<prefix>;
- no generated messages: `flashrt_ros.msg` needs the colcon build (CMakeLists.txt).

Kernel lookup (flashrt_ros/runtime/kernels.py, find_kernels_dir): $FLASHRT_KERNELS_DIR, then
share/flashrt_ros/kernels through ament_index (colcon install), then <repo>/kernels (source
checkout; also a colcon --symlink-install, whose files resolve into the checkout), then
flashrt_ros/kernels inside the package (pip install, from package_dir below).
"""

import os

from setuptools import find_namespace_packages, setup

PACKAGE = "flashrt_ros"


def tree(src: str) -> list[tuple[str, list[str]]]:
    """data_files entries installing every file under `src` to share/flashrt_ros/<src>."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        files = [os.path.join(dirpath, f) for f in sorted(filenames) if not f.endswith(".pyc")]
        if files:
            entries.append((os.path.join("share", PACKAGE, dirpath), files))
    return entries


setup(
    name=PACKAGE,
    version="0.1.0",
    description="Vision-Language-Action robot policies on ROS 2: slow planner + fast actor on shared GPU buffers",
    license="Apache-2.0",
    python_requires=">=3.10",
    # Namespace-aware: a sub-package without __init__.py imports fine from a colcon install, so
    # it must not silently go missing from a pip install either. kernels/ (outside the package)
    # is mapped to flashrt_ros/kernels/.
    packages=[
        *find_namespace_packages(include=[PACKAGE, PACKAGE + ".*"],
                                 exclude=["*.__pycache__", PACKAGE + ".models.weights*"]),
        PACKAGE + ".kernels",
    ],
    package_dir={PACKAGE + ".kernels": "kernels"},
    package_data={
        PACKAGE + ".kernels": ["*.cu", "*.cuh", "*.md"],
        PACKAGE + ".models": ["weights/*.safetensors", "weights/*.json",
                               "weights/**/*.safetensors", "weights/**/*.json"],
    },
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        (os.path.join("share", PACKAGE), ["package.xml"]),
        *tree("launch"),
        *tree("config"),
    ],
    # rclpy and the message packages come from ROS (apt on a robot), not from pip.
    install_requires=["numpy", "safetensors", "torch"],
    extras_require={
        "bags": ["rosbags"],
        "plots": ["matplotlib"],
        # replaying many bags in parallel (flashrt-ros replay DIR --workers N): tools/fleet.py
        "fleet": ["ray", "rosbags", "matplotlib"],
        "test": ["pytest", "pytest-timeout", "catkin-pkg"],
    },
    entry_points={"console_scripts": ["flashrt-ros = flashrt_ros.cli:main"]},
    zip_safe=False,
)
