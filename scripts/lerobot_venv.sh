#!/usr/bin/env bash
# Create .venv-lerobot: LeRobot 0.6.1 (pi0, pi0.5, SmolVLA) on Python 3.12, the reference side of
# the parity tests (parity/, `make parity`). Separate from .venv because LeRobot needs Python >= 3.12
# and its own torch/transformers pins. A no-op when the pinned versions are already installed.
# First run: PyPI's torch for Python 3.12 is a CUDA build, several GB to download.
# Environment: LEROBOT_VENV (default .venv-lerobot), LEROBOT_PYTHON (a python3.12 to use).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LEROBOT_VENV:-$ROOT/.venv-lerobot}"
LEROBOT_VERSION=0.6.1
# Same test tools as requirements.txt, so setup.cfg's pytest options mean the same in both venvs.
PYTEST_PINS=(pytest==9.2.0 pytest-timeout==2.4.0)

installed() {
  "$VENV/bin/python" - "$LEROBOT_VERSION" "${PYTEST_PINS[@]}" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
want = {"lerobot": sys.argv[1], **dict(p.split("==") for p in sys.argv[2:])}
sys.exit(any(version(name) != v for name, v in want.items()))
EOF
}

if [ -x "$VENV/bin/python" ] && installed; then
  echo "lerobot_venv: $VENV up to date (lerobot $LEROBOT_VERSION)"
  exit 0
fi

. "$ROOT/scripts/python312.sh"   # find_python312

if [ ! -x "$VENV/bin/python" ]; then
  PY="$(find_python312)" || {
    echo "lerobot_venv: no Python 3.12 found (set LEROBOT_PYTHON=/path/to/python3.12)" >&2
    exit 1
  }
  echo "lerobot_venv: creating $VENV with $("$PY" --version) ($PY)"
  "$PY" -m venv "$VENV"
fi

echo "lerobot_venv: installing lerobot[pi,smolvla]==$LEROBOT_VERSION into $VENV"
start=$SECONDS
# (The filter drops one warning per package that this machine's extra local indexes lack.)
"$VENV/bin/python" -m pip install --quiet --no-input --disable-pip-version-check \
  "lerobot[pi,smolvla]==$LEROBOT_VERSION" "${PYTEST_PINS[@]}" 2>&1 \
  | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
"$VENV/bin/python" -c 'import lerobot.policies.pi0, lerobot.policies.pi05, lerobot.policies.smolvla, pytest'
installed
echo "lerobot_venv: done in $((SECONDS - start)) s"
