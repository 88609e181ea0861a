"""The planner node: the task and coaching come in, the subtask goes out (latched).

The planner itself runs on the host's dispatcher as pieces between actor releases (PolicyLoop);
this node is its ROS face. Lifecycle: configure loads the shared engine (once per process) and
creates the topics; activate lets the planner run; deactivate pauses it, keeping the subtask.
"""
from __future__ import annotations

import time

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from flashrt_ros.msg import Subtask

from .actor_node import MESSAGE_INFO, guarded
from .conversions import InputError, subtask_msg, text_from_msg
from .params import declare_host_parameters, host_parameter_overrides
from flashrt_ros.host.loop import PolicyLoop

TASK_TOPIC = "flashrt/task"
COACH_TOPIC = "flashrt/coach"
SUBTASK_TOPIC = "flashrt/subtask"
# Late joiners (a UI, a recorder started later) get the current subtask.
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
LATCHED_TASK = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
DUPLICATE_S = 0.1   # one sample reaches both task subscriptions within this window


class PlannerNode(LifecycleNode):
    def __init__(self, loop: PolicyLoop, **node_kwargs):
        super().__init__("flashrt_planner", parameter_overrides=host_parameter_overrides(loop.config),
                         **node_kwargs)
        declare_host_parameters(self, loop.config)
        self.loop = loop
        self._subtask_pub = None
        self._subs = []
        self._last_task: tuple[str, float] | None = None

    # --- lifecycle ---------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        # the publisher first: configuring with a task publishes it as the subtask (LeRobot policies)
        self._subtask_pub = self.create_publisher(Subtask, SUBTASK_TOPIC, LATCHED)
        try:
            self.loop.configure("planner")
        except Exception as exc:
            self.get_logger().error(f"configure failed: {type(exc).__name__}: {exc}")
            self._destroy_topics()
            return TransitionCallbackReturn.FAILURE
        # The task twice: volatile (matches every publisher) and transient-local (a task latched
        # before this node started, e.g. by the world node). A sample delivered by both is
        # dropped as a duplicate in _on_task.
        on_task = (lambda msg, info: self._on_task(msg, info)) if MESSAGE_INFO else self._on_task
        self._subs = [self.create_subscription(String, COACH_TOPIC, self._on_coach, 10),
                      self.create_subscription(String, TASK_TOPIC, on_task, 10),
                      self.create_subscription(String, TASK_TOPIC, on_task, LATCHED_TASK)]
        self.loop.record_topics.update({
            "coach": (self._subs[0].topic_name, String), "task": (self._subs[1].topic_name, String),
            "subtask": (self._subtask_pub.topic_name, Subtask)})
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.loop.set_active("planner", True)
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.loop.set_active("planner", False)
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_topics()
        self.loop.cleanup("planner")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.loop.set_active("planner", False)
        self._destroy_topics()
        self.loop.cleanup("planner")
        return TransitionCallbackReturn.SUCCESS

    def _destroy_topics(self) -> None:
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        if self._subtask_pub is not None:
            self.destroy_publisher(self._subtask_pub)
            self._subtask_pub = None

    # --- callbacks (short: validate, hand to the loop) ---------------------------------------------
    @guarded("task callback")
    def _on_task(self, msg: String, info=None) -> None:
        try:
            self._task(msg, info)
        finally:
            self.loop.input_handled()

    def _task(self, msg: String, info) -> None:
        try:
            text = text_from_msg(msg, "task")
        except InputError as err:
            self.loop.reject_text(f"task refused: {err}")
            return
        if self._duplicate(text, info):
            return   # the same sample through the other task subscription
        self.loop.set_task(text)

    def _duplicate(self, text: str, info) -> bool:
        """The same sample, delivered to both task subscriptions. With message info (Iron and
        later): the same publisher's sequence number and source stamp. Without (Humble): the same
        text within DUPLICATE_S in the same episode (a task sent again after a reset and start is
        not a duplicate however soon it comes)."""
        if info:
            key = (text, info.get("source_timestamp"), info.get("publication_sequence_number"))
        else:
            key = (text, self.loop.episode_id, self.loop.running)
        now = time.monotonic()
        last = self._last_task
        self._last_task = (key, now)
        return last is not None and last[0] == key and (info or now - last[1] < DUPLICATE_S)

    @guarded("coaching callback")
    def _on_coach(self, msg: String) -> None:
        try:
            text = text_from_msg(msg, "coaching text")
        except InputError as err:
            self.loop.reject_text(f"coaching refused: {err}")
        else:
            self.loop.coach(text)
        finally:
            self.loop.input_handled()

    # --- output ------------------------------------------------------------------------------------
    def publish_subtask(self, state, stamp_ns: int) -> None:
        msg = subtask_msg(state.text, state.version, state.source, stamp_ns)
        pub = self._subtask_pub
        if pub is not None:
            pub.publish(msg)
        self.loop.record("subtask", msg)
