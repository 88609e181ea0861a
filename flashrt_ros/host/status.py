"""What the host knows about its own health, without ROS: event meters (rates, latency
percentiles), recent events (a fault or a late chunk raises the level for a while), and the
longest garbage-collection pause. The ROS layer turns these into /diagnostics."""
from __future__ import annotations

import gc
import logging
import math
import threading
import time
from collections import deque

import numpy as np

RATE_WINDOW_S = 5.0
RECENT_S = 5.0            # a rejected input or a fault this recent raises the level


class Meter:
    """Event times and (optionally) a latency per event: rate over a window, p50/p99 latency."""

    def __init__(self, maxlen: int = 1024):
        self._times: deque[float] = deque(maxlen=maxlen)
        self._latencies: deque[float] = deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self.count = 0
        self._max = float("-inf")

    def add(self, latency_s: float | None = None, now: float | None = None) -> None:
        with self._lock:
            self._times.append(time.monotonic() if now is None else now)
            if latency_s is not None:
                self._latencies.append(float(latency_s))
                self._max = max(self._max, float(latency_s))
            self.count += 1

    def max(self) -> float:
        """The largest latency ever added (nan before the first)."""
        return self._max if self.count else float("nan")

    def rate(self, now: float | None = None, window: float = RATE_WINDOW_S) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            recent = [t for t in self._times if now - t <= window]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-9)

    def percentiles(self, *qs: float) -> list[float]:
        with self._lock:
            lat = np.asarray(self._latencies, dtype=np.float64)
        return [float(np.percentile(lat, q)) if lat.size else float("nan") for q in qs]

    def latencies(self) -> np.ndarray:
        """The latencies kept (the newest maxlen), seconds."""
        with self._lock:
            return np.asarray(self._latencies, dtype=np.float64)

    def intervals(self) -> np.ndarray:
        with self._lock:
            return np.diff(np.asarray(self._times, dtype=np.float64))



class RecentEvent:
    """The last occurrence of something worth a WARN or ERROR for RECENT_S (count, message, when)."""

    def __init__(self):
        self.count, self.message, self.at = 0, "", -math.inf

    def note(self, message: str) -> None:
        self.count += 1
        self.message, self.at = message, time.monotonic()

    def recent(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) - self.at <= RECENT_S


class GcMonitor:
    """The longest and the latest garbage-collection pauses of this process (gc.callbacks): the
    collecting thread's CPU time from a collection's start to its end. The collector holds the GIL
    throughout, so that is how long it stops every other Python thread; the wall clock would also count
    the other threads' turns when the GIL changes hands in the callbacks. serving() starts a new count
    once the models are loaded: max_s is then the longest pause while serving (full_max_s the longest
    full, generation-2, collection), startup_max_s the longest before (loading and compiling the models
    make the largest heaps)."""

    def __init__(self):
        self.max_s = self.last_s = self.full_max_s = self.startup_max_s = 0.0
        self.collections = self.full_collections = 0
        self.frozen = 0
        self._t0 = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.thread_time()
        else:
            self.last_s = time.thread_time() - self._t0
            self.max_s = max(self.max_s, self.last_s)
            self.collections += 1
            if info.get("generation") == 2:
                self.full_collections += 1
                self.full_max_s = max(self.full_max_s, self.last_s)

    def serving(self, frozen: int) -> None:
        """The models are loaded and `frozen` objects were moved out of the collector's scans."""
        self.startup_max_s = max(self.startup_max_s, self.max_s)
        self.max_s = self.last_s = self.full_max_s = 0.0
        self.collections = self.full_collections = 0
        self.frozen = frozen

    def close(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)


def freeze_heap() -> tuple[int, float, float]:
    """Collect the garbage of start-up, then move every object alive now (the models, their compiled
    graphs, the tokenizer, ROS's and torch's modules: 420 000 objects for the tiny π0.5 compiled) to
    the collector's permanent generation (gc.freeze), so that a full collection while serving scans only
    what was made since, not the whole start-up heap: a pause of that size holds the GIL and stops the
    actor (docs/design/realtime.md). Returns (objects frozen, seconds of a full collection over the
    start-up heap, seconds of one after the freeze: what a generation-2 collection costs without and
    with it, measured in this process at every start-up: this thread's CPU time, during which it holds
    the GIL, so that the other threads' share of the wall clock does not count)."""
    t0 = time.thread_time()
    gc.collect()
    t1 = time.thread_time()
    gc.freeze()
    t2 = time.thread_time()
    gc.collect()
    t3 = time.thread_time()
    return gc.get_freeze_count(), t1 - t0, t3 - t2   # (the count walks the frozen list: not in the times)


def thaw_heap(collect: bool = True) -> None:
    """Undo freeze_heap when the models are dropped (a cleanup before a new configure; the host's
    close): the frozen objects are scanned again, so the dropped models' reference cycles can be
    collected (now, or by the collector's next full pass with collect=False)."""
    gc.unfreeze()
    if collect:
        gc.collect()


class PlainLog:
    """A standard-library logger with rclpy's logger surface (throttle_duration_sec accepted), so
    the loop runs the same without ROS."""

    def __init__(self, logger: logging.Logger):
        self._logger = logger

    def __getattr__(self, level):
        method = getattr(self._logger, level)

        def log(message, throttle_duration_sec=None, **_):
            method(message)
        return log


class DelayEstimate:
    """The inference delay d in control steps: observation stamp -> chunk ready, a high percentile
    of the recent chunks (the first `skip` after a start excluded: warm-up), rounded up."""

    def __init__(self, window: int = 50, percentile: float = 95.0, skip: int = 3):
        self._latencies: deque[float] = deque(maxlen=window)
        self.percentile, self.skip = percentile, skip
        self._seen = 0

    def restart(self) -> None:
        self._seen = 0

    def add(self, latency_s: float) -> None:
        self._seen += 1
        if self._seen > self.skip:
            self._latencies.append(max(0.0, float(latency_s)))

    def seconds(self) -> float:
        """The estimate in seconds (nan before the first counted chunk)."""
        if not self._latencies:
            return float("nan")
        return float(np.percentile(np.asarray(self._latencies), self.percentile))

    def steps(self, dt: float, limit: int) -> int:
        """ceil(estimate / dt), within [0, limit]; 0 before the first counted chunk."""
        s = self.seconds()
        return 0 if s != s else int(min(limit, max(0, math.ceil(s / dt - 1e-9))))
