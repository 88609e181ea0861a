"""The host process: a planner node and an actor node on one multi-threaded executor, sharing one
Engine (and so the subtask buffer) through one PolicyLoop.

    flashrt-ros host --params-file config/flashrt.yaml --set actor_hz=20
    ros2 run flashrt_ros flashrt_host --ros-args --params-file config/flashrt.yaml -p device:=cpu
    ros2 launch flashrt_ros flashrt.launch.py

With `autostart` (the default) the host configures and activates both nodes and starts an episode
at launch; otherwise a lifecycle manager drives /flashrt_planner and /flashrt_actor and
/flashrt/start begins the episode. Ctrl-C (or SIGTERM) publishes a stop, closes the recording and
shuts down cleanly.
"""
from __future__ import annotations

import signal
import sys
import threading

import rclpy
from rclpy.executors import MultiThreadedExecutor

from .actor_node import ActorNode
from flashrt_ros.host.params import ConfigError, HostConfig, parse_host_args
from .planner_node import PlannerNode
from flashrt_ros.host.loop import PolicyLoop


class Host:
    """Both nodes, their executor and the loop between them. `Outputs` for the loop."""

    def __init__(self, config: HostConfig, *, context=None, engine_factory=None, num_threads: int = 4):
        self.config = config
        self.context = context
        self.loop = PolicyLoop(config, engine_factory=engine_factory)
        kwargs = {"context": context} if context is not None else {}
        self.planner = PlannerNode(self.loop, **kwargs)
        self.actor = ActorNode(self.loop, **kwargs)
        self.loop.log = self.actor.get_logger()
        self.loop.now_ns = self.actor.now_ns
        self.loop.outputs = self
        self.executor = MultiThreadedExecutor(num_threads=num_threads, **kwargs)
        self.executor.add_node(self.planner)
        self.executor.add_node(self.actor)
        self._spin_thread: threading.Thread | None = None
        self._closed = False

    # --- Outputs -------------------------------------------------------------------------------------
    def publish_chunk(self, msg) -> None:
        self.actor.publish_chunk(msg)

    def publish_trajectory(self, msg) -> None:
        self.actor.publish_trajectory(msg)

    def publish_subtask(self, msg) -> None:
        self.planner.publish_subtask(msg)

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
    def spin(self) -> None:
        """Spin in the calling thread until the context shuts down (KeyboardInterrupt propagates)."""
        ctx = self.executor.context
        while ctx.ok() and not self._closed:
            self.executor.spin_once(timeout_sec=0.1)

    def spin_in_thread(self) -> "Host":
        """Spin in a background thread (tests, tools); close() stops and joins it."""
        self._spin_thread = threading.Thread(target=self.spin, name="flashrt-host-spin", daemon=True)
        self._spin_thread.start()
        return self

    def close(self) -> None:
        """Stop safely: a stop is published and the recording closed, then the dispatcher, the spin
        thread, the executor and the nodes go, in that order."""
        if self._closed:
            return
        try:
            self.loop.shutdown()
        finally:
            self._closed = True
            if self._spin_thread is not None:
                self._spin_thread.join(timeout=10.0)
                if self._spin_thread.is_alive():
                    raise RuntimeError("host spin thread did not stop within 10 s")
            self.executor.shutdown()
            self.actor.destroy_node()
            self.planner.destroy_node()


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
    # the stop and close the recording.
    rclpy.init(args=["flashrt_host", *args.ros_args], signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)   # even when started with SIGINT ignored
    host = Host(args.config)
    try:
        if args.config.autostart:
            host.bring_up()
        host.spin()
    except KeyboardInterrupt:
        host.actor.get_logger().info("interrupted (Ctrl-C / SIGTERM): stopping")
    finally:
        host.close()
        rclpy.try_shutdown()
    return 0


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt
