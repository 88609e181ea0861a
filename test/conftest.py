"""Shared test setup: a private ROS 2 environment per test run, and fixtures for real DDS tests.

The environment is set when this file is imported, i.e. before any test imports rclpy:
- DDS discovery stays on this machine (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST);
- ROS_DOMAIN_ID is unique among concurrent test runs on this machine (a lock file per domain),
  so two `make test` runs never see each other's topics; subprocesses inherit it;
- ROS logs go to a temporary directory, removed at the end of the run.

Fixtures:
- `ros_context`: an initialised `rclpy.Context` of its own, shut down after the test.
- `ros`: a `RosHarness` on that context: `ros.node(name)` creates a node destroyed at teardown,
  `ros.spin(*nodes)` spins them in a background thread that is always stopped and joined
  (exiting with a spin thread still running can abort the interpreter), and
  `ros.wait_for(predicate)` polls until something arrives.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from typing import Callable

import pytest

# One intra-op thread for torch, here and in every subprocess a test starts (hosts, demo): the
# reference model is tiny, and two spinning OpenMP threads beside the ROS executor, the
# dispatcher and a second process on 2 cores slowed chunks down by an order of magnitude.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# inductor (test_lerobot_compile) compiles in this process: no pool of compile workers left running
# beside the DDS tests that follow on a 2-core machine
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

# One lock file per domain id, shared with fleet replays (flashrt_ros/tools/domains.py).
from flashrt_ros.tools.domains import claim_domain_id  # noqa: E402

ROS_DOMAIN_ID, _domain_lock = claim_domain_id()
ROS_LOG_DIR = tempfile.mkdtemp(prefix="flashrt_ros_test_log_")
os.environ["ROS_DOMAIN_ID"] = str(ROS_DOMAIN_ID)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_LOG_DIR"] = ROS_LOG_DIR
os.environ.pop("ROS_LOCALHOST_ONLY", None)  # deprecated; Jazzy warns when it is set


def pytest_report_header(config) -> str:
    return f"ROS_DOMAIN_ID={ROS_DOMAIN_ID} ROS_LOG_DIR={ROS_LOG_DIR}"


def pytest_unconfigure(config) -> None:
    shutil.rmtree(ROS_LOG_DIR, ignore_errors=True)


class BackgroundSpinner:
    """An executor spinning in a thread until `stop()`, which joins the thread."""

    def __init__(self, executor) -> None:
        self.executor = executor
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ros-spin", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            while not self._stop.is_set() and self.executor.context.ok():
                self.executor.spin_once(timeout_sec=0.05)
        except BaseException as err:  # surfaced by stop(), so a failing callback fails the test
            self._error = err

    def start(self) -> "BackgroundSpinner":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10.0)
        if self._thread.is_alive():
            raise RuntimeError("ROS spin thread did not stop within 10 s")
        self.executor.shutdown()
        if self._error is not None:
            raise self._error


class RosHarness:
    """Nodes and background spinners on one context, torn down spinners first, then nodes."""

    def __init__(self, context) -> None:
        self.context = context
        self._nodes: list = []
        self._spinners: list[BackgroundSpinner] = []

    def node(self, name: str, **kwargs):
        import rclpy

        node = rclpy.create_node(name, context=self.context, **kwargs)
        self._nodes.append(node)
        return node

    def spin(self, *nodes, executor=None):
        """Spin `nodes` in a background thread (a SingleThreadedExecutor unless given one)."""
        from rclpy.executors import SingleThreadedExecutor

        executor = executor or SingleThreadedExecutor(context=self.context)
        for node in nodes:
            executor.add_node(node)
        spinner = BackgroundSpinner(executor).start()
        self._spinners.append(spinner)
        return executor

    @staticmethod
    def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> bool:
        """Poll `predicate` until it is true or `timeout` seconds pass; returns its last value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(interval)
        return bool(predicate())

    def close(self) -> None:
        errors = []
        for spinner in reversed(self._spinners):
            try:
                spinner.stop()
            except BaseException as err:
                errors.append(err)
        for node in reversed(self._nodes):
            node.destroy_node()
        self._spinners.clear()
        self._nodes.clear()
        if errors:
            raise errors[0]


@pytest.fixture
def ros_context():
    """A fresh, initialised rclpy Context (its own DDS participant), shut down after the test."""
    import rclpy

    context = rclpy.Context()
    rclpy.init(args=[], context=context)
    try:
        yield context
    finally:
        context.try_shutdown()


@pytest.fixture
def ros(ros_context):
    """A RosHarness on `ros_context`; its spin threads are stopped and joined at teardown."""
    harness = RosHarness(ros_context)
    try:
        yield harness
    finally:
        harness.close()
