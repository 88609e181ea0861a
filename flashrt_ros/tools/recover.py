"""`flashrt-ros recover BAG_DIR...`: make an episode bag cut short by a crash (SIGKILL, power)
readable again, keeping everything up to its last whole record (see flashrt_ros.host.recorder)."""
from __future__ import annotations

import sys

from flashrt_ros.host.recorder import RecorderError, recover


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    status = 0
    for bag in argv:
        try:
            lines = recover(bag)
        except (RecorderError, OSError) as err:
            print(f"flashrt-ros recover: {bag}: {err}", file=sys.stderr)
            status = 1
            continue
        print("\n".join(lines) if lines else f"{bag}: complete, nothing to do")
    return status
