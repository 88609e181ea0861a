"""The dispatcher keeps the actor on time while a long planner runs, by running the planner as
pieces and never starting a piece that would make the actor miss its deadline."""
import threading
import time

import pytest

from flashrt_ros.runtime import MultiRateScheduler, Task


class FakeClock:
    """Simulated time: a piece 'takes' its cost by advancing the clock. Deterministic."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def work(self, seconds):
        def piece():
            self.t += seconds
        return piece


def run(tasks, clock, until):
    sched = MultiRateScheduler(tasks, clock=clock)
    orig_wait = sched._wake.wait

    def wait(timeout=None):  # simulated idle: jump the clock instead of sleeping
        clock.t += timeout if timeout is not None else 0.0
        return False
    sched._wake.wait = wait
    sched.run_until(until)
    sched._wake.wait = orig_wait
    return sched.summary()


def test_actor_keeps_its_rate_and_deadline_while_planner_runs_in_pieces():
    clock = FakeClock()
    actor = Task("actor", [clock.work(0.004)], period=0.020, deadline=0.010)
    # a 60 ms planner cut into 12 pieces of 5 ms, at 2 Hz
    planner = Task("planner", [clock.work(0.005)] * 12, period=0.5, deadline=0.5)
    s = run([actor, planner], clock, until=5.0)
    assert s["actor"]["deadline_misses"] == 0
    assert s["actor"]["completed"] >= 245
    assert s["planner"]["completed"] >= 9 and s["planner"]["deadline_misses"] == 0


def test_unsplit_planner_makes_the_actor_miss_deadlines():
    # The same work as one 60 ms piece: the naive baseline the pieces fix.
    clock = FakeClock()
    actor = Task("actor", [clock.work(0.004)], period=0.020, deadline=0.010)
    planner = Task("planner", [clock.work(0.060)], period=0.5, deadline=0.5)
    s = run([actor, planner], clock, until=5.0)
    assert s["actor"]["deadline_misses"] >= 9


def test_a_failing_task_is_reported_and_the_other_keeps_running():
    clock = FakeClock()
    errors = []

    def broken():
        clock.t += 0.001
        raise RuntimeError("planner exploded")
    actor = Task("actor", [clock.work(0.002)], period=0.02, deadline=0.01)
    planner = Task("planner", [broken], period=0.1, deadline=0.1)
    sched = MultiRateScheduler([actor, planner], clock=clock, on_error=lambda n, e: errors.append((n, str(e))))
    sched._wake.wait = lambda timeout=None: setattr(clock, "t", clock.t + (timeout or 0)) or False
    sched.run_until(1.0)
    s = sched.summary()
    assert s["planner"]["faults"] >= 9 and "exploded" in s["planner"]["last_error"]
    assert s["actor"]["completed"] >= 48 and s["actor"]["deadline_misses"] == 0
    assert errors[0] == ("planner", "planner exploded")


def test_event_triggered_task_runs_once_per_trigger_and_disabled_tasks_do_not_run():
    ran = []
    sched = MultiRateScheduler([Task("coach", [lambda: ran.append(1)], period=None, deadline=0.1),
                                Task("actor", [lambda: ran.append(2)], period=0.01, deadline=0.01, enabled=False)])
    sched.start()
    try:
        sched.trigger("coach")
        deadline = time.monotonic() + 2
        while not ran and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)
    finally:
        sched.stop()
    assert ran == [1]


def test_bad_task_definitions_are_rejected_with_the_task_name():
    with pytest.raises(ValueError, match="'a'.*period"):
        MultiRateScheduler([Task("a", [lambda: None], period=0, deadline=1)])
    with pytest.raises(ValueError, match="unique"):
        MultiRateScheduler([Task("a", [lambda: None], 1, 1), Task("a", [lambda: None], 1, 1)])


def test_threaded_dispatch_stops_and_joins_cleanly():
    count = threading.Semaphore(0)
    sched = MultiRateScheduler([Task("tick", [count.release], period=0.005, deadline=0.005)])
    sched.start()
    assert count.acquire(timeout=2)
    sched.stop()
    assert sched._thread is None
