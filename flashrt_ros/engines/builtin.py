"""The engine: planner and actor models bound to static buffers and captured graphs.

The one object a host drives. It owns the only BufferSet, the two graphs (each on its own
stream), the subtask channel between them, the kernels at the edges and the episode capsule.
It knows nothing of ROS: hosts pass numpy images and joint states in and get numpy chunks out.

    engine = Engine()                                  # embedded reference policy, CPU or GPU
    engine.set_task("visit red, then blue, then green")
    engine.plan(images, encodings)                     # -> new SubtaskState when it changed
    chunk = engine.act(images, encodings, joint_positions, chunk_seq)
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from flashrt_ros.models.actor import Actor
from flashrt_ros.models.checkpoint import REFERENCE_WEIGHTS, load_checkpoint
from flashrt_ros.models.config import ModelConfig
from flashrt_ros.models.planner import Planner
from flashrt_ros.models.rtc import RtcSettings, prefix_weights
from flashrt_ros.models.stages import planner_hidden_shape, planner_stages
from flashrt_ros.models.tokenizer import WordTokenizer
from flashrt_ros.runtime import BufferSet, CapsuleStore, StaticGraph, SubtaskChannel, SubtaskState, resolve_device
from flashrt_ros.runtime.kernels import Postprocessor, Preprocessor

from .base import COMPILE_MIN_COS, MAX_TEXT_BYTES, ChunkIO, ChunkResult, _on, action_start, check_joints, check_text, compile_gate


RTC_MODES = ("guided", "trained")


class Engine:
    def __init__(self, checkpoint: str | Path | None = None, preset: str = "reference", device: str = "auto",
                 seed: int = 0, joint_limits: np.ndarray | None = None, max_velocity: np.ndarray | None = None,
                 planner_pieces: int = 1, dtype: str = "float32", compile_actor: bool | None = False,
                 rtc: RtcSettings | None = None, rtc_mode: str = "guided"):
        self.device = resolve_device(device)
        if rtc_mode not in RTC_MODES:
            raise ValueError(f"rtc_mode must be one of {', '.join(RTC_MODES)}, got {rtc_mode!r}")
        self.rtc, self.rtc_mode = rtc, rtc_mode
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
        # Weights and activations in `dtype`; buffers at the edges stay float32.
        self.dtype = getattr(torch, dtype)
        self.seed = int(seed)
        if checkpoint is None and preset == "reference":
            checkpoint = REFERENCE_WEIGHTS
        if checkpoint is not None:
            cfg, actor, planner = load_checkpoint(checkpoint)
        else:  # a size preset with seeded weights (GPU benchmarks)
            cfg = ModelConfig.from_name(preset)
            torch.manual_seed(seed)
            actor, planner = Actor(cfg), Planner(cfg)
        self.config: ModelConfig = cfg
        self.tokenizer = WordTokenizer(cfg.vocabulary)
        self.actor = actor.to(self.device, self.dtype).eval().requires_grad_(False)
        self.notes: list[str] = []          # start-up facts (e.g. the compile gate)
        self.gates: dict[str, dict] = {}
        # Opt-in fast path: inductor fuses the small kernels of the denoise loop before capture, kept
        # only behind its equivalence gate against the plain actor (_compile_gated).
        if compile_actor is None:       # the host's compile 'auto': the fast path on a GPU
            compile_actor = self.device.type == "cuda"
        self._actor_call = self._compile_gated() if compile_actor else self.actor
        self.planner = planner.to(self.device, self.dtype).eval().requires_grad_(False)
        D, H = cfg.action_dim, cfg.horizon
        limits = np.asarray(joint_limits if joint_limits is not None else [[-np.inf, np.inf]] * D, np.float32)
        vmax = np.asarray(max_velocity if max_velocity is not None else [np.inf] * D, np.float32)
        if limits.shape != (D, 2) or vmax.shape != (D,):
            raise ValueError(f"joint_limits must be [{D}, 2] and max_velocity [{D}], "
                             f"got {limits.shape} and {vmax.shape}")
        if np.any(limits[:, 0] > limits[:, 1]) or np.any(vmax <= 0):
            raise ValueError("joint limits need lower <= upper and max velocities > 0")

        on_gpu = self.device.type == "cuda"
        # The actor's deadline is the product: its stream gets the highest priority.
        self.actor_stream = torch.cuda.Stream(self.device, priority=-3) if on_gpu else None
        self.planner_stream = torch.cuda.Stream(self.device, priority=0) if on_gpu else None

        b = self.buffers = BufferSet(self.device)
        self.channel = SubtaskChannel(b, cfg.text_len, actor_stream=self.actor_stream)
        S, n = cfg.image_size, cfg.n_cameras
        b.declare("actor.images", (1, n, 3, S, S), torch.float32)
        b.declare("actor.state", (1, cfg.state_dim), torch.float32)
        b.declare("actor.noise", (1, H, D), torch.float32)
        b.declare("actor.actions", (1, H, D), torch.float32)          # normalised model output
        b.declare("actor.subtask_version", (1,), torch.int64)
        b.declare("planner.images", (1, n, 3, S, S), torch.float32)
        b.declare("planner.task", (1, cfg.task_len), torch.int64)
        b.declare("planner.choice", (1,), torch.int64)
        self.preprocess = Preprocessor(S, n, self.device)
        self.postprocess = Postprocessor(self.actor.action_mean.float().cpu(), self.actor.action_std.float().cpu(),
                                         limits, vmax, cfg.chunk_dt, H, self.device)
        self.chunk_io = ChunkIO(b, self.postprocess, self.seed)
        b.prepare_many(["actor.state", "actor.noise", "actor.q0"])   # act()'s one input copy

        self.actor_graph = StaticGraph(
            "actor", self._actor_fn, b,
            reads=["actor.images", "actor.state", "actor.noise", "actor.q0", "subtask.slots", "subtask.state"],
            writes=["actor.actions", "actor.subtask_version"], stream=self.actor_stream).capture()
        # Real-time chunking (only when asked for: the second graph costs its capture and, on a GPU,
        # its memory): a second graph over the same buffers plus the prefix and its weights
        # (static: a new prefix or delay is a buffer write, never a recapture).
        self.rtc_graph = None
        self._rtc_settings = rtc
        if rtc is not None:
            b.declare("actor.prefix", (1, H, D), torch.float32)            # normalised, row i = new row i
            b.declare("actor.prefix_weights", (1, H, 1), torch.float32)    # guided: the schedule; trained: 0/1
            self._action_stats = (self.actor.action_mean.float().cpu(), self.actor.action_std.float().cpu())
            self._prefix_host = torch.zeros((1, H, D), dtype=torch.float32)
            self._weights_host = torch.zeros((1, H, 1), dtype=torch.float32)
            self.rtc_graph = StaticGraph(
                f"actor.rtc_{rtc_mode}", self._actor_rtc_fn, b,
                reads=["actor.images", "actor.state", "actor.noise", "actor.q0", "actor.prefix", "actor.prefix_weights",
                       "subtask.slots", "subtask.state"],
                writes=["actor.actions", "actor.subtask_version"], stream=self.actor_stream,
                grad=rtc_mode == "guided").capture()
        self.planner_graphs = self._planner_graphs(planner_pieces)

        self.capsules = CapsuleStore(b)
        self.capsules.snapshot("initial")
        self._task_text = ""
        self._subtask_texts: dict[int, str] = {0: ""}

    # --- graphs --------------------------------------------------------------------------------
    def _compile_gated(self):
        """torch.compile the actor behind its equivalence gate: on seeded probe inputs its chunk must match
        the plain actor's (base.compile_gate: cosine >= COMPILE_MIN_COS), else start-up stops (FastPathRefused)."""
        c, dev, dt = self.config, self.device, self.dtype
        g = torch.Generator().manual_seed(0)
        probe = (torch.rand(1, c.n_cameras, 3, c.image_size, c.image_size, generator=g) * 2 - 1,
                 torch.randn(1, c.state_dim, generator=g), torch.randint(2, c.vocab_size, (1, c.text_len), generator=g),
                 torch.randn(1, c.horizon, c.action_dim, generator=g))
        probe = [t.to(dev) if t.dtype == torch.int64 else t.to(dev, dt) for t in probe]
        compiled = torch.compile(self.actor, dynamic=False)
        with torch.inference_mode():
            plain = self.actor(*probe)
            fast = compiled(*probe)
        self.gates["compile"] = compile_gate(plain, fast, "compile: the compiled actor", COMPILE_MIN_COS)
        self.notes.append(f"compile: actor compiled, cosine {self.gates['compile']['cos']:.7f} vs the plain actor")
        return compiled

    def _actor_fn(self, b: BufferSet) -> None:
        tokens, version = self.channel.read_in_graph(b)
        dt = self.dtype
        actions = self._actor_call(b["actor.images"].to(dt), b["actor.state"].to(dt), tokens,
                                   b["actor.noise"].to(dt))
        b["actor.actions"].copy_(actions)
        b["actor.subtask_version"].copy_(version)
        self.chunk_io.in_graph(b)

    def _actor_rtc_fn(self, b: BufferSet) -> None:
        """The actor with a prefix: encode, then the RTC denoise loop (Actor.denoise_rtc). Guided
        "vjp" needs autograd (a backward pass through the action expert at every step): the graph
        runs under no_grad, not inference mode (StaticGraph grad=True; inference mode is also
        switched off here, so the tensors made are never inference tensors); on a GPU the backward
        kernels are captured into the graph with the rest. Trained mode needs no autograd."""
        with torch.inference_mode(False):
            tokens, version = self.channel.read_in_graph(b)
            dt, actor = self.dtype, self.actor
            prefix = actor.encode(b["actor.images"].to(dt), b["actor.state"].to(dt), tokens)
            actions = actor.denoise_rtc(prefix, b["actor.noise"].to(dt), b["actor.prefix"].to(dt),
                                        b["actor.prefix_weights"].to(dt), self.rtc_mode, self._rtc_settings)
            b["actor.actions"].copy_(actions.detach())
            b["actor.subtask_version"].copy_(version)
        self.chunk_io.in_graph(b)

    def _planner_graphs(self, pieces: int) -> list[StaticGraph]:
        """The planner as `pieces` graphs over static activations, so the scheduler can slot the
        actor between them. The last piece writes the chosen subtask into the channel."""
        b, p = self.buffers, self.planner
        stages = planner_stages(p, pieces)
        hidden = planner_hidden_shape(p, 1)
        if pieces > 1:
            b.declare("planner.hidden", hidden, self.dtype)
        graphs = []
        for i, stage in enumerate(stages):
            first, last = i == 0, i == len(stages) - 1

            def fn(bufs, stage=stage, first=first, last=last):
                x = (bufs["planner.images"].to(self.dtype), bufs["planner.task"]) if first \
                    else bufs["planner.hidden"]
                y = stage(x)
                if not last:
                    bufs["planner.hidden"].copy_(y)
                    return
                choice = y.argmax(dim=-1)
                bufs["planner.choice"].copy_(choice)
                self.channel.write_in_graph(bufs, p.subtask_table.index_select(0, choice))

            reads = ["planner.images", "planner.task"] if first else ["planner.hidden"]
            writes = ["planner.choice", "subtask.slots"] if last else ["planner.hidden"]
            if last:
                reads.append("subtask.state")
            graphs.append(StaticGraph(f"planner.{i}", fn, b, reads, writes, stream=self.planner_stream))
        # The last piece writes the channel: capture it holding the lock like every writer does.
        with self.channel.lock:
            for g in graphs:
                g.capture()
        return graphs

    # --- episode / task / coaching ---------------------------------------------------------------
    def set_task(self, text: str) -> None:
        check_text(text, "task")
        tokens = self.tokenizer.encode(text, self.config.task_len)
        self.buffers.write("planner.task", tokens[None], stream=self.planner_stream)
        self._task_text = text

    @property
    def task(self) -> str:
        return self._task_text

    @property
    def subtask(self) -> SubtaskState:
        return self.channel.state

    def coach(self, text: str, source: str = "coach") -> SubtaskState:
        """Write a subtask into the shared buffer at once (no recapture); the next chunk uses it."""
        check_text(text, "coaching text")
        tokens = self.tokenizer.encode(text, self.config.text_len)
        if self.config.subtasks and text.strip().lower() not in self.config.subtasks:
            unknown = [w for w in self.tokenizer.words(text) if w not in self.tokenizer.vocabulary]
            if unknown:
                raise ValueError(f"coaching text {text!r} has words the policy does not know: {unknown}")
        state = self.channel.publish(tokens, text, source, stream=self.planner_stream)
        self._subtask_texts[state.version] = text
        return state

    def reset(self) -> None:
        """Back to the state right after start-up (task and subtask cleared): bytes restored, no
        recapture. The host sets the next episode's task."""
        self.synchronize()
        with self.channel.lock:
            self.capsules.restore("initial")
            self.channel.reset_host_state()
        self.synchronize()
        self._subtask_texts = {0: ""}
        self._task_text = ""

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # --- planner ---------------------------------------------------------------------------------
    def planner_pieces(self, get_images: Callable[[], tuple[Sequence[np.ndarray], Sequence[str]] | None],
                       on_result: Callable[[SubtaskState | None], None],
                       allow_commit: Callable[[], bool] = lambda: True) -> list[Callable[[], None]]:
        """The planner as scheduler pieces: load inputs + stage 0, middle stages, last stage + commit."""
        graphs = self.planner_graphs
        skipped = [False]

        def load_and_first():
            inputs = get_images()
            skipped[0] = inputs is None or not self._task_text
            if skipped[0]:
                return
            self._load_images("planner.images", *inputs, stream=self.planner_stream)
            if len(graphs) > 1:
                graphs[0].replay()
                graphs[0].synchronize()

        def middle(g):
            def run():
                if not skipped[0]:
                    g.replay()
                    g.synchronize()
            return run

        def last():
            if not skipped[0]:
                on_result(self._plan_commit(allow_commit()))

        return [load_and_first, *[middle(g) for g in graphs[1:-1]], last]

    def plan(self, images: Sequence[np.ndarray], encodings: Sequence[str], allow_commit: bool = True
             ) -> SubtaskState | None:
        """Run the whole planner; commit and return the new subtask when it changed."""
        if not self._task_text:
            raise ValueError("no task set: call set_task() first")
        self._load_images("planner.images", images, encodings, stream=self.planner_stream)
        for g in self.planner_graphs[:-1]:
            g.replay()
        return self._plan_commit(allow_commit)

    def _plan_commit(self, allow_commit: bool) -> SubtaskState | None:
        with self.channel.lock:
            self.channel.writer_wait(self.planner_stream)
            self.planner_graphs[-1].replay()
            self.planner_graphs[-1].synchronize()
            text = self.config.subtasks[int(self.buffers.read("planner.choice")[0])]
            current = self.channel.state
            if not allow_commit or (text == current.text and current.source == "planner"):
                return None
            state = self.channel.commit(text, "planner", stream=self.planner_stream)
        self._subtask_texts[state.version] = text
        return state

    # --- actor -----------------------------------------------------------------------------------
    def act(self, images: Sequence[np.ndarray], encodings: Sequence[str], joint_positions: np.ndarray,
            chunk_seq: int = 0, action_origin: np.ndarray | None = None, prefix: np.ndarray | None = None,
            delay: int = 0) -> ChunkResult:
        """One action chunk from one observation: one graph replay for encode + all denoise steps.

        Real-time chunking: `prefix` [P, action_dim] (P <= horizon), the previous chunk's actions
        still to come in the units act's positions come out in, row i due with the new chunk's
        row i (observation stamp + (i + 1) dt); `delay` d: the new chunk's first d actions will
        be in the past when it is ready. Without a prefix: the plain graph, as if RTC were off.
        With one: the RTC graph of `rtc_mode` (guided: the prefix guides every denoise step with
        the schedule's weights; trained: its first min(d, P) actions are kept as a clean prefix)."""
        t0 = time.perf_counter()
        q = check_joints(joint_positions, self.config.state_dim)
        q0 = action_start(q, action_origin, self.config.action_dim)
        graph = self.actor_graph if prefix is None else self._load_prefix(prefix, delay)
        stream = self.actor_stream
        self._load_images("actor.images", images, encodings, stream=stream)
        self.buffers.write_many({"actor.state": q[None], **self.chunk_io.inputs(chunk_seq, q0)}, stream=stream)
        graph.replay()
        positions, velocities, nonfinite, version = self.chunk_io.collect(stream)
        return ChunkResult(
            chunk_seq=int(chunk_seq), positions=positions, velocities=velocities, dt=self.config.chunk_dt,
            subtask_version=version, subtask_text=self._subtask_texts.get(version, ""), nonfinite=nonfinite,
            latency_s=time.perf_counter() - t0)

    def _load_prefix(self, prefix: np.ndarray, delay: int) -> StaticGraph:
        """Check the prefix and delay, write them (normalised) and their weights into the static
        buffers; the RTC graph to replay."""
        if self.rtc_graph is None:
            raise ValueError("an RTC prefix was given, but this engine was built without rtc "
                             "(Engine(rtc=RtcSettings(...)); the host: overlap_policy 'rtc')")
        H, D = self.config.horizon, self.config.action_dim
        p = np.asarray(prefix, dtype=np.float32)
        if p.ndim != 2 or p.shape[1] != D or not 1 <= p.shape[0] <= H:
            raise ValueError(f"RTC prefix must be [P, {D}] with 1 <= P <= {H}, got shape {p.shape}")
        if not np.all(np.isfinite(p)):
            raise ValueError("RTC prefix is not finite")
        d = int(delay)
        if d < 0:
            raise ValueError(f"RTC delay must be >= 0, got {delay}")
        P = p.shape[0]
        mean, std = self._action_stats
        self._prefix_host.zero_()
        self._prefix_host[0, :P] = (torch.from_numpy(p) - mean) / std     # Actor.normalise_actions
        if self.rtc_mode == "trained":
            w = (torch.arange(H) < min(d, P)).to(torch.float32)
        else:
            w = prefix_weights(self._rtc_settings.schedule, d, min(self._rtc_settings.execution_horizon, P), H)
        self._weights_host[0, :, 0] = w
        self.buffers.write("actor.prefix", self._prefix_host, stream=self.actor_stream)
        self.buffers.write("actor.prefix_weights", self._weights_host, stream=self.actor_stream)
        return self.rtc_graph

    def _load_images(self, name: str, images: Sequence[np.ndarray], encodings: Sequence[str], stream) -> None:
        if len(images) != self.config.n_cameras or len(encodings) != len(images):
            raise ValueError(f"the policy takes {self.config.n_cameras} camera image(s), got {len(images)} "
                             f"images and {len(encodings)} encodings")
        with _on(stream):
            self.preprocess(list(images), list(encodings), self.buffers[name][0])
