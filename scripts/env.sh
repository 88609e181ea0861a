# Environment for running flashrt_ros from this checkout's colcon install (what a robot runs).
# Source it (`. scripts/env.sh`) or use scripts/run_in_env.sh CMD... ; `make env` prints it.
# Overridable from outside: FLASHRT_VENV (default <repo>/.venv), ROS_LOG_DIR, ROS_DOMAIN_ID,
# ROS_AUTOMATIC_DISCOVERY_RANGE.

FLASHRT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FLASHRT_VENV="${FLASHRT_VENV:-$FLASHRT_ROOT/.venv}"
FLASHRT_INSTALL="$FLASHRT_ROOT/install/flashrt_ros"
_flashrt_pyver="$("$FLASHRT_VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")' 2>/dev/null || echo 3.11)"

export FLASHRT_ROOT FLASHRT_VENV FLASHRT_INSTALL
export VIRTUAL_ENV="$FLASHRT_VENV"
export PATH="$FLASHRT_INSTALL/bin:$FLASHRT_VENV/bin:$PATH"
# The ROS wheels live in the venv prefix; our package (messages included) in the install space.
export AMENT_PREFIX_PATH="$FLASHRT_INSTALL:$FLASHRT_VENV"
export PYTHONPATH="$FLASHRT_INSTALL/lib/python$_flashrt_pyver/site-packages${PYTHONPATH:+:$PYTHONPATH}"
# Generated message libraries; the wheels' own bootstrap adds $VENV/lib and the ros_*.libs dirs.
export LD_LIBRARY_PATH="$FLASHRT_INSTALL/lib:$FLASHRT_VENV/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# Never put the current directory first on sys.path: `python -c ...` in the repo root would
# otherwise import the source tree's flashrt_ros (no generated flashrt_ros.msg) instead of the install.
export PYTHONSAFEPATH=1
# DDS stays on this machine (ROS_LOCALHOST_ONLY is ignored by Jazzy).
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export ROS_LOG_DIR="${ROS_LOG_DIR:-$FLASHRT_ROOT/log/ros}"
unset _flashrt_pyver
