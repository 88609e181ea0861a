"""A ROS_DOMAIN_ID of its own for a process on this machine: a lock file per domain id, held for
as long as the returned handle is open (the process's life). Test runs and fleet replays use it,
so that concurrent hosts never see each other's topics."""
from __future__ import annotations

import fcntl
import os
import random
import tempfile
import time

LOCK_DIR = os.path.join(tempfile.gettempdir(), "flashrt_ros_domains")
DOMAIN_IDS = range(1, 102)     # ROS 2's safe range for DDS ports is 0..101 (0 left to the robot)


def claim_domain_id() -> tuple[int, object]:
    """(domain id, lock handle): a free ROS_DOMAIN_ID in 1..101; keep the handle open while using it."""
    os.makedirs(LOCK_DIR, exist_ok=True)
    candidates = list(DOMAIN_IDS)
    random.Random(os.getpid() ^ time.monotonic_ns()).shuffle(candidates)
    for domain_id in candidates:
        handle = open(os.path.join(LOCK_DIR, f"{domain_id}.lock"), "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        return domain_id, handle
    raise RuntimeError(f"no free ROS_DOMAIN_ID in 1..101 ({LOCK_DIR}): too many concurrent hosts")
