# Sourced by the scripts that need a Python 3.12 (LeRobot's venv, the device's ROS runtime):
# find_python312 prints one: LEROBOT_PYTHON, python3.12 on PATH, pyenv's, or the usual install prefixes.
find_python312() {
  local cand
  for cand in "${LEROBOT_PYTHON:-}" "$(command -v python3.12 || true)" \
              "$(pyenv prefix 3.12 2>/dev/null | head -n1)/bin/python3.12" \
              "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 \
              /usr/local/bin/python3.12 /usr/bin/python3.12; do
    [ -n "$cand" ] && [ -x "$cand" ] || continue
    # pyenv's shim exists even where no 3.12 is selected; running it tells.
    if "$cand" -c 'import sys, venv; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
      echo "$cand"
      return 0
    fi
  done
  return 1
}
