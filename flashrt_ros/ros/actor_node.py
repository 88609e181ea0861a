"""The actor node: cameras and joint states in, action chunks and trajectories out; episode control.

The actor itself runs on the host's dispatcher at `actor_hz` (PolicyLoop), or with actor_trigger
'observation' once per complete observation; callbacks here only convert, check and store (never
waiting on the cycle, the engine or the recorder), and every callback is guarded: an exception is
logged with its traceback, reported as ERROR on /diagnostics, the host holds and keeps serving.
Input ages start at DDS reception (the message info's received_timestamp, where rclpy gives it:
Iron and later), so time spent queued in the executor counts against freshness. Lifecycle: configure loads the shared engine and creates the
topics; activate starts issuing chunks (when an episode runs); deactivate stops issuing at the
chunk boundary and publishes a stop, keeping the episode and the engine state.

Services (std_srvs/Trigger): flashrt/start, flashrt/stop, flashrt/reset, flashrt/reset_done,
flashrt/ready; they, /diagnostics and flashrt/episode_state (latched: the episode state machine,
docs/design/critic.md) answer in every lifecycle state. flashrt/value: the critic's readings.
"""
from __future__ import annotations

import functools
import time

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.duration import Duration
from rclpy.exceptions import InvalidHandle
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.subscription import Subscription
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from flashrt_ros.msg import ActionChunk, EpisodeState, Value

from flashrt_ros.host.loop import PolicyLoop
from flashrt_ros.host.params import CameraConfig, ControllerConfig
from flashrt_ros.host.status import Meter

from .conversions import (InputError, chunk_msg, episode_state_msg, forward_command_msg, image_from_compressed,
                          image_from_msg, joint_trajectory_msg, joint_values_from_msg, stamp_to_ns, value_msg)
from .diagnostics import build_report
from .params import declare_host_parameters, host_parameter_overrides

INTERRUPT_TOPIC = "flashrt/interrupt"
ACTION_CHUNK_TOPIC = "flashrt/action_chunk"
DIAGNOSTICS_TOPIC = "/diagnostics"
VALUE_TOPIC = "flashrt/value"
EPISODE_STATE_TOPIC = "flashrt/episode_state"
# Transient local, the last 10: a late subscriber gets the current state (the newest), and one that
# keeps up sees every transition (an end is three in a row: stop_infer, record, await_reset).
STATE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
# Reliable, newest only: a lost fragment of a large image is repaired instead of the image dropped.
# Depth 5: a burst of frames while the executor is busy (~150 ms at 30 Hz) is kept, so the cameras'
# rings still hold frames that match each other.
CAMERA_RELIABLE = QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
# Iron+ rclpy passes (msg, MessageInfo) to a two-argument callback; Humble's only the message.
MESSAGE_INFO = hasattr(Subscription, "CallbackType")


def guarded(where: str, service: bool = False):
    """A node callback that cannot end the process: an exception goes to loop.callback_fault
    (traceback logged, ERROR on /diagnostics, the host holds). A service answers success=false."""
    def wrap(method):
        @functools.wraps(method)
        def run(self, *args):
            try:
                return method(self, *args)
            except InvalidHandle:
                return None         # the node is being destroyed (shutdown): nothing to serve
            except Exception as exc:
                self.loop.callback_fault(where, exc)
                if service:
                    response = args[1]
                    response.success, response.message = False, f"{type(exc).__name__}: {exc}"
                    return response
                return None
        return run
    return wrap


class ActorNode(LifecycleNode):
    def __init__(self, loop: PolicyLoop, **node_kwargs):
        super().__init__("flashrt_actor", parameter_overrides=host_parameter_overrides(loop.config),
                         **node_kwargs)
        declare_host_parameters(self, loop.config)
        self.loop = loop
        self._inputs_group = ReentrantCallbackGroup()       # camera/joint callbacks never wait on each other
        self._control_group = MutuallyExclusiveCallbackGroup()
        self._subs = []
        self._chunk_pub = None
        self._groups: list[tuple[ControllerConfig, object, object]] = []   # (group, publisher, columns)
        self._stream_timers = []
        self._episode_services = [   # (not `_services`: rclpy.Node keeps its own list there)
            self.create_service(Trigger, "flashrt/start", self._on_start, callback_group=self._control_group),
            self.create_service(Trigger, "flashrt/stop", self._on_stop, callback_group=self._control_group),
            self.create_service(Trigger, "flashrt/reset", self._on_reset, callback_group=self._control_group),
            self.create_service(Trigger, "flashrt/reset_done", self._on_reset_done, callback_group=self._control_group),
            self.create_service(Trigger, "flashrt/ready", self._on_ready, callback_group=self._control_group),
        ]
        self._value_pub = self.create_publisher(Value, VALUE_TOPIC, 10)
        self._state_pub = self.create_publisher(EpisodeState, EPISODE_STATE_TOPIC, STATE_QOS)
        loop.record_topics["value"] = (self._value_pub.topic_name, Value)
        loop.record_topics["episode_state"] = (self._state_pub.topic_name, EpisodeState)
        self.input_delay = Meter()      # DDS reception -> callback: the executor's backlog
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        # A steady clock: diagnostics (and the watchdog in them) go on while /clock pauses.
        self._diag_timer = self.create_timer(1.0 / loop.config.diagnostics_hz, self.publish_diagnostics,
                                             callback_group=MutuallyExclusiveCallbackGroup(),
                                             clock=Clock(clock_type=ClockType.STEADY_TIME))
        loop.record_topics["diagnostics"] = (self._diag_pub.topic_name, DiagnosticArray)
        loop.clock_problem = self.clock_problem

    def now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def clock_problem(self) -> str | None:
        """With use_sim_time, ROS time is 0 until /clock arrives: nothing may be stamped with it."""
        clock = self.get_clock()
        if clock.ros_time_is_active and clock.now().nanoseconds == 0:
            return "use_sim_time is true and no /clock has arrived: ROS time is 0"
        return None

    # --- lifecycle ---------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.loop.configure("actor")
        except Exception as exc:
            self.get_logger().error(f"configure failed: {type(exc).__name__}: {exc}")
            return TransitionCallbackReturn.FAILURE
        cfg = self.loop.config
        self._chunk_pub = self.create_lifecycle_publisher(ActionChunk, ACTION_CHUNK_TOPIC, 10)
        for group in cfg.controllers:
            columns = self.loop.joints.columns(group.joints)
            if group.type == "forward_command":
                pub = self.create_lifecycle_publisher(Float64MultiArray, group.topic, 10)
                period = 1.0 / group.rate_hz if group.rate_hz > 0 else self.loop.dt
                self._stream_timers.append(self.create_timer(
                    period, functools.partial(self._stream, pub, columns, period),
                    callback_group=self._control_group))
            else:
                pub = self.create_lifecycle_publisher(JointTrajectory, group.topic, 10)
                self.loop.record_topics[f"controller.{group.name}"] = (pub.topic_name, JointTrajectory)
            self._groups.append((group, pub, columns))
        camera_qos = qos_profile_sensor_data if cfg.camera_reliability == "best_effort" else CAMERA_RELIABLE
        for cam in cfg.cameras:
            kind = CompressedImage if cam.compressed else Image
            sub = self.create_subscription(kind, cam.topic, self._input_callback(self._on_image, cam),
                                           camera_qos, callback_group=self._inputs_group)
            self._subs.append(sub)
            self.loop.record_topics[f"camera.{cam.name}"] = (sub.topic_name, kind)
        for source in cfg.joint_state_topics:
            sub = self.create_subscription(JointState, source, self._input_callback(self._on_joint_state, source),
                                           qos_profile_sensor_data, callback_group=self._inputs_group)
            self._subs.append(sub)
            self.loop.record_topics[f"joint_states:{source}"] = (sub.topic_name, JointState)
        interrupt = self.create_subscription(String, INTERRUPT_TOPIC, self._on_interrupt, 10,
                                             callback_group=self._control_group)
        self._subs.append(interrupt)
        self.loop.record_topics.update({
            "interrupt": (interrupt.topic_name, String),
            "action_chunk": (self._chunk_pub.topic_name, ActionChunk)})
        self.get_logger().info(
            "configured: cameras " + ", ".join(
                f"{c.name} <- {s.topic_name} ({'compressed' if c.compressed else 'raw'})"
                for c, s in zip(cfg.cameras, self._subs))
            + "; joint states <- " + ", ".join(s.topic_name for s in self._subs[len(cfg.cameras):-1])
            + "; commands -> " + ", ".join(f"{list(g.joints)} -> {p.topic_name} ({g.type})"
                                          for g, p, _ in self._groups))
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)        # activates the lifecycle publishers first
        self.loop.set_active("actor", True)
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.loop.set_active("actor", False)        # the stop goes out while the publishers are active
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_topics()
        self.loop.cleanup("actor")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.loop.stop(reason="lifecycle shutdown")
        self.loop.set_active("actor", False)
        self._destroy_topics()
        self.loop.cleanup("actor")
        return TransitionCallbackReturn.SUCCESS

    def _destroy_topics(self) -> None:
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        for timer in self._stream_timers:
            self.destroy_timer(timer)
        self._stream_timers = []
        for pub in (self._chunk_pub, *(p for _, p, _ in self._groups)):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub) if hasattr(self, "destroy_lifecycle_publisher") \
                    else self.destroy_publisher(pub)
        self._chunk_pub = None
        self._groups = []

    # --- input callbacks: convert, validate, store the latest --------------------------------------
    def _input_callback(self, handler, *args):
        """handler(msg, received, *args), with `received` = when DDS received the message, on the
        loop's clock (where rclpy gives no message info: now)."""
        if MESSAGE_INFO:
            return lambda msg, info: handler(msg, self._received(info), *args)
        return lambda msg: handler(msg, self._received(None), *args)

    def _received(self, info) -> float:
        now = self.loop.clock()
        if not info or self.loop.config.actor_trigger == "observation":
            return now      # lock-step: ages on the ROS clock, which only moves with the inputs
        delay = max(0.0, (time.time_ns() - info["received_timestamp"]) / 1e9)
        self.input_delay.add(delay)
        return now - delay

    @guarded("camera callback")
    def _on_image(self, msg, received: float, cam: CameraConfig) -> None:
        try:
            image, encoding = image_from_compressed(msg) if cam.compressed else image_from_msg(msg)
        except InputError as err:
            self.loop.reject_input(cam.name, f"camera {cam.name!r}: {err}")
            return
        finally:
            self.loop.input_handled()
        self.loop.put_frame(cam.name, image, encoding, stamp_to_ns(msg.header.stamp) or self.now_ns(), received)
        self.loop.record(f"camera.{cam.name}", msg)

    @guarded("joint state callback")
    def _on_joint_state(self, msg: JointState, received: float, source: str) -> None:
        try:
            values = joint_values_from_msg(msg, self.loop.joints.measured)
        except InputError as err:
            self.loop.reject_input(source, f"joint state from {source}: {err}")
            return
        finally:
            self.loop.input_handled()
        self.loop.put_joints(values, stamp_to_ns(msg.header.stamp) or self.now_ns(), received, source,
                             tuple(msg.name))
        self.loop.record(f"joint_states:{source}", msg)

    @guarded("interrupt callback")
    def _on_interrupt(self, msg: String) -> None:
        # An interrupt always stops; an oversized reason is only shortened.
        reason = msg.data.strip()
        if len(reason) > 200:
            reason = reason[:200] + "..."
        try:
            self.loop.record("interrupt", msg)
            self.loop.interrupt(reason or "interrupt")
        finally:
            self.loop.input_handled()

    # --- services ----------------------------------------------------------------------------------
    @guarded("/flashrt/start", service=True)
    def _on_start(self, request, response):
        response.success, response.message = self.loop.start()
        return response

    @guarded("/flashrt/stop", service=True)
    def _on_stop(self, request, response):
        response.success, response.message = self.loop.stop()
        return response

    @guarded("/flashrt/reset", service=True)
    def _on_reset(self, request, response):
        response.success, response.message = self.loop.reset()
        return response

    @guarded("/flashrt/reset_done", service=True)
    def _on_reset_done(self, request, response):
        response.success, response.message = self.loop.reset_done()
        return response

    @guarded("/flashrt/ready", service=True)
    def _on_ready(self, request, response):
        response.success, response.message = self.loop.readiness()
        return response

    # --- outputs -----------------------------------------------------------------------------------
    def publish_chunk(self, chunk, ready_ns: int) -> None:
        """An ActionChunk and, when any of it is still ahead, its trajectory: one JointTrajectory
        per joint_trajectory group, each with only its joints, the same stamp and times (recorded
        too); forward_command groups stream it (_stream)."""
        msg = chunk_msg(chunk, self.loop.config.joint_names)
        if self._chunk_pub is not None:
            self._chunk_pub.publish(msg)
        self.loop.record("action_chunk", msg, ready_ns)
        if chunk.trajectory is not None:
            self._publish_trajectory(chunk.trajectory, ready_ns)

    def publish_stop(self, stop) -> None:
        self._publish_trajectory(stop, stop.stamp_ns)

    def publish_value(self, reading) -> None:
        msg = value_msg(reading)
        self._value_pub.publish(msg)
        self.loop.record("value", msg)

    def publish_episode_state(self, state) -> None:
        msg = episode_state_msg(state)
        self._state_pub.publish(msg)
        self.loop.record("episode_state", msg, state.stamp_ns)

    def _publish_trajectory(self, trajectory, stamp_ns: int) -> None:
        # every group's message is built (and so checked) before any is published
        messages = [(group, pub, joint_trajectory_msg(trajectory, group.joints, columns))
                    for group, pub, columns in self._groups if group.type == "joint_trajectory"]
        for group, pub, msg in messages:
            pub.publish(msg)
            self.loop.record(f"controller.{group.name}", msg, stamp_ns)

    @guarded("forward command timer")
    def _stream(self, pub, columns, period: float) -> None:
        """A forward_command group's position at now on the trajectory last sent, every period
        while one runs (the controller holds its last command after)."""
        if not self.loop.active["actor"]:
            return
        positions = self.loop.command_at(self.now_ns(), period)
        if positions is not None:
            pub.publish(forward_command_msg(positions[columns]))

    def wait_for_outputs(self, timeout_s: float) -> None:
        """Until every subscriber acknowledged what was published (shutdown: the stop must arrive
        before the process goes)."""
        for pub in (*(p for _, p, _ in self._groups), self._chunk_pub):
            if pub is not None:
                try:
                    pub.wait_for_all_acked(Duration(seconds=timeout_s))
                except Exception as exc:      # a destroyed publisher, an rmw without acks
                    self.get_logger().warning(f"could not confirm delivery on {pub.topic_name}: {exc}")

    @guarded("diagnostics timer")
    def publish_diagnostics(self) -> None:
        msg = build_report(self.loop, self.now_ns(), self)
        self._diag_pub.publish(msg)
        self.loop.record("diagnostics", msg)
