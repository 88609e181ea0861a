#!/usr/bin/env bash
# colcon build of this package into build/ install/ log/ at the repo root, with the venv's
# ROS 2 wheels as the underlay (what `colcon build` does on a robot with /opt/ros/jazzy sourced).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FLASHRT_VENV:-$ROOT/.venv}"
cd "$ROOT"

export VIRTUAL_ENV="$VENV"
export PATH="$VENV/bin:$PATH"
# (colcon then warns that the venv holds no local_setup.* files: expected, it is no workspace.)
export AMENT_PREFIX_PATH="$VENV"
export CMAKE_PREFIX_PATH="$VENV"
unset PYTHONPATH

# rosidl exports our Python typesupport target with numpy's include dir. CMake refuses to
# export a path inside the source tree, which the venv (.venv) is; hand CMake the same headers
# through a link outside the tree. (On a robot numpy lives in /usr and this is not needed.)
numpy_include="$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')"
link_dir="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/flashrt_ros/$(printf '%s' "$numpy_include" | sha256sum | cut -c1-12)"
mkdir -p "$link_dir"
ln -sfn "$numpy_include" "$link_dir/numpy-include"

# One build at a time: several people and test runs share this checkout.
mkdir -p "$ROOT/build"
exec 9>"$ROOT/build/.flashrt-build.lock"
flock 9

# A copying install, not --symlink-install: code that resolves its own path (Path(__file__)
# .resolve()) then sees the install space, as on a robot, instead of the source tree.
# An incremental build after a .py edit takes ~1.5 s; make runs it when the sources change.
colcon build --base-paths "$ROOT" \
  --event-handlers console_cohesion- summary+ \
  --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$VENV/bin/python" \
    -DPython3_NumPy_INCLUDE_DIR="$link_dir/numpy-include" \
  "$@"
