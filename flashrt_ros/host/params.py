"""The host's configuration: one loader, one validator, clear errors.

Precedence, highest first: command line > environment (`FLASHRT_*`) > params file > defaults.

- Params file: a ROS 2 parameters YAML, so the same file works with `--ros-args --params-file`. The
  blocks keyed `/**` or by this host's node names (flashrt_actor, flashrt_planner, in the namespace
  from `-r __ns:=`) apply, in file order; other nodes' blocks are ignored, as rcl does (a shared
  robot YAML works). Nested keys flatten with dots (`camera: {top: {topic: x}}` is
  `camera.top.topic`).
- Environment: `FLASHRT_<NAME>` with dots written as `__` (`FLASHRT_ACTOR_HZ=20`,
  `FLASHRT_CAMERA__TOP__TOPIC=/cam`). Lists are comma separated, optionally in brackets.
- Command line: `--set name=value` (repeatable), or `--ros-args -p name:=value` as `ros2 run` and
  launch pass them. `--params-file F` / `--ros-args --params-file F` name the file layer.

Every value is checked against its type and range; an error names the parameter, the value, where
it came from and what is allowed. No ROS imports: this module is testable without rclpy.
"""
from __future__ import annotations

import fnmatch
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

ENV_PREFIX = "FLASHRT_"
MAX_TEXT_BYTES = 1024  # coaching/task texts longer than this are refused (issue 3)
# Parameters rclpy handles itself; accepted in params files and ignored here.
ROS_OWNED = frozenset({"use_sim_time", "start_type_description_service", "qos_overrides"})


class ConfigError(ValueError):
    """A parameter is missing, unknown, mistyped or out of range. The message says which."""


@dataclass(frozen=True)
class Param:
    name: str
    kind: type                      # bool, int, float, str, list (of str or float: see item)
    default: Any
    help: str
    check: Callable[[Any], str | None] = lambda v: None   # returns what is allowed, or None if ok
    item: type | None = None        # element type of a list parameter


def _in(lo: float, hi: float, lo_open: bool = False, unit: str = "") -> Callable[[Any], str | None]:
    def check(v):
        ok = (lo < v if lo_open else lo <= v) and v <= hi and not (isinstance(v, float) and math.isnan(v))
        return None if ok else f"{'(' if lo_open else '['}{lo:g}, {hi:g}]{(' ' + unit) if unit else ''}"
    return check


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else "one of " + ", ".join(repr(c) for c in choices)


def _device(v: str) -> str | None:
    v = v.strip().lower()
    if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
        return None
    return "'auto', 'cpu', 'cuda' or 'cuda:N'"


def _non_empty_names(v: list) -> str | None:
    if not v or any(not s or not s.strip() for s in v) or len(set(v)) != len(v):
        return "a non-empty list of distinct, non-empty names"
    return None


def _distinct_names(v: list) -> str | None:
    return None if not v else _non_empty_names(v)


def _text(v: str) -> str | None:
    return None if len(v.encode("utf-8")) <= MAX_TEXT_BYTES else f"at most {MAX_TEXT_BYTES} bytes"


def _advantage(v: str) -> str | None:
    if not v.strip():
        return None
    try:
        return None if math.isfinite(float(v)) else "'' or a finite number"
    except ValueError:
        return "'' or a finite number"


MODELS = ("flashrt", "lerobot_pi0", "lerobot_pi05", "lerobot_smolvla")

PARAMS: tuple[Param, ...] = (
    # --- model -----------------------------------------------------------------------------------
    Param("model", str, "flashrt", "'flashrt': the built-in planner + actor (preset, checkpoint); 'lerobot_pi0', "
          "'lerobot_pi05', 'lerobot_smolvla': a LeRobot policy directory in 'checkpoint' as the actor (no planner: "
          "the task is the subtask, coaching replaces it)", _one_of(*MODELS)),
    Param("preset", str, "reference", "model size preset (flashrt_ros.models.config.PRESETS)"),
    Param("checkpoint", str, "", "checkpoint directory (config.json + safetensors); '' = the preset's shipped weights"),
    Param("tokenizer", str, "", "LeRobot models: the tokenizer.json for prompts; '' = <checkpoint>/tokenizer.json"),
    Param("device", str, "auto", "'auto' (cuda if available), 'cpu', 'cuda', 'cuda:N'; cuda without a GPU is an error", _device),
    Param("seed", int, 0, "seed of the flow-matching noise (runs are reproducible per seed)", _in(0, 2**31 - 1)),
    Param("planner_pieces", int, 1, "graphs the planner is cut into, so the actor can run between them", _in(1, 64)),
    Param("compile", str, "auto", "the actor's fast path (LeRobot π0/π0.5: compiled layers + Triton attention; "
          "built-in engine: torch.compile), each gated at start-up against the plain path (cosine >= 0.9999; "
          "below it start-up stops, no fallback): 'auto' = on a GPU where the engine has one, 'true', 'false' (the plain graph). Start-up takes longer "
          "with it (tens of seconds per camera count)", lambda v: None if v.strip().lower() in ("auto", "true", "false")
          else "'auto', 'true' or 'false'"),
    Param("weights", str, "bf16", "LeRobot checkpoints: 'bf16', or weight-only 'fp8' (Hopper/Blackwell) / 'int8' "
          "(per-output-channel scales, no calibration), gated at start-up (cosine >= 0.999 vs the float32 network, "
          "mean error <= 2x the bf16 network's, else start-up stops)", _one_of("bf16", "fp8", "int8")),
    Param("prompt_tokens", int, 0, "LeRobot checkpoints: the prompt's token slots in the graph; 0 = auto (π0.5: "
          "room for the state and 48 tokens of task text, in multiples of 16, instead of LeRobot's padding to 200 -- "
          "the padding is masked, so the chunk is the same for less work; π0 and SmolVLA: their tokenizer_max_length). "
          "A task or coaching text that does not fit is refused when it is set", _in(0, 4096)),
    Param("cpu_threads", int, 1, "torch intra-op threads when the device is the CPU; 0 = torch's choice "
          "(more than 1 beside the ROS threads slowed the reference policy ~10x on 2 cores)", _in(0, 256)),
    Param("gc_freeze", bool, True, "once the models are loaded, move the start-up heap out of Python's garbage "
          "collector's scans (gc.freeze), so that a full collection while serving does not stop the actor for as "
          "long as it takes to scan the models, graphs and modules; the log names both times at start-up"),
    Param("dtype", str, "float32", "weights and activations: float32 | bfloat16 | float16 (bf16 for large presets on a GPU)",
          _one_of("float32", "bfloat16", "float16")),
    # --- cameras ---------------------------------------------------------------------------------
    Param("cameras", list, ["top"], "camera names, in the order the model takes them; each has camera.<name>.topic "
          "and camera.<name>.transport", _non_empty_names, item=str),
    Param("camera_reliability", str, "reliable", "QoS of the camera subscriptions: 'reliable' (large images "
          "arrive whole: a lost fragment is repaired) or 'best_effort' (for drivers that publish best effort; a "
          "reliable subscription does not match them). Best effort lost 2 of 3 640x480 images here "
          "(docs/design/realtime.md)", _one_of("reliable", "best_effort")),
    Param("camera_sync_slop_s", float, 0.05, "cameras are used together only when their stamps are this close", _in(0.0, 10.0, unit="s")),
    Param("camera_timeout_s", float, 0.5, "a camera with no valid image for this long is stale: hold", _in(0.0, 3600.0, True, "s")),
    # --- joints ----------------------------------------------------------------------------------
    Param("joint_names", list, ["joint_x", "joint_y"], "joints the policy commands, in the model's action order",
          _non_empty_names, item=str),
    Param("state_joints", list, [], "joints that make up the policy's state, in the model's state order (e.g. the "
          "arm and the gripper width); [] = joint_names", _distinct_names, item=str),
    Param("joint_lower_limits", list, [0.0, 0.0], "lower position limit per joint of joint_names, in ROS units; "
          "actions are clamped", item=float),
    Param("joint_upper_limits", list, [1.0, 1.0], "upper position limit per joint of joint_names, in ROS units; "
          "actions are clamped", item=float),
    Param("max_velocity", list, [0.5, 0.5], "velocity limit per joint of joint_names (> 0), in ROS units per second",
          item=float),
    Param("joint_state_topics", list, ["joint_states"], "sensor_msgs/JointState topics, merged by joint name: a "
          "message with some of the joints updates those (arm and gripper drivers publishing apart); each joint "
          "is stale on its own", _non_empty_names, item=str),
    Param("joint_state_timeout_s", float, 0.5, "a joint with no valid state for this long is stale: hold",
          _in(0.0, 3600.0, True, "s")),
    Param("max_stamp_skew_s", float, 1.0, "an image or joint state stamped further than this from the host's clock, "
          "in either direction, is rejected (clocks out of sync: see docs/runbook.md)", _in(0.0, 3600.0, True, "s")),
    # --- controllers -------------------------------------------------------------------------------
    Param("controllers", list, [], "controller groups the commands are split into, each with "
          "controller.<name>.joints, .topic and .type (joint_trajectory | forward_command); [] = one "
          "trajectory_msgs/JointTrajectory of every joint on flashrt/joint_trajectory", _distinct_names, item=str),
    # --- rates and chunks ------------------------------------------------------------------------
    Param("planner_hz", float, 2.0, "planner releases per second", _in(0.0, 1000.0, True, "Hz")),
    Param("actor_hz", float, 10.0, "actor releases (chunks) per second; the actor's deadline is one period",
          _in(0.0, 1000.0, True, "Hz")),
    Param("actor_trigger", str, "timer", "'timer': the actor runs every 1/actor_hz; 'observation': once per new "
          "complete observation (every camera and the joints stamped within camera_sync_slop_s), for lock-step "
          "simulation and bag replay: the input that completes it runs the planner (when due) and the actor, "
          "and input ages and coaching holds are measured on the ROS clock (sim time when replaying)",
          _one_of("timer", "observation")),
    Param("planner_every", int, 0, "with actor_trigger 'observation': the planner runs before the actor on every "
          "Nth observation (and on the first after a task, start or reset); 0 = round(actor_hz / planner_hz)",
          _in(0, 1000000)),
    Param("horizon", int, 0, "actions published per chunk; 0 = the model's horizon", _in(0, 100000)),
    Param("chunk_dt", float, 0.0, "seconds between published actions; 0 = the model's chunk_dt", _in(0.0, 10.0, unit="s")),
    Param("overlap_policy", str, "replace", "a new chunk 'replace's the previous one, 'blend's into it over "
          "blend_steps actions, or is denoised to continue it: 'rtc' (real-time chunking: the unexecuted rest of "
          "the previous chunk is the new one's prefix, over the measured delay; docs/design/rtc.md)",
          _one_of("replace", "blend", "rtc")),
    Param("blend_steps", int, 4, "actions over which 'blend' cross-fades from the previous chunk", _in(1, 100000)),
    Param("rtc_mode", str, "guided", "'guided': the prefix guides every denoise step (any checkpoint; a "
          "backward pass per step); 'trained': the first d actions are the prefix, for an actor trained so "
          "(no extra cost)", _one_of("guided", "trained")),
    Param("rtc_schedule", str, "ONES", "weights of the prefix after the first d actions, up to "
          "rtc_execution_horizon, LeRobot's names: ONES (1 up to the horizon: the smoothest boundaries, "
          "docs/benchmarks/rtc.md), LINEAR (LeRobot's default: decaying), EXP, ZEROS (only the first d)",
          _one_of("ONES", "LINEAR", "EXP", "ZEROS")),
    Param("rtc_execution_horizon", int, 10, "actions of the previous chunk the new one is guided to continue",
          _in(1, 100000)),
    Param("rtc_max_guidance_weight", float, 10.0, "cap of the guidance weight (guided mode)",
          _in(0.0, 1e6, True)),
    Param("rtc_jacobian", str, "identity", "guided mode: 'identity' (LeRobot 0.6.1's guidance: the weighted "
          "error itself; 1.01x a plain chunk on the H200) or 'vjp' (the paper's ΠGDM: a vector-Jacobian product "
          "through the action expert, 1.98x; weak where the policy's clean-chunk prediction barely depends on "
          "the noisy one: docs/design/rtc.md)", _one_of("identity", "vjp")),
    # --- task and coaching -----------------------------------------------------------------------
    Param("task", str, "", "task set at start-up and after every reset ('' = wait for /flashrt/task)", _text),
    Param("coach_hold_s", float, 0.0, "after coaching, the planner resumes after this long; 0 = at the next task",
          _in(0.0, 86400.0, unit="s")),
    # --- episode, recording, diagnostics ---------------------------------------------------------
    Param("autostart", bool, True, "configure, activate and start an episode at launch"),
    Param("exit_with_parent", bool, True, "when the process that started the host (ros2 launch, a shell) dies, "
          "publish a stop and exit instead of driving the arm with nobody watching"),
    Param("record_dir", str, "", "directory for one MCAP bag per episode; '' = no recording"),
    Param("record_image_every", int, 5, "record every Nth image of each camera", _in(1, 1000000)),
    Param("record_joint_states_every", int, 1, "record every Nth /joint_states message", _in(1, 1000000)),
    Param("diagnostics_hz", float, 1.0, "/diagnostics publications per second", _in(0.0, 100.0, True, "Hz")),
    # --- episode state machine and the critic (docs/design/critic.md) ---------------------------------
    Param("episode_timeout_s", float, 0.0, "an episode running this long ends (end reason 'timeout'); 0 = never",
          _in(0.0, 1e7, unit="s")),
    Param("end_on_fault", bool, False, "an actor fault (exception, NaN chunk) ends the episode (end reason 'fault') "
          "instead of holding until the next good chunk"),
    Param("reset_mode", str, "service", "after an episode ends: 'service' waits for flashrt/reset_done (or "
          "flashrt/start) before the next episode; 'auto' starts it at once (not after an operator stop)",
          _one_of("service", "auto")),
    Param("critic", str, "", "value critic beside the actor: '' = none, 'reference' = the shipped tabletop critic, "
          "or a critic directory (config.json + critic.safetensors, flashrt_ros/models/critic.py)"),
    Param("critic_hz", float, 2.0, "critic readings per second (each of the observation the actor last acted on)",
          _in(0.0, 1000.0, True, "Hz")),
    Param("value_threshold", float, 0.1, "the critic ends the episode (end reason 'critic') when its value is "
          "below this for value_patience consecutive readings", _in(0.0, 1.0)),
    Param("value_patience", int, 6, "consecutive critic readings below value_threshold that end the episode",
          _in(1, 1000000)),
    Param("advantage", str, "", "RECAP-style advantage conditioning: the constant (a number) fed to an actor "
          "checkpoint that takes an advantage input; '' = none. A checkpoint without such an input refuses a "
          "number, one with it refuses ''", _advantage),
)
SPECS: dict[str, Param] = {p.name: p for p in PARAMS}
# Per-item parameters `<group>.<item>.<key>`: the item must be listed (cameras, controllers) or be a
# joint; key -> (type, element type of a list)
NESTED: dict[str, dict[str, tuple[type, type | None]]] = {
    "camera": {"topic": (str, None), "transport": (str, None)},
    "joint": {"scale": (float, None), "offset": (float, None)},
    "controller": {"joints": (list, str), "topic": (str, None), "type": (str, None), "rate_hz": (float, None)},
}
NESTED_HELP = {
    "camera.<name>.topic": ("str", "camera/<name>/image_raw[/compressed]", "the camera's image topic"),
    "camera.<name>.transport": ("str", "raw", "'raw' (sensor_msgs/Image) or 'compressed' "
                                "(sensor_msgs/CompressedImage, jpeg or png)"),
    "joint.<name>.scale": ("float", 1.0, "ROS value = policy value x scale + offset, for a joint of joint_names or "
                           "state_joints (e.g. 0.017453292519943295: a policy in degrees, ROS in radians)"),
    "joint.<name>.offset": ("float", 0.0, "see joint.<name>.scale"),
    "controller.<name>.joints": ("list[str]", "(required)", "the joints of joint_names this controller commands, "
                                 "in the controller's order"),
    "controller.<name>.topic": ("str", "<name>/joint_trajectory | <name>/commands", "where its commands go"),
    "controller.<name>.type": ("str", "joint_trajectory", "'joint_trajectory' (trajectory_msgs/JointTrajectory, "
                               "joint_trajectory_controller) or 'forward_command' (std_msgs/Float64MultiArray of "
                               "positions, forward_command_controller: streamed at rate_hz)"),
    "controller.<name>.rate_hz": ("float", 0.0, "forward_command: position commands per second while a "
                                  "trajectory runs; 0 = one per action (1 / chunk_dt)"),
}
TRANSPORTS = ("raw", "compressed")
CONTROLLER_TYPES = ("joint_trajectory", "forward_command")
TRAJECTORY_TOPIC = "flashrt/joint_trajectory"   # the single group's topic (controllers: [])


@dataclass(frozen=True)
class CameraConfig:
    name: str
    topic: str
    compressed: bool


@dataclass(frozen=True)
class JointUnits:
    """ROS value = policy value x scale + offset."""
    name: str
    scale: float = 1.0
    offset: float = 0.0


@dataclass(frozen=True)
class ControllerConfig:
    name: str
    joints: tuple[str, ...]
    topic: str
    type: str = "joint_trajectory"     # or "forward_command"
    rate_hz: float = 0.0               # forward_command: 0 = one command per action


@dataclass(frozen=True)
class HostConfig:
    model: str = "flashrt"
    preset: str = "reference"
    checkpoint: str = ""
    tokenizer: str = ""
    device: str = "auto"
    seed: int = 0
    planner_pieces: int = 1
    cpu_threads: int = 1
    gc_freeze: bool = True
    dtype: str = "float32"
    compile: str = "auto"
    weights: str = "bf16"
    prompt_tokens: int = 0
    cameras: tuple[CameraConfig, ...] = (CameraConfig("top", "camera/top/image_raw", False),)
    camera_reliability: str = "reliable"
    camera_sync_slop_s: float = 0.05
    camera_timeout_s: float = 0.5
    joint_names: tuple[str, ...] = ("joint_x", "joint_y")
    state_joints: tuple[str, ...] = ("joint_x", "joint_y")     # resolved: never empty
    joint_lower_limits: tuple[float, ...] = (0.0, 0.0)
    joint_upper_limits: tuple[float, ...] = (1.0, 1.0)
    max_velocity: tuple[float, ...] = (0.5, 0.5)
    joint_state_topics: tuple[str, ...] = ("joint_states",)
    joint_state_timeout_s: float = 0.5
    max_stamp_skew_s: float = 1.0
    # resolved: one group of every joint on TRAJECTORY_TOPIC when the parameter is []
    controllers: tuple[ControllerConfig, ...] = (
        ControllerConfig("", ("joint_x", "joint_y"), TRAJECTORY_TOPIC),)
    units: tuple[JointUnits, ...] = ()   # only joints whose units differ (scale != 1 or offset != 0)
    planner_hz: float = 2.0
    actor_hz: float = 10.0
    actor_trigger: str = "timer"
    planner_every: int = 0
    horizon: int = 0
    chunk_dt: float = 0.0
    overlap_policy: str = "replace"
    blend_steps: int = 4
    rtc_mode: str = "guided"
    rtc_schedule: str = "ONES"
    rtc_execution_horizon: int = 10
    rtc_max_guidance_weight: float = 10.0
    rtc_jacobian: str = "identity"
    task: str = ""
    coach_hold_s: float = 0.0
    autostart: bool = True
    exit_with_parent: bool = True
    record_dir: str = ""
    record_image_every: int = 5
    record_joint_states_every: int = 1
    diagnostics_hz: float = 1.0
    episode_timeout_s: float = 0.0
    end_on_fault: bool = False
    reset_mode: str = "service"
    critic: str = ""
    critic_hz: float = 2.0
    value_threshold: float = 0.1
    value_patience: int = 6
    advantage: str = ""
    # where each value came from ("default", "params file <path>", "environment FLASHRT_X", "command line")
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def as_parameters(self) -> dict[str, Any]:
        """Flat {ROS parameter name: value}: what the nodes declare (read-only) for introspection."""
        out: dict[str, Any] = {}
        for p in PARAMS:
            v = getattr(self, p.name)
            if p.name == "cameras":
                v = [c.name for c in v]
            elif p.name == "controllers":
                v = [c.name for c in v if c.name]
            out[p.name] = list(v) if isinstance(v, tuple) else v
        for cam in self.cameras:
            out[f"camera.{cam.name}.topic"] = cam.topic
            out[f"camera.{cam.name}.transport"] = "compressed" if cam.compressed else "raw"
        for u in self.units:
            out[f"joint.{u.name}.scale"] = u.scale
            out[f"joint.{u.name}.offset"] = u.offset
        for c in self.controllers:
            if c.name:
                out[f"controller.{c.name}.joints"] = list(c.joints)
                out[f"controller.{c.name}.topic"] = c.topic
                out[f"controller.{c.name}.type"] = c.type
                out[f"controller.{c.name}.rate_hz"] = c.rate_hz
        return out

    @property
    def joint_limits(self):
        import numpy as np
        return np.stack([np.asarray(self.joint_lower_limits, np.float32),
                         np.asarray(self.joint_upper_limits, np.float32)], axis=1)


def default_camera_topic(name: str, compressed: bool) -> str:
    return f"camera/{name}/image_raw" + ("/compressed" if compressed else "")


# --- loading ---------------------------------------------------------------------------------------
HOST_NODES = ("flashrt_planner", "flashrt_actor")


def load_config(params_files: Sequence[str | Path] = (), env: Mapping[str, str] | None = None,
                cli: Sequence[tuple[str, str]] = (), namespace: str = "/") -> HostConfig:
    """Merge the layers (files in order, then env, then CLI `(name, value)` pairs) and validate.
    Of each params file, the blocks for `/**` and for this host's nodes in `namespace` apply."""
    env = os.environ if env is None else env
    raw: dict[str, tuple[Any, str]] = {}                   # name -> (value, source)
    nodes = [_join(namespace, n) for n in HOST_NODES]
    for path in params_files:
        for name, value in read_params_file(path, nodes).items():
            raw[name] = (value, f"params file {path}")
    for key, value in env.items():
        if key.startswith(ENV_PREFIX) and len(key) > len(ENV_PREFIX):
            name = key[len(ENV_PREFIX):].lower().replace("__", ".")
            if name in SPECS or name.split(".", 1)[0] in NESTED:
                raw[name] = (value, f"environment {key}")
    for name, value in cli:
        raw[name.strip()] = (value, "command line")
    return build_config(raw)


# FLASHRT_* variables of the tools and scripts, not parameters
ENV_NOT_PARAMETERS = frozenset({"FLASHRT_VENV", "FLASHRT_ROOT", "FLASHRT_INSTALL", "FLASHRT_SKIP_BUILD",
                                "FLASHRT_KERNELS_DIR", "FLASHRT_TEST_CKPT", "FLASHRT_SOAK_HOST_CMD"})


def environment_report(config: HostConfig, env: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """(level, line) per `FLASHRT_*` variable that names a parameter, logged at start-up: an
    override from a forgotten `export` is otherwise invisible. A variable that names no parameter
    (a typo?) is a warning."""
    env = os.environ if env is None else env
    lines = []
    for key in sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in ENV_NOT_PARAMETERS):
        name = key[len(ENV_PREFIX):].lower().replace("__", ".")
        if config.sources.get(name) == f"environment {key}":
            lines.append(("info", f"{key}={env[key]!r} sets parameter {name!r}"))
        elif name in SPECS or name.split(".", 1)[0] in NESTED:
            lines.append(("info", f"{key}={env[key]!r} is overridden by the command line"))
        else:
            lines.append(("warning", f"{key} names no host parameter: ignored (a typo? `flashrt-ros host "
                                     f"--help` lists them)"))
    return lines


def build_config(raw: Mapping[str, tuple[Any, str]]) -> HostConfig:
    """Type-check and range-check every value; resolve the per-camera, per-joint and
    per-controller parameters."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    nested: dict[str, dict[str, dict[str, tuple[Any, str]]]] = {g: {} for g in NESTED}  # group -> item -> key
    for name, (value, source) in raw.items():
        if name in ROS_OWNED:
            continue
        group = name.split(".", 1)[0]
        if group in NESTED:
            parts = name.split(".")
            if len(parts) != 3 or parts[2] not in NESTED[group]:
                raise ConfigError(f"unknown parameter {name!r} (from {source}): {group} parameters are "
                                  + ", ".join(f"{group}.<name>.{k}" for k in NESTED[group]))
            kind, item = NESTED[group][parts[2]]
            spec = Param(name, kind, None, "", item=item)
            nested[group].setdefault(parts[1], {})[parts[2]] = (_coerce(spec, value, source), source)
            sources[name] = source
            continue
        spec = SPECS.get(name)
        if spec is None:
            raise ConfigError(f"unknown parameter {name!r} (from {source}); known: {', '.join(sorted(SPECS))}, "
                              + ", ".join(NESTED_HELP))
        values[name] = _coerce(spec, value, source)
        sources[name] = source
    for spec in PARAMS:
        values.setdefault(spec.name, list(spec.default) if isinstance(spec.default, list) else spec.default)
        sources.setdefault(spec.name, "default")
        allowed = spec.check(values[spec.name])
        if allowed is not None:
            raise ConfigError(f"parameter {spec.name!r} = {values[spec.name]!r} (from {sources[spec.name]}) "
                              f"is not allowed: expected {allowed}")

    values["cameras"] = _cameras(values["cameras"], nested["camera"])
    d = len(values["joint_names"])
    for key in ("joint_lower_limits", "joint_upper_limits", "max_velocity"):
        if len(values[key]) != d:
            raise ConfigError(f"parameter {key!r} has {len(values[key])} values (from {sources[key]}), "
                              f"but 'joint_names' has {d} joints: give one per joint")
        if not all(math.isfinite(x) for x in values[key]):
            raise ConfigError(f"parameter {key!r} = {values[key]} (from {sources[key]}) must be finite numbers")
    for i, j in enumerate(values["joint_names"]):
        lo, hi = values["joint_lower_limits"][i], values["joint_upper_limits"][i]
        if lo > hi:
            raise ConfigError(f"joint {j!r}: joint_lower_limits {lo:g} > joint_upper_limits {hi:g}")
        if values["max_velocity"][i] <= 0:
            raise ConfigError(f"joint {j!r}: max_velocity {values['max_velocity'][i]:g} must be > 0")
    values["state_joints"] = values["state_joints"] or list(values["joint_names"])
    values["units"] = _units(values["joint_names"], values["state_joints"], nested["joint"])
    values["controllers"] = _controllers(values["controllers"], values["joint_names"], nested["controller"])
    if values["checkpoint"] and not Path(values["checkpoint"]).expanduser().is_dir():
        raise ConfigError(f"parameter 'checkpoint' = {values['checkpoint']!r} (from {sources['checkpoint']}) "
                          f"is not a directory")
    if values["model"].startswith("lerobot_"):
        if not values["checkpoint"]:
            raise ConfigError(f"parameter 'model' = {values['model']!r} (from {sources['model']}) needs "
                              f"'checkpoint': the LeRobot policy directory")
        policy_type = _lerobot_type(Path(values["checkpoint"]).expanduser())
        if policy_type != values["model"][len("lerobot_"):]:
            raise ConfigError(f"parameter 'model' = {values['model']!r} (from {sources['model']}), but "
                              f"{values['checkpoint']}/config.json is a {policy_type!r} policy")
    if values["prompt_tokens"] and not values["model"].startswith("lerobot_"):
        raise ConfigError(f"parameter 'prompt_tokens' = {values['prompt_tokens']!r} (from {sources['prompt_tokens']}) "
                          f"applies to LeRobot models only")
    if values["weights"] != "bf16" and not values["model"].startswith("lerobot_"):
        raise ConfigError(f"parameter 'weights' = {values['weights']!r} (from {sources['weights']}) applies to LeRobot "
                          f"models only; the built-in model runs in 'dtype' ({values['dtype']})")
    critic = values["critic"].strip()
    if critic and critic != "reference" and not Path(critic).expanduser().is_dir():
        raise ConfigError(f"parameter 'critic' = {critic!r} (from {sources['critic']}) is neither 'reference' "
                          f"nor a directory")
    values["critic"] = critic
    if values["tokenizer"] and not Path(values["tokenizer"]).expanduser().is_file():
        raise ConfigError(f"parameter 'tokenizer' = {values['tokenizer']!r} (from {sources['tokenizer']}) "
                          f"is not a file")

    values.update({k: tuple(v) for k, v in values.items() if isinstance(v, list)})
    values["device"] = values["device"].strip().lower()
    values["compile"] = values["compile"].strip().lower()
    return HostConfig(**values, sources=sources)


def _unlisted(group: str, items: dict, listed: Sequence[str], where: str) -> None:
    for item, keys in items.items():
        if item not in listed:
            key, (_, source) = next(iter(keys.items()))
            raise ConfigError(f"parameter '{group}.{item}.{key}' (from {source}) names {group} {item!r}, "
                              f"which is not in {where} {list(listed)}")


def _cameras(names: list[str], nested: dict) -> tuple[CameraConfig, ...]:
    _unlisted("camera", nested, names, "'cameras'")
    cameras = []
    for cam in names:
        keys = nested.get(cam, {})
        transport, t_src = keys.get("transport", ("raw", "default"))
        transport = transport.strip().lower()
        if transport not in TRANSPORTS:
            raise ConfigError(f"parameter 'camera.{cam}.transport' = {transport!r} (from {t_src}) is not allowed: "
                              f"expected one of 'raw', 'compressed'")
        compressed = transport == "compressed"
        topic, p_src = keys.get("topic", (default_camera_topic(cam, compressed), "default"))
        if not topic.strip():
            raise ConfigError(f"parameter 'camera.{cam}.topic' (from {p_src}) is empty")
        cameras.append(CameraConfig(cam, topic.strip(), compressed))
    return tuple(cameras)


def _units(joint_names: list[str], state_joints: list[str], nested: dict) -> tuple[JointUnits, ...]:
    known = list(dict.fromkeys([*joint_names, *state_joints]))
    _unlisted("joint", nested, known, "'joint_names' or 'state_joints'")
    units = []
    for j in known:
        keys = nested.get(j, {})
        (scale, s_src), (offset, o_src) = keys.get("scale", (1.0, "default")), keys.get("offset", (0.0, "default"))
        if not math.isfinite(scale) or scale == 0.0:
            raise ConfigError(f"parameter 'joint.{j}.scale' = {scale!r} (from {s_src}) must be a finite, "
                              f"non-zero number")
        if not math.isfinite(offset):
            raise ConfigError(f"parameter 'joint.{j}.offset' = {offset!r} (from {o_src}) must be finite")
        if scale != 1.0 or offset != 0.0:
            units.append(JointUnits(j, scale, offset))
    return tuple(units)


def _controllers(names: list[str], joint_names: list[str], nested: dict) -> tuple[ControllerConfig, ...]:
    _unlisted("controller", nested, names, "'controllers'")
    if not names:
        return (ControllerConfig("", tuple(joint_names), TRAJECTORY_TOPIC),)
    groups, owner, topics = [], {}, {}
    for name in names:
        keys = nested.get(name, {})
        if "joints" not in keys:
            raise ConfigError(f"controller {name!r} has no 'controller.{name}.joints': name the joints of "
                              f"joint_names it commands")
        joints, j_src = keys["joints"]
        kind, k_src = keys.get("type", ("joint_trajectory", "default"))
        kind = kind.strip().lower()
        if kind not in CONTROLLER_TYPES:
            raise ConfigError(f"parameter 'controller.{name}.type' = {kind!r} (from {k_src}) is not allowed: "
                              f"expected one of {', '.join(repr(t) for t in CONTROLLER_TYPES)}")
        default_topic = f"{name}/joint_trajectory" if kind == "joint_trajectory" else f"{name}/commands"
        topic, t_src = keys.get("topic", (default_topic, "default"))
        rate, r_src = keys.get("rate_hz", (0.0, "default"))
        if not (math.isfinite(rate) and 0.0 <= rate <= 10000.0):
            raise ConfigError(f"parameter 'controller.{name}.rate_hz' = {rate!r} (from {r_src}) is not allowed: "
                              f"expected [0, 10000] Hz (0 = one command per action)")
        if not joints or len(set(joints)) != len(joints):
            raise ConfigError(f"parameter 'controller.{name}.joints' = {joints} (from {j_src}) must be a "
                              f"non-empty list of distinct joints")
        for j in joints:
            if j not in joint_names:
                raise ConfigError(f"parameter 'controller.{name}.joints' (from {j_src}) names {j!r}, which is not "
                                  f"in 'joint_names' {joint_names} (a controller commands only policy actions)")
            if j in owner:
                raise ConfigError(f"joint {j!r} is in controllers {owner[j]!r} and {name!r}: give each joint "
                                  f"one controller")
            owner[j] = name
        topic = topic.strip()
        if not topic or topic in topics:
            raise ConfigError(f"parameter 'controller.{name}.topic' = {topic!r} (from {t_src}) is "
                              + ("empty" if not topic else f"also controller {topics[topic]!r}'s topic"))
        topics[topic] = name
        groups.append(ControllerConfig(name, tuple(joints), topic, kind, float(rate)))
    orphans = [j for j in joint_names if j not in owner]
    if orphans:
        raise ConfigError(f"joints {orphans} of 'joint_names' are in no controller of 'controllers' {names}: "
                          f"every commanded joint needs one")
    return tuple(groups)


def _lerobot_type(directory: Path) -> str:
    try:
        return str(json.loads((directory / "config.json").read_text()).get("type"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{directory}: cannot read config.json ({err})") from None


def _coerce(spec: Param, value: Any, source: str) -> Any:
    def fail(expected: str) -> ConfigError:
        return ConfigError(f"parameter {spec.name!r} = {value!r} (from {source}) is not {expected}")

    if spec.kind is list:
        items = _split_list(value) if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise fail(f"a list of {spec.item.__name__}")
        try:
            return [_scalar(spec.item, x) for x in items]
        except (TypeError, ValueError):
            raise fail(f"a list of {spec.item.__name__}") from None
    try:
        return _scalar(spec.kind, value)
    except (TypeError, ValueError):
        raise fail({bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string"}
                   [spec.kind]) from None


def _scalar(kind: type, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.strip().lower() in ("true", "1", "yes", "on")
        raise ValueError(value)
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(value)
        return int(value.strip()) if isinstance(value, str) else int(value)
    if kind is float:
        if isinstance(value, bool):
            raise ValueError(value)
        return float(value)
    if kind is str:
        if isinstance(value, (list, dict, tuple)):
            raise ValueError(value)
        return "" if value is None else str(value)
    raise TypeError(kind)


def _split_list(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return [s.strip().strip("'\"") for s in text.split(",") if s.strip()]


def read_params_file(path: str | Path, nodes: Sequence[str] = ("/**",)) -> dict[str, Any]:
    """{parameter: value} from a ROS 2 params YAML: the `ros__parameters` blocks whose key matches
    one of `nodes` (fully qualified names, e.g. '/arm/flashrt_actor'), in file order, as rcl
    applies them: keys without a leading '/' are from the root, `*` is one name, `**` any number.
    Other nodes' blocks are ignored (a shared robot YAML works); a file with no block for us is
    an error (the host would otherwise run on defaults)."""
    path = Path(path).expanduser()
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML comes with rclpy's dependencies
        raise ConfigError("reading a params file needs PyYAML (pip install pyyaml)") from None
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"cannot read params file {str(path)!r}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"params file {str(path)!r} is not valid YAML: {err}") from None
    if data is None:
        return {}
    blocks = _ros_parameter_blocks(data)
    if not blocks:
        raise ConfigError(f"params file {str(path)!r} has no 'ros__parameters' block; write\n"
                          f"/**:\n  ros__parameters:\n    actor_hz: 10.0")
    out: dict[str, Any] = {}
    used = [(key, block) for key, block in blocks if any(node_matches(key, n) for n in nodes)]
    if not used:
        raise ConfigError(f"params file {str(path)!r} has no block for this host's nodes {list(nodes)}: its "
                          f"blocks are for {[k for k, _ in blocks]}; key the host's block '/**' or by a node "
                          f"name ({', '.join(HOST_NODES)})")
    for key, block in used:
        if not isinstance(block, dict):
            raise ConfigError(f"params file {str(path)!r}: {key}: 'ros__parameters' must map names to values")
        out.update(_flatten(block))
    return out


def _ros_parameter_blocks(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(node key, block) for every `ros__parameters` block; nested keys are namespaces."""
    if not isinstance(node, dict):
        return []
    if "ros__parameters" in node:
        return [(prefix or "/", node["ros__parameters"] or {})]
    blocks = []
    for key, value in node.items():
        blocks += _ros_parameter_blocks(value, f"{prefix}/{str(key).strip('/')}")
    return blocks


def node_matches(key: str, node: str) -> bool:
    """Whether a params file's node key ('/**', 'flashrt_actor', '/arm/*', '/**/flashrt_actor')
    names the node with fully qualified name `node`."""
    want = [t for t in key.split("/") if t]
    have = [t for t in node.split("/") if t]

    def match(i: int, j: int) -> bool:
        if i == len(want):
            return j == len(have)
        if want[i] == "**":
            return any(match(i + 1, k) for k in range(j, len(have) + 1))
        return j < len(have) and fnmatch.fnmatchcase(have[j], want[i]) and match(i + 1, j + 1)
    return match(0, 0)


def _join(namespace: str, name: str) -> str:
    return "/" + "/".join(t for t in (*namespace.split("/"), name) if t)


def _flatten(block: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in block.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


# --- the command line ------------------------------------------------------------------------------
HOST_USAGE = """usage: flashrt-ros host [--params-file FILE] [--set NAME=VALUE ...] [--print-config]
                        [--ros-args ...]

Runs the flashrt_ros host: planner + actor lifecycle nodes in one process.
Configuration precedence: --set / --ros-args -p NAME:=VALUE > FLASHRT_<NAME> environment variables
> params file(s) > defaults. `--print-config` prints the merged parameters and exits.
"""


@dataclass
class HostArgs:
    config: HostConfig
    ros_args: list[str]          # passed to rclpy.init (remaps, log level, use_sim_time, ...)
    print_config: bool = False
    namespace: str = "/"


def parse_host_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> HostArgs:
    """Split our options from the ROS arguments and load the configuration (ConfigError on bad input)."""
    argv = list(argv)
    ours, ros = argv, []
    if "--ros-args" in argv:
        i = argv.index("--ros-args")
        ours, ros = argv[:i], argv[i:]
    files: list[str] = []
    cli: list[tuple[str, str]] = []
    print_config = False
    it = iter(ours)
    for arg in it:
        if arg in ("-h", "--help"):
            print(HOST_USAGE + "\nParameters:\n" + describe_parameters())
            raise SystemExit(0)
        if arg == "--print-config":
            print_config = True
        elif arg == "--params-file" or arg.startswith("--params-file="):
            files.append(arg.split("=", 1)[1] if "=" in arg else _next(it, arg))
        elif arg == "--set" or arg.startswith("--set="):
            item = arg.split("=", 1)[1] if arg.startswith("--set=") else _next(it, arg)
            if "=" not in item:
                raise ConfigError(f"--set expects NAME=VALUE, got {item!r}")
            name, value = item.split("=", 1)
            cli.append((name, value))
        else:
            raise ConfigError(f"unknown argument {arg!r}\n\n{HOST_USAGE}")
    # ROS arguments: --params-file is the file layer, -p NAME:=VALUE the command-line layer,
    # -r __ns:=/x the namespace (which params-file blocks apply).
    namespace = "/"
    it = iter(ros)
    for arg in it:
        if arg == "--params-file":
            files.append(_next(it, arg))
        elif arg in ("-r", "--remap"):
            item = _next(it, arg)
            if item.startswith("__ns:="):
                namespace = item.split(":=", 1)[1] or "/"
        elif arg in ("-p", "--param"):
            item = _next(it, arg)
            if ":=" not in item:
                raise ConfigError(f"{arg} expects NAME:=VALUE, got {item!r}")
            name, value = item.split(":=", 1)
            node, _, name = name.rpartition(":")          # the node-prefixed form 'node:name:=v'
            if node and node.strip("/").split("/")[-1] not in HOST_NODES:
                continue                                   # another node's parameter
            if name not in ROS_OWNED:
                cli.append((name, _yaml_scalar(value)))
    return HostArgs(load_config(files, env, cli, namespace), ros, print_config, namespace)


def _yaml_scalar(text: str) -> Any:
    """`-p` values are YAML (rcl parses them so): `[a, b]`, `true`, `1.5`, `'text'`."""
    try:
        import yaml
        return yaml.safe_load(text) if text.strip() else ""
    except Exception:
        return text


def _next(it, flag: str) -> str:
    try:
        return next(it)
    except StopIteration:
        raise ConfigError(f"{flag} needs a value") from None


def describe_parameters() -> str:
    lines = []
    for p in PARAMS:
        lines.append(f"  {p.name} ({p.kind.__name__}{'[' + p.item.__name__ + ']' if p.item else ''}, "
                     f"default {p.default!r}): {p.help}")
    for name, (kind, default, help_) in NESTED_HELP.items():
        lines.append(f"  {name} ({kind}, default {default!r}): {help_}")
    return "\n".join(lines)
