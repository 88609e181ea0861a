"""The host process: a planner node and an actor node on one single-threaded executor, sharing one
Engine (and so the subtask buffer) through one PolicyLoop.

    flashrt-ros host --params-file config/flashrt.yaml --set actor_hz=20
    ros2 run flashrt_ros flashrt_host --ros-args --params-file config/flashrt.yaml -p device:=cpu
    ros2 launch flashrt_ros flashrt.launch.py

With `autostart` (the default) the host configures and activates both nodes and starts an episode
at launch; otherwise a lifecycle manager drives /flashrt_planner and /flashrt_actor and
/flashrt/start begins the episode. The executor spins from the start, so /flashrt/ready and
/diagnostics answer while the models load ("not ready: configuring"). Ctrl-C (or SIGTERM) publishes a stop, closes the recording and
shuts down cleanly. With `exit_with_parent` (the default) the host also stops that way when the
process that started it dies (a `ros2 launch` killed hard leaves its children running: nobody
would be watching the arm).
"""
from __future__ import annotations

import os
import signal
import sys
import threading

import rclpy
from rclpy.executors import SingleThreadedExecutor

from flashrt_ros.host.loop import PolicyLoop
from flashrt_ros.host.params import ConfigError, HostConfig, environment_report, parse_host_args
from flashrt_ros.host.recorder import AsyncRecorder
from flashrt_ros.host.status import GcMonitor, thaw_heap

from .actor_node import ActorNode
from .planner_node import PlannerNode


class Host:
    """Both nodes, their executor and the loop between them. `Outputs` for the loop."""

    def __init__(self, config: HostConfig, *, context=None, engine_factory=None):
        self.config = config
        self.context = context
        self.loop = PolicyLoop(config, engine_factory=engine_factory)
        kwargs = {"context": context} if context is not None else {}
        self.planner = PlannerNode(self.loop, **kwargs)
        self.actor = ActorNode(self.loop, **kwargs)
        self.loop.log = self.actor.get_logger()
        self.loop.now_ns = self.actor.now_ns
        self.loop.outputs = self
        self.loop.announce_state()
        self.recorder = AsyncRecorder() if config.record_dir else None
        self.loop.recorder = self.recorder
        self.gc = GcMonitor()
        self.loop.gc = self.gc
        # One executor thread: every callback is short and never waits (the engine is on the
        # dispatcher, recording on its own thread). rclpy 7.1.6's MultiThreadedExecutor re-yields
        # queued tasks and busy-spins holding the GIL, which starved the actor (docs/design/realtime.md).
        self.executor = SingleThreadedExecutor(**kwargs)
        self.executor.add_node(self.planner)
        self.executor.add_node(self.actor)
        self._spin_thread: threading.Thread | None = None
        self._spin_error: BaseException | None = None
        self._closed = False

    # --- Outputs -------------------------------------------------------------------------------------
    def publish_chunk(self, chunk, ready_ns: int) -> None:
        self.actor.publish_chunk(chunk, ready_ns)

    def publish_stop(self, stop) -> None:
        self.actor.publish_stop(stop)

    def publish_subtask(self, state, stamp_ns: int) -> None:
        self.planner.publish_subtask(state, stamp_ns)

    def publish_value(self, reading) -> None:
        self.actor.publish_value(reading)

    def publish_episode_state(self, state) -> None:
        self.actor.publish_episode_state(state)

    # --- bring-up ------------------------------------------------------------------------------------
    def bring_up(self, start_episode: bool = True) -> bool:
        """Configure + activate both nodes (as a lifecycle manager would) and start an episode.
        A failure is logged and reported (diagnostics, /flashrt/ready); the process keeps serving."""
        log = self.actor.get_logger()
        for node, step in ((self.planner, "configure"), (self.actor, "configure"),
                           (self.planner, "activate"), (self.actor, "activate")):
            result = getattr(node, f"trigger_{step}")()
            if _failed(result):
                log.error(f"{node.get_name()}: {step} failed; the host keeps serving /diagnostics and "
                          f"/flashrt/ready (not ready)")
                return False
        if start_episode:
            self.loop.start()
        ready, why = self.loop.readiness()
        log.info(why)
        return ready

    # --- spinning ------------------------------------------------------------------------------------
    def spin(self, parent_pid: int | None = None, until: threading.Event | None = None) -> None:
        """Spin in the calling thread until the context shuts down (KeyboardInterrupt propagates),
        until `parent_pid` is no longer this process's parent (the launcher died), or until `until`
        is set."""
        ctx = self.executor.context
        while ctx.ok() and not self._closed and not (until is not None and until.is_set()):
            self.executor.spin_once(timeout_sec=0.1)
            if parent_pid is not None and os.getppid() != parent_pid:
                self.actor.get_logger().error(
                    f"the process that started the host (pid {parent_pid}) is gone: publishing a stop and "
                    f"exiting (exit_with_parent)")
                return

    def spin_in_thread(self, parent_pid: int | None = None, until: threading.Event | None = None) -> "Host":
        """Spin in a background thread (tools, tests; the process while the models load, so that
        /flashrt/ready and /diagnostics answer then too); close() stops and joins it, as does
        join_spin_thread() once `until` is set."""
        def run():
            try:
                self.spin(parent_pid, until)
            except BaseException as exc:   # raised again by join_spin_thread()
                self._spin_error = exc
        self._spin_error = None
        self._spin_thread = threading.Thread(target=run, name="flashrt-host-spin", daemon=True)
        self._spin_thread.start()
        return self

    def join_spin_thread(self) -> None:
        """Wait for the spin thread to end (its `until` set) and raise what ended it, if anything."""
        while self._spin_thread is not None and self._spin_thread.is_alive():
            self._spin_thread.join(timeout=0.1)
        self._spin_thread = None
        if self._spin_error is not None:
            raise self._spin_error

    def close(self) -> None:
        """Stop safely: a stop is published and the recording closed, then the dispatcher, the spin
        thread, the executor and the nodes go, in that order."""
        if self._closed:
            return
        try:
            self.loop.shutdown()
            self.actor.wait_for_outputs(timeout_s=1.0)   # the last stop reaches the controller
            if self.recorder is not None:
                self.recorder.stop()
        finally:
            self._closed = True
            self.gc.close()
            if self._spin_thread is not None:
                self._spin_thread.join(timeout=10.0)
                if self._spin_thread.is_alive():
                    raise RuntimeError("host spin thread did not stop within 10 s")
            self.executor.shutdown()
            self.actor.destroy_node()
            self.planner.destroy_node()
            thaw_heap(collect=False)


def _failed(result) -> bool:
    from rclpy.lifecycle import TransitionCallbackReturn
    return result != TransitionCallbackReturn.SUCCESS


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_host_args(argv)
    except ConfigError as err:
        print(f"flashrt-ros host: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        for name, value in args.config.as_parameters().items():
            print(f"{name}: {value!r}  # {args.config.sources.get(name, 'default')}")
        return 0
    from rclpy.signals import SignalHandlerOptions
    # Our own SIGINT/SIGTERM handling: rclpy's would shut the context down before we can publish
    # the stop and close the recording. While serving, a signal only sets `stop` and the spin loop
    # ends at its next turn (within 0.1 s): an exception raised by the handler lands wherever the main
    # thread is, and inside one of rclpy's C++ calls pybind11 reports it as an error of its own
    # ("RuntimeError: Unable to convert call argument..." from take_message: exit code 1 and a
    # traceback instead of a clean stop, seen once in a test run). While the models load it still
    # raises, so that loading stops at once; whatever that raises is then the interruption.
    rclpy.init(args=["flashrt_host", *args.ros_args], signal_handler_options=SignalHandlerOptions.NO)
    stop, loading = threading.Event(), threading.Event()

    def on_signal(signum, frame):
        stop.set()
        if loading.is_set():
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)   # even when started with SIGINT ignored
    parent = os.getppid() if args.config.exit_with_parent else None
    host = Host(args.config)
    for level, line in environment_report(args.config):
        getattr(host.actor.get_logger(), level)(f"environment: {line}")
    try:
        if args.config.autostart:
            # serving while the models load (seconds to minutes), then spinning here as before
            loaded = threading.Event()
            host.spin_in_thread(parent_pid=parent, until=loaded)
            loading.set()
            try:
                host.bring_up()
            finally:
                loading.clear()
                loaded.set()
                host.join_spin_thread()
        host.spin(parent_pid=parent, until=stop)
        if stop.is_set():
            host.actor.get_logger().info("interrupted (Ctrl-C / SIGTERM): stopping")
    except BaseException:
        if not stop.is_set():
            raise
        host.actor.get_logger().info("interrupted (Ctrl-C / SIGTERM): stopping")
    finally:
        host.close()
        rclpy.try_shutdown()
    return 0
