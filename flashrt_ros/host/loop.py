"""The host's rules, below ROS: when to plan, when to issue a chunk, when and how to stop.

One `PolicyLoop` per process, shared by the planner and actor nodes. It owns the Engine (loaded
once, whichever node configures first), the MultiRateScheduler that runs the actor at its rate
with the planner as pieces between actor releases, the latest inputs, the episode (start, stop,
reset, interrupt), the safety rules and the recording. No rclpy here: the nodes convert messages
and call in; outputs leave as plain data (`ChunkOut`, `TrajectoryOut`) through the `Outputs` the
ROS host wires to its publishers. Tests drive it on a simulated clock.

Threads, and what each may wait on:
- ROS callbacks (executor threads) only convert, check and store (`put_frame`, `put_joints`), or
  change the episode state under `_lock`, which is only ever held for microseconds (never across
  an inference or any I/O). They never wait on the engine or the recorder.
- The scheduler's dispatcher thread is the only one that touches the engine: the actor cycle,
  the planner pieces, and the `control` task that applies task, coaching and reset requests in
  order, before the next cycle. With actor_trigger 'observation' an input that completes an
  observation triggers the cycle there too (nothing runs in the callback).
- The recorder writes on its own thread behind a bounded queue (host/recorder.py).
An inference in flight when an interrupt, stop, reset or hold arrives is not waited for: the
stop goes out at once, the `_epoch` moves on, and the late chunk is discarded.

With actor_trigger 'observation' (lock-step: simulation, bag replay) time is the ROS clock and the
planner runs first when due (every planner_every observations, and after a task, start or reset).
Given the same inputs in the same order, the chunks are the same, whatever the machine's speed
(flashrt_ros/tools/replay.py --step relies on it: `inputs_handled` and `idle()` are its ack).
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from flashrt_ros.engines.critic import CriticError, CriticGraph
from flashrt_ros.engines.factory import make_engine
from flashrt_ros.models.config import ModelConfig
from flashrt_ros.models.critic import REFERENCE_CRITIC, load_critic
from flashrt_ros.runtime import MultiRateScheduler, Task, resolve_device

from .inputs import Frame, LatestInputs, Stale, Unsynced
from .joints import JointMap
from .limits import chunk_velocities, rate_limit, sample_trajectory, stop_duration
from .params import ConfigError, HostConfig
from .status import DelayEstimate, Meter, PlainLog, RecentEvent, freeze_heap, thaw_heap


@dataclass(frozen=True)
class TrajectoryOut:
    """What goes to the controller. Point i is at `stamp_ns + times[i]`. No points: hold where
    you are (joint_trajectory_controller's empty trajectory). A stop has a `stop_reason`."""
    stamp_ns: int
    times: np.ndarray          # [N] seconds from the stamp
    positions: np.ndarray      # [N, D] float32, within the joint and velocity limits
    velocities: np.ndarray     # [N, D] float32, consistent with the positions
    stop_reason: str = ""


@dataclass(frozen=True)
class ChunkOut:
    """A chunk as published (ActionChunk): the whole horizon within the joint limits and
    max_velocity from the measured state at its stamp (a function of the observation alone), and
    the part of it still ahead as commanded (also limited from where the arm is when it takes
    over; None when every action was already in the past)."""
    stamp_ns: int              # the observation's stamp
    dt: float
    positions: np.ndarray      # [H, D] float32, ROS units
    velocities: np.ndarray     # [H, D] float32, consistent with positions (from the measured state)
    chunk_seq: int
    episode_id: int
    subtask: str
    subtask_version: int
    inference_time: float      # engine.act wall time, seconds
    ready_ns: int              # when it was ready to publish (ROS clock): ready_ns - stamp_ns is its latency
    trajectory: TrajectoryOut | None
    delay_steps: int = 0       # the inference delay d (control steps) estimated when it was computed


@dataclass(frozen=True)
class ValueReading:
    """One critic reading (flashrt/value): the value of the observation stamped `stamp_ns`."""
    stamp_ns: int
    episode_id: int
    value: float
    episode_time_s: float      # the critic's time input: observation stamp - episode start
    below: int                 # consecutive readings below the threshold, this one included
    threshold: float
    patience: int


@dataclass(frozen=True)
class EpisodeStateOut:
    """A transition of the episode state machine (flashrt/episode_state, latched)."""
    stamp_ns: int
    episode_id: int
    state: str
    end_reason: str = ""       # once the episode ended: operator, critic, timeout, fault, reset, shutdown
    detail: str = ""


# The episode state machine (docs/design/critic.md). "start": the episode began, its first chunk
# not issued yet; "stop_infer": an end was decided, the stop goes out and no chunk after it;
# "record": the recording is closed with the end reason and value trace; "await_reset": the scene is
# being reset (flashrt/reset_done, flashrt/start, or at once with reset_mode 'auto'); "reset": the
# start-up capsule is restored (no recapture), then "start" again.
EPISODE_STATES = ("idle", "start", "running", "stop_infer", "record", "await_reset", "reset")
END_REASONS = ("operator", "critic", "timeout", "fault", "reset", "shutdown")


class Outputs(Protocol):
    def publish_chunk(self, chunk: ChunkOut, ready_ns: int) -> None: ...
    def publish_stop(self, stop: TrajectoryOut) -> None: ...
    def publish_subtask(self, state, stamp_ns: int) -> None: ...
    # optional (a harness may leave them out): publish_value(ValueReading), publish_episode_state(EpisodeStateOut)


class PolicyLoop:
    def __init__(self, config: HostConfig, engine_factory: Callable[..., Any] | None = None):
        self.config = config
        self._engine_factory = engine_factory
        # wired by the host once its nodes exist: a logger, the ROS clock (sim time aware), outputs
        self.log = PlainLog(logging.getLogger("flashrt_host"))
        self.now_ns: Callable[[], int] = time.time_ns
        self.monotonic: Callable[[], float] = time.monotonic     # input ages (timer trigger)
        # why the ROS clock cannot be trusted now (use_sim_time and no /clock yet), or None
        self.clock_problem: Callable[[], str | None] = lambda: None
        self.outputs: Outputs | None = None
        self.recorder = None               # host.recorder.AsyncRecorder, set by the ROS host
        # key -> (topic name, message type) of everything an episode recording holds; set by the host
        self.record_topics: dict[str, tuple[str, type]] = {}
        self.joints = JointMap(config)      # policy <-> ROS joints and units
        self.inputs = LatestInputs([c.name for c in config.cameras], config.camera_sync_slop_s,
                                   config.camera_timeout_s, config.joint_state_timeout_s,
                                   joint_names=self.joints.measured, joint_sources=config.joint_state_topics)
        self.engine = None
        self.scheduler: MultiRateScheduler | None = None
        self.configure_error = ""
        self.active = {"actor": False, "planner": False}
        self._users: set[str] = set()
        self._config_lock = threading.Lock()
        self._lock = threading.RLock()      # episode state; held briefly, never across inference or I/O
        self._engine_lock = threading.RLock()  # the engine: the dispatcher (and tools while it is idle)
        self._pending: deque[Callable[[], None]] = deque()   # control work for the dispatcher, in order
        self._epoch = 0                     # moves on whenever an in-flight chunk must not be issued
        self.dt = config.chunk_dt or 0.05
        self.horizon = config.horizon
        lo, hi = np.asarray(config.joint_lower_limits, np.float32), np.asarray(config.joint_upper_limits, np.float32)
        self._lower, self._upper = lo, hi
        self._vmax = np.asarray(config.max_velocity, np.float32)
        # episode state
        self.episode_id = 0
        self.running = False
        self.interrupted: str | None = None
        self.holding: str | None = None     # why a stop is in force (None: issuing normally)
        self.holding_stale = False
        self._moving = False                # a trajectory of ours may be executing (a stop is due)
        self._sent: TrajectoryOut | None = None   # the last trajectory sent, for where the arm is now
        self._sent_from: np.ndarray | None = None  # the joint state it started from
        self.waiting = ""                   # why no chunk is issued although nothing is wrong
        self.chunk_seq = 0
        self.task_text = config.task
        self._coached_until = -math.inf
        self._last_chunk: tuple[int, float, np.ndarray, np.ndarray] | None = None   # blend's previous chunk
        self.blended: deque[tuple[int, bool]] = deque(maxlen=256)   # (chunk_seq, blended into the previous)
        self.recording_path = ""
        self._run_dir: Path | None = None
        self._by_observation = config.actor_trigger == "observation"
        self._acted_stamp = -1              # stamp of the last observation acted on
        self._acted_version = -1            # subtask version of the last chunk
        self.repeated_observations = 0      # timer cycles skipped: nothing new since the last chunk
        self.unsynced_skips = 0             # cycles skipped: cameras a moment out of sync, inputs fresh
        self._last_synced = -math.inf       # clock() of the last synchronised observation
        self._plan_due = True               # observation trigger: plan at the next observation
        self._since_plan = 0                # observation trigger: observations since the planner ran
        self._planner_every = config.planner_every or max(1, round(config.actor_hz / config.planner_hz))
        self.inputs_handled = 0             # input messages fully handled (lock-step replay waits on it)
        self._handled_lock = threading.Lock()
        # statistics
        self.chunks = Meter()               # published chunks; latency = obs stamp -> ready (ROS time)
        self.delay = DelayEstimate()        # d: obs stamp -> ready in control steps (a high percentile)
        self.rtc_prefixes = 0               # rtc: chunks computed with the previous one as prefix
        self.chunk_latency = self.chunks
        self.inference = Meter()            # engine.act wall time
        self.input_to_act = Meter()         # the observation's last input received -> act() starts
        self.plans = Meter()                # planner runs to the end (latency: wall time of the run)
        self.last_chunk_at = -math.inf      # monotonic time of the last chunk (the watchdog)
        self.issuing_since = -math.inf      # monotonic: since when a chunk is owed (start, resume, a hold)
        self.gc = None                      # host.status.GcMonitor, set by the ROS host
        self.dropped_actions = self.late_chunks = self.rejected_chunks = self.discarded_chunks = 0
        self.late = RecentEvent()           # a chunk whose every action was already in the past
        self.stops_published = self.stale_events = 0
        self.actor_faults = 0
        self.actor_error, self.actor_error_at = "", -math.inf
        self.planner_error = ""
        self.fault_count, self.last_fault = 0, ""
        self.callback_error = RecentEvent()  # an exception caught in a ROS callback
        self.rejected_texts, self.last_rejected_text, self.last_rejected_text_at = 0, "", -math.inf
        # the episode state machine and the critic
        self.episode_state = "idle"
        self.end_reason, self.end_detail = "", ""
        self.ended = {r: 0 for r in END_REASONS}     # episodes ended, by reason
        self._episode_start_ns = 0          # ROS time at the episode's start (the critic's time origin)
        self._episode_start_clock = -math.inf   # clock() at the episode's start (episode_timeout_s)
        self.critic = None                  # engines.critic.CriticGraph when 'critic' is set
        self.values: list[tuple[int, float]] = []   # this episode's critic readings (stamp_ns, value)
        self.value_below = 0                # consecutive readings below value_threshold
        self.last_value: ValueReading | None = None
        self.critic_readings = Meter()      # latency: the critic's replay + copy
        self.critic_faults = 0
        self.critic_error, self.critic_error_at = "", -math.inf
        self._critic_stamp = -1             # the observation the critic last valued
        self._issued_stamp = -1             # the observation of this episode's last issued chunk
        self._critic_every = max(1, round(config.actor_hz / config.critic_hz))
        self._since_critic = 0

    # --- lifecycle ---------------------------------------------------------------------------------
    def configure(self, user: str, dispatch: bool = True) -> None:
        """Load the engine and capture its graphs (once for all users); start the dispatcher with
        the actor and planner disabled (`dispatch=False`: not started; a test drives the cycles).
        Raises on failure (the node's transition then fails)."""
        with self._config_lock:
            self._users.add(user)
            if self.engine is not None:
                return
            try:
                self._load_engine(dispatch)
            except BaseException as exc:
                self._users.discard(user)
                self.configure_error = f"{type(exc).__name__}: {exc}"
                raise
            self.configure_error = ""

    def _load_engine(self, dispatch: bool = True) -> None:
        cfg = self.config
        t0 = time.monotonic()
        if cfg.cpu_threads and resolve_device(cfg.device).type == "cpu":
            # spinning OpenMP workers beside the executor and dispatcher threads starve them
            torch.set_num_threads(cfg.cpu_threads)
        limits = self.joints.policy_limits(cfg.joint_lower_limits, cfg.joint_upper_limits, cfg.max_velocity)
        engine = make_engine(cfg, self._engine_factory, limits=limits)
        for note in getattr(engine, "notes", ()):
            (self.log.warning if "refused" in note else self.log.info)(note)
        mc = engine.config
        if len(cfg.cameras) != mc.n_cameras:
            raise ConfigError(f"parameter 'cameras' lists {len(cfg.cameras)} camera(s) "
                              f"{[c.name for c in cfg.cameras]}, the model takes {mc.n_cameras}")
        if len(cfg.joint_names) != mc.action_dim:
            raise ConfigError(f"parameter 'joint_names' lists {len(cfg.joint_names)} joints, "
                              f"the model's actions have {mc.action_dim}")
        if len(cfg.state_joints) != mc.state_dim:
            raise ConfigError(f"the policy's state has {mc.state_dim} values, but "
                              + (f"parameter 'state_joints' lists {len(cfg.state_joints)} joints"
                                 if cfg.sources.get("state_joints", "default") != "default" else
                                 f"'joint_names' (the state, as 'state_joints' is not set) lists "
                                 f"{len(cfg.joint_names)}: set 'state_joints'"))
        if cfg.horizon > mc.horizon:
            raise ConfigError(f"parameter 'horizon' = {cfg.horizon} is not allowed: the model's chunks have "
                              f"{mc.horizon} actions (use 0..{mc.horizon}; 0 = all)")
        task = self.task_text or cfg.task
        if task:
            try:
                self._set_engine_task(engine, task)
            except ValueError as err:
                raise ConfigError(f"parameter 'task' = {task!r}: {err}") from None
        self.task_text = task
        self.horizon = cfg.horizon or mc.horizon
        self.dt = cfg.chunk_dt or mc.chunk_dt
        self._check_advantage(engine)
        self.critic = self._load_critic(engine) if cfg.critic else None
        self.engine = engine
        period_a, period_p = 1.0 / cfg.actor_hz, 1.0 / cfg.planner_hz
        critic_task = [] if self.critic is None else [
            Task("critic", [self._critic_cycle], period=None if self._by_observation else 1.0 / cfg.critic_hz,
                 deadline=1.0 / cfg.critic_hz, enabled=False)]
        self.scheduler = MultiRateScheduler([
            # task, coaching and reset requests, applied in order before the next cycle
            Task("control", [self._run_pending], period=None, deadline=1e-3),
            Task("actor", [self._actor_cycle], period=None if self._by_observation else period_a,
                 deadline=period_a, enabled=False),
            Task("planner", self._planner_pieces(engine), period=None if self._by_observation else period_p,
                 deadline=period_p, enabled=False),
            *critic_task,
        ], on_error=self._on_task_error)
        if cfg.gc_freeze:
            frozen, before_s, after_s = freeze_heap()
            self.log.info(f"start-up heap frozen: {frozen} objects out of the garbage collector's scans; a full "
                          f"collection {before_s * 1e3:.1f} ms before, {after_s * 1e3:.1f} ms after (gc_freeze)")
        else:
            frozen = 0
        if self.gc is not None:
            self.gc.serving(frozen)
        if dispatch:
            self.scheduler.start()
        self.log.info(f"engine ready in {time.monotonic() - t0:.2f} s: preset {mc.name!r} on {engine.device} "
                      f"({cfg.dtype}), "
                      f"{mc.n_cameras} camera(s) {mc.image_size}px, horizon {self.horizon} x dt {self.dt:g} s, "
                      f"actor {cfg.actor_hz:g} Hz, planner {cfg.planner_hz:g} Hz in {len(engine.planner_graphs)} piece(s)")

    def _load_critic(self, engine):
        """The critic graph beside the actor, over the engine's buffers (configure; raises)."""
        cfg = self.config
        path = REFERENCE_CRITIC if cfg.critic == "reference" else Path(cfg.critic).expanduser()
        critic = load_critic(path)
        mismatch = critic.config.mismatch(engine.config) if isinstance(engine.config, ModelConfig) else []
        if mismatch:
            raise ConfigError(f"parameter 'critic' = {cfg.critic!r}: the critic does not fit the policy: "
                              + "; ".join(mismatch))
        try:
            graph = CriticGraph(engine, critic)
        except CriticError as err:
            raise ConfigError(f"parameter 'critic' = {cfg.critic!r}: {err}") from None
        self.log.info(f"critic {critic.config.name!r} from {path} at {cfg.critic_hz:g} Hz: ends the episode when "
                      f"its value is < {cfg.value_threshold:g} for {cfg.value_patience} readings")
        return graph

    def _check_advantage(self, engine) -> None:
        """RECAP-style advantage conditioning: a checkpoint that takes an advantage input gets the
        configured constant; one that does not refuses a number (docs/design/critic.md)."""
        takes = bool(getattr(engine, "takes_advantage", False))
        value = self.config.advantage.strip()
        if takes and not value:
            raise ConfigError("this actor checkpoint takes an advantage input (RECAP-style advantage "
                              "conditioning): set parameter 'advantage' (the constant fed at run time)")
        if value and not takes:
            raise ConfigError(f"parameter 'advantage' = {value!r}: this actor checkpoint takes no advantage "
                              f"input; leave 'advantage' empty")
        if takes:
            engine.set_advantage(float(value))

    def cleanup(self, user: str) -> None:
        """The last user to clean up stops the dispatcher and drops the engine."""
        with self._config_lock:
            self._users.discard(user)
            if self._users or self.engine is None:
                return
            self.stop(reason="cleanup", kind="shutdown")
            if self.scheduler is not None:
                self.scheduler.stop()
            self.scheduler = None
            self.engine = None
            if self.config.gc_freeze:
                thaw_heap()

    def set_active(self, role: str, active: bool) -> None:
        """Activate or deactivate the actor or planner. Deactivating the actor stops issuing chunks
        at once (a chunk in flight is discarded) and publishes a stop; the episode is kept."""
        with self._lock:
            if role == "actor" and not active:
                if self._issuing():
                    self._publish_stop("actor deactivated")
                self._invalidate()
            self.active[role] = active
            if self.scheduler is not None:
                self.scheduler.set_enabled(role, active)
                if role == "actor" and "critic" in self.scheduler.tasks:
                    self.scheduler.set_enabled("critic", active)
            if role == "actor" and active:
                self.holding, self.holding_stale = None, False
                self.issuing_since = time.monotonic()

    def shutdown(self) -> None:
        """Stop the episode (a stop is published, the recording closed) and the dispatcher."""
        self.stop(reason="shutdown", kind="shutdown")
        with self._config_lock:
            if self.scheduler is not None:
                try:
                    self.scheduler.stop()
                except RuntimeError as err:
                    self.log.error(str(err))
            self.scheduler = None

    def readiness(self) -> tuple[bool, str]:
        if self.configure_error:
            return False, f"not ready: configure failed: {self.configure_error}"
        if self.engine is None:
            if self._users:
                return False, "not ready: configuring (loading the models, capturing the graphs)"
            return False, "not ready: not configured (models not loaded)"
        inactive = [r for r, a in self.active.items() if not a]
        if inactive:
            return False, f"not ready: {' and '.join(inactive)} inactive"
        state = (f"episode {self.episode_id} interrupted ({self.interrupted})" if self.running and self.interrupted
                 else f"episode {self.episode_id} running" if self.running
                 else f"episode {self.episode_id} ended ({self.end_reason}), awaiting flashrt/reset_done"
                 if self.episode_state == "await_reset" else "no episode running")
        return True, f"ready: {state}"

    def scheduler_summary(self) -> dict:
        s = self.scheduler
        return s.summary() if s is not None else {}

    def idle(self) -> bool:
        """Nothing pending on the dispatcher: every input and request so far has been acted on."""
        s = self.scheduler
        return not self._pending and (s is None or s.idle())

    # --- episode control (services, topics: short, never wait on an inference) --------------------
    def start(self) -> tuple[bool, str]:
        """Start an episode, resume one after an interrupt, or (after an end) confirm the reset and
        start the next one."""
        ready, why = self.readiness()
        if not ready:
            return False, why
        with self._lock:
            if self.episode_state == "await_reset":
                self._restart("start requested")
                message = f"episode {self.episode_id} started (engine reset to its start-up state)"
            elif self.running and self.interrupted is None:
                return True, f"episode {self.episode_id} already running"
            elif self.running:
                self.log.info(f"resuming episode {self.episode_id} after interrupt ({self.interrupted})")
                self.interrupted = None
                self.holding, self.holding_stale = None, False
                self._invalidate()
                message = f"episode {self.episode_id} resumed"
            else:
                self._begin_episode()
                message = f"episode {self.episode_id} started"
        self._wake_cycles()
        return True, message

    def stop(self, reason: str = "stop service", kind: str = "operator") -> tuple[bool, str]:
        """End the episode (end reason `kind`): no more chunks, a stop is published, the recording
        is closed; then await the reset."""
        with self._lock:
            if not self.running:
                return True, "no episode running"
            episode = self.episode_id
            self._end(kind, reason)
        return True, f"episode {episode} stopped"

    def reset_done(self) -> tuple[bool, str]:
        """The scene was reset (flashrt/reset_done): restore the start-up capsule (no recapture) and
        start the next episode."""
        ready, why = self.readiness()
        if not ready:
            return False, why
        with self._lock:
            if self.episode_state != "await_reset":
                return False, (f"not waiting for a reset: episode {self.episode_id} is {self.episode_state}"
                               + (f" ({self.interrupted})" if self.interrupted else ""))
            self._restart("reset confirmed")
            episode = self.episode_id
        self._wake_cycles()
        return True, f"episode {episode} started"

    def interrupt(self, reason: str) -> None:
        """Stop now (a chunk in flight is discarded), publish a stop, wait for start()."""
        with self._lock:
            if not self.running:
                self.log.warning(f"interrupt ({reason!r}) with no episode running: nothing to stop")
                return
            self.interrupted = reason or "interrupt"
            if self.active["actor"]:
                self._publish_stop(f"interrupted: {self.interrupted}")
            self._invalidate()
        self.log.warning(f"interrupted ({self.interrupted}): no chunks until /flashrt/start")

    def reset(self) -> tuple[bool, str]:
        """Restore the engine's initial capsule (no recapture) and begin a new episode if one was
        running (it ends with reason 'reset', its recording is closed, a new one opened; an
        interrupt is cleared). A stop goes out at once; the engine is reset on the dispatcher before its
        next cycle. Not running (idle, or awaiting a reset): the engine is restored, no episode
        starts (state 'idle')."""
        if self.engine is None:
            return False, "not configured"
        with self._lock:
            was_running = self.running
            if was_running:
                self._end("reset", "reset service", then_auto=False)
            self._invalidate()
            self._coached_until = -math.inf
            self._acted_stamp = -1
            self.task_text = self.config.task
            self.holding, self.holding_stale, self.waiting = None, False, ""
            self._set_state("reset", self.end_reason if was_running else "", self.end_detail if was_running else "")
            self._submit(self._reset_engine)
            if was_running:
                self._begin_episode()
            else:
                self._set_state("idle")
            episode = self.episode_id
        self._release_planner()
        self.log.info(f"reset: initial state restored (no recapture); episode {episode}"
                      f"{' running' if self.running else ''}")
        return True, f"reset to the initial state; episode {episode}" + (" running" if self.running else "")

    def _reset_engine(self, task: str | None = None) -> None:
        self.engine.reset()
        task = self.config.task if task is None else task
        if task:
            self._set_engine_task(self.engine, task)

    def _begin_episode(self) -> None:
        self.delay.restart()
        self.episode_id += 1
        self._acted_stamp = -1
        self.running = True
        self.interrupted = None
        self.holding, self.holding_stale, self.waiting = None, False, ""
        self.end_reason, self.end_detail = "", ""
        self._episode_start_ns, self._episode_start_clock = self.now_ns(), self.clock()
        self.values, self.value_below, self.last_value = [], 0, None
        self._critic_stamp = self._issued_stamp = -1
        self._since_critic = 0
        self._invalidate()
        self._open_recording()
        self._set_state("start")
        self.log.info(f"episode {self.episode_id} started")

    def _end(self, kind: str, detail: str = "", then_auto: bool = True) -> None:
        """End the running episode (caller holds _lock): stop_infer (a stop goes out, nothing is
        issued after it), record (the recording is closed with the end reason and the value trace),
        await_reset; with reset_mode 'auto' (and not an operator's stop) the next episode starts at
        once."""
        if not self.running:
            return
        self.end_reason, self.end_detail = kind, detail
        self.ended[kind] = self.ended.get(kind, 0) + 1
        self._set_state("stop_infer", kind, detail)
        if self._issuing():
            self._publish_stop(f"episode ended ({kind}{': ' + detail if detail else ''})")
        self._invalidate()
        self.running = False
        self.interrupted = None
        episode = self.episode_id
        self._set_state("record", kind, detail)
        self._close_recording()
        self._set_state("await_reset", kind, detail)
        message = f"episode {episode} ended: {kind}{' (' + detail + ')' if detail else ''}"
        if kind in ("operator", "reset", "shutdown"):   # rclpy: one severity per call site
            self.log.info(message)
        else:
            self.log.warning(message)
        if then_auto and self.config.reset_mode == "auto" and kind not in ("operator", "reset", "shutdown"):
            self._restart("reset_mode auto")
            self._wake_cycles()

    def _restart(self, why: str) -> None:
        """await_reset -> reset -> start (caller holds _lock): the engine's start-up capsule is
        restored on the dispatcher before its next cycle (no recapture) and the task re-applied."""
        self._set_state("reset", self.end_reason, why)
        self._invalidate()
        self._coached_until = -math.inf
        self._acted_stamp = -1
        self.holding, self.holding_stale, self.waiting = None, False, ""
        task = self.task_text
        self._submit(lambda: self._reset_engine(task))
        self._begin_episode()

    def _wake_cycles(self) -> None:
        self._release_planner()
        if not self._by_observation and self.scheduler is not None:   # observation trigger: the next observation acts
            self.scheduler.trigger("actor")

    def announce_state(self) -> None:
        """Publish the current episode state (the host does once its outputs exist: latched)."""
        with self._lock:
            self._set_state(self.episode_state, self.end_reason, self.end_detail)

    def _set_state(self, state: str, end_reason: str = "", detail: str = "") -> None:
        """A transition of the episode state machine: published (latched) and logged (caller holds _lock)."""
        self.episode_state = state
        publish = getattr(self.outputs, "publish_episode_state", None)
        if publish is not None:
            publish(EpisodeStateOut(self.now_ns(), self.episode_id, state, end_reason, detail))

    def _invalidate(self) -> None:
        """A chunk computed before now must not be issued, nor blended into (caller holds _lock)."""
        self._epoch += 1
        self._last_chunk = None
        self.issuing_since = time.monotonic()

    def _issuing(self) -> bool:
        return self.running and self.interrupted is None and self.active["actor"] and self.engine is not None

    # --- task and coaching (validated by the node; applied on the dispatcher) -----------------------
    def set_task(self, text: str) -> tuple[bool, str]:
        if self.engine is None:
            self.task_text = text   # applied at configure
            return True, "task stored; applied when configured"
        self.record_text("task", text)

        def apply():
            try:
                self._set_engine_task(self.engine, text)
            except ValueError as err:
                self.reject_text(f"task refused: {err}")
                return
            self.task_text = text
            self._coached_until = -math.inf   # a new task hands control back to the planner
            self.log.info(f"task: {text!r}")
            self._release_planner()
        self._submit(apply)
        return True, "task queued"

    def _set_engine_task(self, engine, text: str) -> None:
        """Engines without a planner (LeRobot policies) make the task the subtask: publish it."""
        before = engine.subtask.version
        engine.set_task(text)
        if engine.subtask.version != before:
            self._publish_subtask(engine.subtask)

    def coach(self, text: str, source: str = "coach") -> tuple[bool, str]:
        """The text becomes the subtask before the next chunk (the shared buffer, no recapture)."""
        if self.engine is None:
            return self.reject_text(f"coaching {text!r} refused: not configured")
        self.record_text("coach", text)

        def apply():
            try:
                state = self.engine.coach(text, source=source)
            except ValueError as err:
                self.reject_text(f"coaching refused: {err}")
                return
            hold = self.config.coach_hold_s
            self._coached_until = self.clock() + hold if hold > 0 else math.inf
            self._publish_subtask(state)
            self.log.info(f"coached: subtask {state.text!r} (v{state.version}); planner resumes "
                          + (f"in {hold:g} s" if hold > 0 else "at the next task"))
        self._submit(apply)
        return True, "coaching queued"

    def reject_text(self, message: str) -> tuple[bool, str]:
        self.rejected_texts += 1
        self.last_rejected_text, self.last_rejected_text_at = message, time.monotonic()
        self.log.warning(message)
        return False, message

    @property
    def coached(self) -> bool:
        return self.clock() < self._coached_until

    def clock(self) -> float:
        """Seconds, for input ages and coaching holds: the ROS clock with the observation trigger
        (sim time when replaying, so results do not depend on machine speed), else monotonic."""
        return self.now_ns() / 1e9 if self._by_observation else self.monotonic()

    def _release_planner(self) -> None:
        """Run the planner soon: at the next observation (observation trigger) or now (timer)."""
        if self._by_observation:
            self._plan_due = True
        elif self.scheduler is not None:
            self.scheduler.trigger("planner")

    # --- the dispatcher: control work, planner pieces, the actor cycle -----------------------------
    def _submit(self, work: Callable[[], None]) -> None:
        self._pending.append(work)
        if self.scheduler is not None:
            self.scheduler.trigger("control")

    def _run_pending(self) -> None:
        while self._pending:
            work = self._pending.popleft()
            with self._engine_lock:
                work()

    def _planner_pieces(self, engine) -> list[Callable[[], None]]:
        pieces = engine.planner_pieces(self._planner_images, self._on_plan, lambda: not self.coached)

        def locked(piece):
            def run():
                self._run_pending()
                with self._engine_lock:
                    piece()
            return run
        return [locked(p) for p in pieces]

    def _planner_images(self):
        # The loop's own task, not the engine's: after a reset the engine's task buffer is zeroed.
        if not (self.running and self.interrupted is None and self.task_text):
            return None
        obs = self.inputs.observation(self.clock(), need_joints=False)
        return None if isinstance(obs, Stale) else (obs.images, obs.encodings)

    def _on_plan(self, state) -> None:
        """The planner ran to the end (state: the new subtask, None when unchanged or held off)."""
        if self.planner_error:
            self.log.info("planner recovered")
            self.planner_error = ""
        if state is not None:
            self.log.info(f"planner: subtask {state.text!r} (v{state.version})")
            self._publish_subtask(state)

    def _on_task_error(self, name: str, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}"
        self._fault(name, message)
        if name == "critic":
            self.critic_faults += 1
            self.critic_error, self.critic_error_at = message, time.monotonic()
            self.log.error(f"critic fault, the actor goes on (no critic ends until it recovers): {message}\n"
                           + "".join(traceback.format_exception(exc)).rstrip(), throttle_duration_sec=5.0)
        elif name == "planner":
            self.planner_error = message
            self.log.error(f"planner fault, the actor keeps the last good subtask: {message}\n"
                           + "".join(traceback.format_exception(exc)).rstrip())
        else:
            self.log.error(f"{name} fault: {message}\n" + "".join(traceback.format_exception(exc)).rstrip())
            with self._lock:
                self._actor_fault(message)

    def step(self) -> None:
        """One actor cycle now, in the caller's thread: for a simulation that drives the loop on
        its own clock without the dispatcher (configure(dispatch=False)); flashrt-ros evaluate."""
        self._actor_cycle()

    def critic_step(self) -> None:
        """One critic reading now, in the caller's thread (configure(dispatch=False), evaluate); a
        fault is handled as the dispatcher would (the critic's, never the actor's)."""
        self._guarded_critic()

    def _actor_cycle(self) -> None:
        self._run_pending()
        with self._lock:
            if not self._issuing():
                return
            timeout = self.config.episode_timeout_s
            if timeout > 0 and self.clock() - self._episode_start_clock >= timeout:
                self._end("timeout", f"running for {timeout:g} s")
                return
            problem = self.clock_problem()
            if problem is not None:
                self._hold(problem, stale=True)
                return
            now = self.clock()
            obs = self.inputs.observation(now)
            if isinstance(obs, Unsynced) and now - self._last_synced <= self.config.camera_timeout_s:
                self.unsynced_skips += 1    # a moment's mismatch: the running trajectory goes on
                return
            if isinstance(obs, Stale):
                self._hold(obs.reason, stale=True)
                return
            self._last_synced = now
            if self._by_observation and not self.inputs.complete_after(self._acted_stamp):
                return              # wait for the rest of this observation (or the next one)
            epoch = self._epoch
        if self._by_observation:
            self._plan_in_cycle(obs)
        engine = self.engine
        if (not self._by_observation and obs.stamp_ns == self._acted_stamp
                and engine.subtask.version == self._acted_version):
            # Timer faster than the cameras: the last chunk already answers this observation
            # and subtask; a new one would only re-draw the noise (jitter, wasted GPU time).
            self.repeated_observations += 1
            return
        if engine.subtask.version == 0:
            self.waiting = (f"waiting for a task on {self.task_topic}" if not self.task_text
                            else "waiting for the planner's first subtask")
            return
        self.waiting = ""
        self._acted_stamp = obs.stamp_ns
        self._acted_version = engine.subtask.version
        self.chunk_seq += 1
        try:
            jm = self.joints
            origin = {} if jm.state_joints == jm.action_joints else {
                "action_origin": jm.actions_to_policy(jm.commanded(obs.joint_positions))}
            delay_steps = self.delay.steps(self.dt, self.horizon)
            if self.config.overlap_policy == "rtc":
                with self._lock:
                    prefix = self._rtc_prefix(obs.stamp_ns)
                if prefix is not None:
                    self.rtc_prefixes += 1
                origin.update(prefix=prefix, delay=delay_steps)
            waited = self.clock() - obs.received
            with self._engine_lock:
                result = engine.act(obs.images, obs.encodings, jm.state(obs.joint_positions), self.chunk_seq,
                                    **origin)
        except Exception as exc:
            with self._lock:
                self._actor_fault(f"{type(exc).__name__}: {exc}")
            return
        with self._lock:
            if epoch != self._epoch or not self._issuing():
                self.discarded_chunks += 1      # an interrupt, stop, reset or hold came meanwhile
                return
            if result.nonfinite:
                self.rejected_chunks += 1
                self._actor_fault("the model produced NaN/inf: chunk rejected")
                return
            self._issue(result, obs, delay_steps)
            if math.isfinite(waited):
                self.input_to_act.add(waited)
        if self._by_observation and self.critic is not None:
            self._since_critic += 1
            if self._since_critic >= self._critic_every:
                self._since_critic = 0
                self._guarded_critic()

    # --- the critic ---------------------------------------------------------------------------------
    def _guarded_critic(self) -> None:
        """The critic in the actor's cycle (observation trigger, evaluate): a fault is the critic's."""
        try:
            self._critic_cycle()
        except Exception as exc:
            self._on_task_error("critic", exc)

    def _critic_cycle(self) -> None:
        """One critic reading of the observation the actor last issued a chunk for (once per
        observation); `value_patience` readings below `value_threshold` in a row end the episode.
        Its faults are its own (scheduler on_error -> _on_task_error): the actor never stops."""
        self._run_pending()
        with self._lock:
            stamp = self._issued_stamp
            if not self._issuing() or self.critic is None or stamp < 0 or stamp == self._critic_stamp:
                return
            self._critic_stamp = stamp
            episode = self.episode_id
            episode_time = max(0.0, (stamp - self._episode_start_ns) / 1e9)
        with self._engine_lock:
            value = self.critic.evaluate(episode_time)
        self.critic_readings.add(self.critic.last_latency_s)
        with self._lock:
            if episode != self.episode_id or not self.running:
                return
            if self.critic_error:
                self.log.info("critic recovered")
                self.critic_error = ""
            cfg = self.config
            self.value_below = self.value_below + 1 if value < cfg.value_threshold else 0
            reading = ValueReading(stamp, episode, value, episode_time, self.value_below, cfg.value_threshold,
                                   cfg.value_patience)
            self.values.append((stamp, value))
            self.last_value = reading
            publish = getattr(self.outputs, "publish_value", None)
            if publish is not None:
                publish(reading)
            if self.value_below >= cfg.value_patience and self.interrupted is None:
                self._end("critic", f"value {value:.3f} < {cfg.value_threshold:g} for {self.value_below} readings")

    def _plan_in_cycle(self, obs) -> None:
        """Observation trigger: the planner runs here, on the observation's images, before the
        actor, when due: on the first observation after a task, start or reset, then every
        planner_every observations."""
        due = self._plan_due or self._since_plan >= self._planner_every
        if due and self.task_text and self.active["planner"]:
            self._plan_due, self._since_plan = False, 0
            t0 = time.monotonic()
            try:
                with self._engine_lock:
                    state = self.engine.plan(obs.images, obs.encodings, allow_commit=not self.coached)
            except Exception as exc:            # the actor keeps the last good subtask
                self._on_task_error("planner", exc)
            else:
                self.plans.add(time.monotonic() - t0)
                self._on_plan(state)
        self._since_plan += 1

    # --- issuing (caller holds _lock) --------------------------------------------------------------
    def _issue(self, result, obs, delay_steps: int) -> None:
        ready_ns = self.now_ns()
        q0 = self.joints.commanded(obs.joint_positions)       # ROS units from here on
        positions = self.joints.actions_to_ros(result.positions[: self.horizon])
        if self.config.overlap_policy == "blend":
            self.blended.append((self.chunk_seq, self._last_chunk is not None))
            positions, _ = self._blend(obs.stamp_ns, ready_ns, positions,
                                       self.joints.velocities_to_ros(result.velocities[: self.horizon]))
        # limits last, so that nothing (blend included) can take a point past them. The chunk (as
        # published in ActionChunk, a function of the observation alone) is limited from the
        # measured state at its stamp; what is commanded is limited from where the arm is when
        # this trajectory replaces the last one: from the chunk as limited from the measured
        # state, or, with rtc, from the chunk itself: it continues the command being executed, and
        # limiting it from the measured state too would drag it back by the arm's tracking lag,
        # a jump the model did not make.
        limited = rate_limit(q0, positions, self.dt, self._vmax, self._lower, self._upper)
        times = self.dt * np.arange(1, len(limited) + 1)
        ahead = obs.stamp_ns + np.round(times * 1e9).astype(np.int64) > ready_ns
        commanded = limited.copy()
        if ahead.any():
            k = int(np.argmax(ahead))
            first_dt = (obs.stamp_ns - ready_ns) / 1e9 + times[k]
            source = positions if self.config.overlap_policy == "rtc" else limited
            commanded[k:] = rate_limit(self._arm_at(ready_ns, q0), source[k:], self.dt, self._vmax,
                                       self._lower, self._upper, first_dt=first_dt)
        velocities = chunk_velocities(q0, commanded, self.dt, self._vmax).astype(np.float32)
        if not (np.all(np.isfinite(commanded)) and np.all(np.isfinite(velocities))):
            self.rejected_chunks += 1
            self._actor_fault("chunk positions or velocities are not finite: chunk rejected")
            return
        dropped = int(np.count_nonzero(~ahead))
        trajectory = None
        if ahead.any():
            trajectory = TrajectoryOut(obs.stamp_ns, times[ahead], commanded[ahead], velocities[ahead])
        chunk = ChunkOut(obs.stamp_ns, self.dt, limited, chunk_velocities(q0, limited, self.dt, self._vmax),
                         self.chunk_seq, self.episode_id, result.subtask_text, result.subtask_version,
                         result.latency_s, ready_ns, trajectory, delay_steps)
        if self.holding is not None:
            self.log.info(f"inputs fresh again: resuming chunks (was holding: {self.holding})")
            self.holding, self.holding_stale = None, False
        self.dropped_actions += dropped
        self.outputs.publish_chunk(chunk, ready_ns)
        if trajectory is None:
            self.late_chunks += 1
            message = (f"chunk {self.chunk_seq}: every action was already in the past "
                       f"({(ready_ns - obs.stamp_ns) / 1e9:.3f} s after the observation's stamp): not sent")
            self.late.note(message)
            self.log.warning(message, throttle_duration_sec=1.0)
        else:
            self._sent, self._sent_from = trajectory, q0
            self._moving = True
        self._last_chunk = (obs.stamp_ns, self.dt, commanded, velocities)
        self._issued_stamp = obs.stamp_ns
        if self.episode_state == "start":
            self._set_state("running")
        self.inference.add(result.latency_s)
        self.chunks.add((ready_ns - obs.stamp_ns) / 1e9)
        self.delay.add((ready_ns - obs.stamp_ns) / 1e9)
        self.last_chunk_at = time.monotonic()

    def _rtc_prefix(self, stamp_ns: int) -> np.ndarray | None:
        """rtc: the trajectory being executed (ours, not forgotten by an invalidation), sampled at
        the new chunk's row times stamp + (i + 1) dt while it lasts, in policy units [P, A]; None
        when there is none (caller holds _lock)."""
        sent = self._sent
        if self._last_chunk is None or sent is None or sent.stop_reason or not self._moving or not len(sent.times):
            return None
        start = (self._sent_from, np.zeros_like(self._sent_from))
        rows = []
        for i in range(self.horizon):
            t = (stamp_ns - sent.stamp_ns) / 1e9 + (i + 1) * self.dt
            if t > sent.times[-1] + 1e-9:
                break
            rows.append(sample_trajectory(t, sent.times, sent.positions, sent.velocities, start)[0])
        return self.joints.actions_to_policy(np.asarray(rows)) if rows else None

    def command_at(self, t_ns: int, period_s: float) -> np.ndarray | None:
        """For forward_command groups, streamed every `period_s`: where the trajectory last sent
        (a chunk's or a stop's) has the commanded joints at t_ns, ROS units; None when there is
        none, or it ended more than a period ago (the controller keeps its last command)."""
        with self._lock:
            sent, start = self._sent, self._sent_from
        if sent is None or start is None or len(sent.times) == 0:
            return None
        t = (t_ns - sent.stamp_ns) / 1e9
        if t > sent.times[-1] + period_s:
            return None
        # the cubic between two points within the limits can pass beyond them (a point at a limit
        # with a velocity toward it): what leaves the node is clamped
        position = sample_trajectory(t, sent.times, sent.positions, sent.velocities, (start, np.zeros_like(start)))[0]
        return np.clip(position, self._lower, self._upper).astype(np.float32)

    def _arm_at(self, t_ns: int, measured: np.ndarray) -> np.ndarray:
        """Where the arm is at t_ns: on our last trajectory if one is executing, else measured."""
        sent = self._sent
        if sent is None or sent.stop_reason or not self._moving:
            return measured
        start = (self._sent_from, np.zeros_like(measured))
        return sample_trajectory((t_ns - sent.stamp_ns) / 1e9, sent.times, sent.positions, sent.velocities,
                                 start)[0].astype(np.float32)

    def _blend(self, stamp_ns: int, ready_ns: int, positions: np.ndarray, velocities: np.ndarray):
        """Cross-fade from the previous chunk over the first `blend_steps` actions still ahead."""
        if self._last_chunk is None:
            return positions, velocities
        p_stamp, p_dt, p_pos, p_vel = self._last_chunk
        p_times = p_stamp / 1e9 + p_dt * np.arange(1, len(p_pos) + 1)
        times = stamp_ns / 1e9 + self.dt * np.arange(1, len(positions) + 1)
        ahead = np.nonzero(times > ready_ns / 1e9)[0][: self.config.blend_steps]
        positions, velocities = positions.copy(), velocities.copy()
        n = self.config.blend_steps
        for k, i in enumerate(ahead):
            if times[i] < p_times[0]:
                continue
            w = (k + 1) / (n + 1)
            prev_p = np.array([np.interp(times[i], p_times, p_pos[:, j]) for j in range(p_pos.shape[1])])
            prev_v = np.array([np.interp(times[i], p_times, p_vel[:, j]) for j in range(p_vel.shape[1])])
            positions[i] = (1 - w) * prev_p + w * positions[i]
            velocities[i] = (1 - w) * prev_v + w * velocities[i]
        return positions.astype(np.float32), velocities.astype(np.float32)

    # --- holding and stopping (caller holds _lock) -------------------------------------------------
    def _hold(self, reason: str, stale: bool = False) -> None:
        """Stop issuing until the cause clears. The stop is published once, on the transition, and
        only when a trajectory of ours may still be running (not before the first chunk)."""
        if self.holding is None:
            if stale:
                self.stale_events += 1
            if self._moving:
                self._publish_stop(reason)
                self.log.warning(f"holding: {reason}")
            else:
                self.log.info(f"waiting: {reason}")
        self._invalidate()
        self.holding, self.holding_stale = reason, stale

    def stop_trajectory(self, reason: str) -> TrajectoryOut:
        """The stop for now. Without fresh, valid joint states: no points (the controller holds
        where the arm is). With them: one point at the measured position, zero velocity, reached
        no faster than max_velocity allows from where our last trajectory has the arm now."""
        now_ns = self.now_ns()
        empty = np.zeros((0, len(self.config.joint_names)), np.float32)
        joints = self.inputs.joints()
        if joints is None or self.clock() - joints.received > self.config.joint_state_timeout_s:
            return TrajectoryOut(now_ns, np.zeros(0), empty, empty, reason)
        target = self.joints.commanded(joints.positions).astype(np.float64)
        current, velocity = target, np.zeros_like(target)
        sent = self._sent
        if sent is not None and not sent.stop_reason and self._moving:
            t = (now_ns - sent.stamp_ns) / 1e9
            start = (self._sent_from, np.zeros_like(target))
            current, velocity = sample_trajectory(t, sent.times, sent.positions, sent.velocities, start)
        reach = stop_duration(current, velocity, target, self._vmax, minimum=self.dt)
        zero = np.zeros((1, len(target)), np.float32)
        return TrajectoryOut(now_ns, np.array([reach]), target[None].astype(np.float32), zero, reason)

    def _publish_stop(self, reason: str) -> None:
        if self.outputs is None or not self.active["actor"]:
            return   # an inactive actor issues nothing, a stop included (its deactivation sent one)
        stop = self.stop_trajectory(reason)
        if len(stop.times):     # where the stop starts from: where our last trajectory has the arm now
            self._sent_from = self._arm_at(stop.stamp_ns, stop.positions[0])
        self.outputs.publish_stop(stop)
        self._sent = stop
        self._moving = False
        self.stops_published += 1
        self.holding = self.holding or reason

    def _actor_fault(self, message: str) -> None:
        self.actor_faults += 1
        self.actor_error, self.actor_error_at = message, time.monotonic()
        self._fault("actor", message)
        self.log.error(f"actor: {message}", throttle_duration_sec=1.0)
        if self.config.end_on_fault and self.running:
            self._end("fault", message)
            return
        self._hold(f"actor fault: {message}")

    def _fault(self, source: str, message: str) -> None:
        self.fault_count += 1
        self.last_fault = f"{source}: {message}"

    def callback_fault(self, where: str, exc: BaseException) -> None:
        """An exception escaped a ROS callback: logged with its traceback, ERROR on /diagnostics,
        and the host holds (a stop goes out); the next good chunk resumes. The process lives on."""
        message = f"{where}: {type(exc).__name__}: {exc}"
        self.callback_error.note(message)
        self._fault("callback", message)
        self.log.error(f"exception in {where} (the host holds and keeps serving):\n"
                       + "".join(traceback.format_exception(exc)).rstrip())
        with self._lock:
            if self._issuing():
                self._hold(f"fault in {where}")

    # --- inputs (executor threads: check and store, never wait) ------------------------------------
    def put_frame(self, camera: str, image: np.ndarray, encoding: str, stamp_ns: int, received: float) -> None:
        """A converted image: its stamp checked against the host clock, stored, and with the
        observation trigger the dispatcher woken. `received`: DDS arrival, on `clock()`."""
        if self._skewed(f"camera {camera!r}", camera, stamp_ns):
            return
        self.inputs.put_frame(camera, Frame(image, encoding, stamp_ns, received))
        self._observation_input()

    def put_joints(self, values: dict[str, float], stamp_ns: int, received: float,
                   source: str = "joint_states", names=()) -> None:
        """Valid positions (ROS units) of some of the joints the host measures, by name, from one
        of joint_state_topics (`source`); `names`: all the message named (diagnostics)."""
        if self._skewed(f"joint states from {source}", source, stamp_ns):
            return
        self.inputs.put_joints(values, stamp_ns, received, source, names)
        self._observation_input()

    def _skewed(self, what: str, source: str, stamp_ns: int) -> bool:
        offset = (self.now_ns() - stamp_ns) / 1e9
        bound = self.config.max_stamp_skew_s
        if abs(offset) <= bound:
            return False
        side = "behind" if offset > 0 else "ahead of"
        cause = self.clock_problem() or "are the clocks synchronised (chrony/PTP)?"
        self.reject_input(source, f"{what}: stamp {abs(offset):.3f} s {side} the host clock "
                                  f"(max_stamp_skew_s {bound:g}): {cause}")
        return True

    @property
    def task_topic(self) -> str:
        return self.record_topics.get("task", ("/flashrt/task", None))[0]

    def _observation_input(self) -> None:
        if self._by_observation and self.scheduler is not None:
            self.scheduler.trigger("actor")

    def input_handled(self) -> None:
        """An input callback is done (the input stored or refused; with the observation trigger
        the cycle it may cause is pending on the dispatcher: see idle())."""
        with self._handled_lock:
            self.inputs_handled += 1

    def reject_input(self, source: str, error: str) -> None:
        self.inputs.reject(source, error, time.monotonic())
        self.log.warning(f"rejected {source} message: {error}", throttle_duration_sec=1.0)

    # --- outputs and recording ---------------------------------------------------------------------
    def _publish_subtask(self, state) -> None:
        if self.outputs is not None:
            self.outputs.publish_subtask(state, self.now_ns())

    def record(self, key: str, msg, stamp_ns: int | None = None) -> None:
        """A message for the episode's bag: queued for the recorder's thread (never blocks)."""
        rec = self.recorder
        if rec is None or msg is None or key not in self.record_topics:
            return
        rec.write(self.record_topics[key][0], msg, self.now_ns() if stamp_ns is None else stamp_ns,
                  droppable=key.startswith("camera."))

    def record_text(self, key: str, text: str) -> None:
        if self.recorder is not None and key in self.record_topics:
            self.record(key, self.record_topics[key][1](data=text))

    def _open_recording(self) -> None:
        """One bag per episode under record_dir/run_<start time>_<pid>/ (episode ids restart
        with every host run, the run directory keeps them apart). Inputs are downsampled."""
        if not self.config.record_dir or self.recorder is None:
            return
        if self._run_dir is None:
            self._run_dir = (Path(self.config.record_dir).expanduser()
                             / time.strftime(f"run_%Y%m%d-%H%M%S_{os.getpid()}"))
        topics = {name: kind for name, kind in self.record_topics.values()}
        every = {name: (self.config.record_image_every if key.startswith("camera.")
                        else self.config.record_joint_states_every)
                 for key, (name, _) in self.record_topics.items() if key.startswith(("camera.", "joint_states"))}
        self.recording_path = self.recorder.open(self._run_dir, self.episode_id, topics, downsample=every,
                                                 custom_data={"task": self.task_text})
        self.log.info(f"recording episode {self.episode_id} to {self.recording_path}")

    def _close_recording(self) -> None:
        """Close the episode's bag; its metadata gets the end reason and the value trace (the
        flashrt/value messages are in the bag too)."""
        if self.recorder is not None and self.recording_path:
            values = [round(v, 4) for _, v in self.values]
            self.recorder.close(custom_data={
                "end_reason": self.end_reason, "end_detail": self.end_detail,
                "value_trace": " ".join(f"{(t - self._episode_start_ns) / 1e9:.2f}:{v}"
                                        for (t, _), v in zip(self.values, values))})
            self.log.info(f"recording closed: {self.recording_path}")
