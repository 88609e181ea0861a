#!/usr/bin/env bash
# Run a command against this checkout's colcon install: scripts/run_in_env.sh python -c '...'
# The install is brought up to date first (`make build`: a no-op when nothing changed; set
# FLASHRT_SKIP_BUILD=1 to skip even that). With no command, print the environment as export
# lines instead: eval "$(scripts/run_in_env.sh)".
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
if [ "$#" -eq 0 ]; then
  for var in FLASHRT_ROOT FLASHRT_VENV FLASHRT_INSTALL VIRTUAL_ENV PATH AMENT_PREFIX_PATH \
             PYTHONPATH LD_LIBRARY_PATH PYTHONSAFEPATH \
             ROS_AUTOMATIC_DISCOVERY_RANGE ROS_LOG_DIR; do
    printf 'export %s=%q\n' "$var" "${!var}"
  done
  exit 0
fi
if [ -z "${FLASHRT_SKIP_BUILD:-}" ]; then
  make -s -C "$FLASHRT_ROOT" build >&2
fi
exec "$@"
