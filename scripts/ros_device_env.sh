# Source on the GPU machine of the device tool (or anywhere with a Python 3.12 that has torch), in the
# repository root, after scripts/stage_ros_device.sh staged .ros312/carry here:
#   . scripts/ros_device_env.sh
# Unpacks the ROS 2 Jazzy runtime (ros312.tgz) into ROS_PREFIX and exports what scripts/env.sh exports
# for a colcon install: the package at the staged revision with its messages first on PYTHONPATH, the
# runtime's libraries on LD_LIBRARY_PATH (the wheels' own bootstrap .pth does that in a venv; it is not
# run from PYTHONPATH), DDS on localhost. Environment: FLASHRT_PYTHON (default python3), ROS_PREFIX
# (default /tmp/ros312), ROS_DOMAIN_ID (default 42), ROS_LOG_DIR (default /tmp/ros_log).
_c="$(pwd)/.ros312/carry"
export ROS_PREFIX="${ROS_PREFIX:-/tmp/ros312}"
"${FLASHRT_PYTHON:-python3}" -c 'import sys; assert sys.version_info[:2] == (3, 12), sys.version' || return 1
mkdir -p "$ROS_PREFIX" && tar -xzf "$_c/ros312.tgz" -C "$ROS_PREFIX" || return 1
_sp="$ROS_PREFIX/lib/python3.12/site-packages"
_libs="$(ls -d "$_sp"/ros_*.libs 2>/dev/null | tr '\n' ':')"
export FLASHRT_INSTALL="$_c/fr"
export AMENT_PREFIX_PATH="$FLASHRT_INSTALL:$ROS_PREFIX"
export PYTHONPATH="$FLASHRT_INSTALL/lib/python3.12/site-packages:$_sp:$FLASHRT_INSTALL/src"
export LD_LIBRARY_PATH="$FLASHRT_INSTALL/lib:$ROS_PREFIX/lib:${_libs}${LD_LIBRARY_PATH:-}"
export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1
export PYTHONSAFEPATH=1
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export ROS_LOG_DIR="${ROS_LOG_DIR:-/tmp/ros_log}"
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-42}"
unset _c _sp _libs
