"""A multi-rate, deadline-aware dispatcher for graphs that share one device.

Each task is released periodically (or by `trigger`) and runs as a sequence of *pieces* (e.g. a
planner cut into sub-graphs; the actor is one piece). One dispatcher thread runs one piece at a
time, earliest absolute deadline first. Before it starts a piece it checks that the piece will not
push a more urgent task past its deadline; if it would, it idles until that task is released.
So a long planner can never hold the device for more than one piece when the actor is due.
That is the fix for GPU interference (docs/design/runtime.md): stream priorities do not stop a large
kernel queue from delaying the actor, but never enqueueing more than one short piece does.

Mechanism only: the pieces are opaque callables that return when their work is finished
(on a GPU: replay + synchronize their stream).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np


@dataclass
class Task:
    name: str
    pieces: Sequence[Callable[[], None]]
    period: float | None          # seconds between releases; None = released only by trigger()
    deadline: float               # seconds after release by which the job must complete
    enabled: bool = True


@dataclass
class TaskStats:
    releases: int = 0
    completed: int = 0
    deadline_misses: int = 0
    skipped_releases: int = 0     # released while the previous job was still running
    faults: int = 0
    last_error: str = ""
    latencies: deque = field(default_factory=lambda: deque(maxlen=2048))   # release -> done, s
    lateness: deque = field(default_factory=lambda: deque(maxlen=2048))    # start - release, s
    completion_times: deque = field(default_factory=lambda: deque(maxlen=2048))

    def summary(self) -> dict:
        lat = np.asarray(self.latencies, dtype=np.float64)
        late = np.asarray(self.lateness, dtype=np.float64)
        done = np.asarray(self.completion_times, dtype=np.float64)
        rate = (len(done) - 1) / (done[-1] - done[0]) if len(done) > 2 and done[-1] > done[0] else 0.0
        pct = lambda a, q: float(np.percentile(a, q)) if a.size else float("nan")  # noqa: E731
        return {
            "releases": self.releases, "completed": self.completed,
            "deadline_misses": self.deadline_misses, "skipped_releases": self.skipped_releases,
            "faults": self.faults, "last_error": self.last_error, "rate_hz": rate,
            "latency_p50_s": pct(lat, 50), "latency_p99_s": pct(lat, 99), "latency_max_s": pct(lat, 100),
            "start_delay_p99_s": pct(late, 99),
        }


@dataclass
class _Job:
    task: Task
    release: float
    deadline: float
    next_piece: int = 0
    started: float | None = None


class MultiRateScheduler:
    def __init__(self, tasks: Sequence[Task], clock: Callable[[], float] = time.monotonic,
                 on_error: Callable[[str, BaseException], None] | None = None):
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique: {names}")
        for t in tasks:
            if t.period is not None and t.period <= 0:
                raise ValueError(f"task {t.name!r}: period must be > 0 s, got {t.period}")
            if t.deadline <= 0:
                raise ValueError(f"task {t.name!r}: deadline must be > 0 s, got {t.deadline}")
            if not t.pieces:
                raise ValueError(f"task {t.name!r} has no pieces")
        self.tasks = {t.name: t for t in tasks}
        self.clock = clock
        self.on_error = on_error
        self.stats = {t.name: TaskStats() for t in tasks}
        self._estimate: dict[tuple[str, int], float] = {}   # EMA of piece durations, s
        self._next_release: dict[str, float] = {}
        self._jobs: dict[str, _Job] = {}
        self._triggered: set[str] = set()
        self._wake = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None

    # --- control -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("scheduler already running")
        now = self.clock()
        self._next_release = {n: now for n, t in self.tasks.items() if t.period is not None}
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="flashrt-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._wake:
            self._running = False
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError("dispatcher thread did not stop (a piece is stuck?)")
            self._thread = None

    def trigger(self, name: str) -> None:
        """Release an event-triggered (or periodic) task now."""
        if name not in self.tasks:
            raise KeyError(f"no task {name!r}; have {sorted(self.tasks)}")
        with self._wake:
            self._triggered.add(name)
            self._wake.notify_all()

    def set_enabled(self, name: str, enabled: bool) -> None:
        with self._wake:
            self.tasks[name].enabled = enabled
            self._wake.notify_all()

    def idle(self) -> bool:
        """No job released, running or waiting to be released by a trigger."""
        with self._wake:
            return not self._triggered and not self._jobs

    def summary(self) -> dict[str, dict]:
        return {n: s.summary() for n, s in self.stats.items()}

    # --- dispatch ----------------------------------------------------------------------------
    def run_until(self, until: float) -> None:
        """Run the dispatch loop in the calling thread until `clock() >= until` (tests, benches)."""
        if not self._next_release:
            now = self.clock()
            self._next_release = {n: now for n, t in self.tasks.items() if t.period is not None}
        self._running = True
        while self.clock() < until and self._step(max_wait=until - self.clock()):
            pass
        self._running = False

    def _loop(self) -> None:
        while self._step(max_wait=0.1):
            pass

    def _step(self, max_wait: float) -> bool:
        """Release due jobs, then run one piece or wait. False when stopped."""
        with self._wake:
            if not self._running:
                return False
            now = self.clock()
            self._release(now)
            job = self._pick(now)
            if job is None:
                wait = min([r - now for r in self._next_release.values()] + [max_wait])
                if wait > 0:
                    self._wake.wait(wait)
                return self._running
        self._run_piece(job)
        return True

    def _release(self, now: float) -> None:
        for name, task in self.tasks.items():
            triggered = name in self._triggered
            release = now if triggered else None
            if task.period is not None and now >= self._next_release[name]:
                # A periodic job is due at its nominal tick, not when the dispatcher noticed it:
                # lateness counts against its deadline.
                release = self._next_release[name]
                nxt = release + task.period
                if nxt <= now:  # fell behind by more than a period: skip ahead, don't burst
                    self.stats[name].skipped_releases += int((now - release) // task.period)
                    nxt = now + task.period
                self._next_release[name] = nxt
            if release is None:
                continue
            if not task.enabled:
                self._triggered.discard(name)
                continue
            if name in self._jobs:
                if not triggered:
                    self.stats[name].skipped_releases += 1
                continue        # a trigger stays pending: released when the running job ends
            self._triggered.discard(name)
            self._jobs[name] = _Job(task, release, release + task.deadline)
            self.stats[name].releases += 1

    def _pick(self, now: float) -> _Job | None:
        if not self._jobs:
            return None
        job = min(self._jobs.values(), key=lambda j: j.deadline)
        est = self._estimate.get((job.task.name, job.next_piece), 0.0)
        # Would starting this piece make a more urgent, not-yet-released job miss its deadline?
        for name, release in self._next_release.items():
            other = self.tasks[name]
            if name == job.task.name or name in self._jobs or not other.enabled:
                continue
            other_deadline = release + other.deadline
            if release < now + est and other_deadline < job.deadline:
                other_cost = sum(self._estimate.get((name, i), 0.0) for i in range(len(other.pieces)))
                if now + est + other_cost > other_deadline:
                    return None  # idle until it is released; it will win the EDF pick
        return job

    def _run_piece(self, job: _Job) -> None:
        name, idx = job.task.name, job.next_piece
        stats = self.stats[name]
        t0 = self.clock()
        if job.started is None:
            job.started = t0
            stats.lateness.append(t0 - job.release)
        try:
            job.task.pieces[idx]()
        except BaseException as exc:  # a faulty task must not take the others down
            t1 = self.clock()
            stats.faults += 1
            stats.last_error = f"{type(exc).__name__}: {exc}"
            with self._wake:
                self._jobs.pop(name, None)
            if self.on_error is not None:
                self.on_error(name, exc)
            return
        t1 = self.clock()
        key = (name, idx)
        prev = self._estimate.get(key)
        self._estimate[key] = (t1 - t0) if prev is None else 0.8 * prev + 0.2 * (t1 - t0)
        job.next_piece += 1
        if job.next_piece == len(job.task.pieces):
            with self._wake:
                self._jobs.pop(name, None)
            stats.completed += 1
            stats.latencies.append(t1 - job.release)
            stats.completion_times.append(t1)
            if t1 > job.deadline:
                stats.deadline_misses += 1
