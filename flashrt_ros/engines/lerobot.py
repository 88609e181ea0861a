"""The engine for a LeRobot π0 / π0.5 / SmolVLA checkpoint: the same host-facing surface as Engine
(act, set_task, coach, plan, reset, ...) so the ROS host serves either.

    engine = LerobotEngine(checkpoint="/robot/pi05_mytask", device="cuda", dtype="bfloat16")
    engine.set_task("pick up the red cup")
    chunk = engine.act(images, encodings, joint_positions, chunk_seq)

A LeRobot policy has no planner network: the task text is the subtask, and coaching replaces it.
- π0 and SmolVLA: the prompt's token ids (and mask) live in the SubtaskChannel's device slots; the
  actor graph reads the active slot, so a coached subtask lands there at once, no recapture.
- π0.5 writes the normalised state into its prompt, so the prompt changes every chunk: it is
  tokenised on the host per chunk (the `tokenizers` library, ~0.1 ms) from the current subtask and
  written into a static token buffer; the subtask version is tracked on the host.
Each chunk is TWO graph replays on one stream (runtime GraphChain): the cameras (the frames' resize-with-pad
and normalisation, the vision encoder), then the prefix encode + all denoise steps (see
models/lerobot/pi0.py). act() launches the camera graph as soon as the frames are copied and prepares the
state, prompt and noise while the device runs it. The uint8 frames (any size, any supported
encoding) are copied into pinned staging and on into a static device buffer ("actor.frames"); their
geometry goes into two small buffers the frame kernel reads inside the graph (runtime/triton_kernels.py),
so camera sizes may change between calls without a recapture, and act() allocates no device memory.
On the CPU the same function runs LeRobot's torch ops over the same buffers.

Real-time chunking (`rtc=RtcSettings(...)`, guided mode, models/rtc.py): a SECOND graph is captured,
the same network with every denoise step's velocity guided toward a prefix read from two static
buffers ("actor.rtc_prefix" [1, H, max_action_dim], normalised and zero-padded as LeRobot pads
prev_chunk_left_over; "actor.rtc_weights" [1, H, 1]). act(prefix=..., delay=d) normalises the prefix
(the inverse of the checkpoint's action unnormalisation), writes both buffers and replays that graph;
act() without a prefix replays the plain graph, unchanged (both after the same camera graph). jacobian "vjp" (ΠGDM) differentiates
through the action expert inside the graph: it is captured with autograd enabled (StaticGraph grad),
the backward kernels in the same CUDA graph. The trained (hard-prefix) mode is not available for
LeRobot checkpoints (see RTC_TRAINED_UNSUPPORTED).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .base import COMPILE_MIN_COS, ChunkIO, ChunkResult, _on, action_start, check_joints, check_text, compile_gate
from flashrt_ros.models.lerobot import load_policy
from flashrt_ros.models.lerobot.loader import PolicyDirError
from flashrt_ros.models.lerobot.quant import (QUANT_MAX_ERROR_RATIO, QUANT_MIN_COS, WEIGHT_MODES, fp8_supported,
                                              gate_passes, quantize_with_gate)
from flashrt_ros.models.rtc import Guidance, RtcSettings, prefix_weights
from flashrt_ros.runtime import (BufferSet, CapsuleStore, GraphChain, StaticGraph, SubtaskChannel, SubtaskState,
                                 resolve_device)
from flashrt_ros.runtime.kernels import Postprocessor, image_layout
from flashrt_ros.runtime import triton_kernels as tk

DEFAULT_CHUNK_DT = 0.02
MAX_FRAME_BYTES = 1920 * 1200 * 4   # per camera: the static frame buffer (a larger frame is refused, named)
FRAME_KERNEL_MAX_ABS = 1e-5          # the frame kernel's start-up gate vs LeRobot's torch ops (float32)
RTC_MODES = ("guided", "trained")
# prompt_tokens auto (π0.5): the task text's share of the prompt budget (π0's and SmolVLA's whole budget)
PROMPT_TASK_TOKENS = 48
FRAME_BUFFERS = ("actor.frames", "actor.frame_geometry", "actor.frame_scales")
# what the chunk's graph reads after the camera graph (the plain and the guided one)
ACTOR_READS = ("actor.images", "actor.features", "actor.state", "actor.prompt", "actor.noise", "actor.q0",
               "subtask.slots", "subtask.state")
RTC_TRAINED_UNSUPPORTED = (
    "rtc_mode 'trained' (hard prefix with per-token flow time) is not available for LeRobot checkpoints: "
    "LeRobot 0.6.1 trains π0, π0.5 and SmolVLA with one flow time per chunk (no training-time RTC setting, "
    "e.g. none in PI05Config), so no LeRobot checkpoint has learned clean-time prefix tokens, and these "
    "networks condition the action expert on a single time per step (π0.5's adaRMS tables, the π0/SmolVLA "
    "time MLP); use rtc_mode 'guided'")


@dataclass(frozen=True)
class LerobotInfo:
    """What the host reads about the model (the fields of ModelConfig it uses)."""
    name: str
    n_cameras: int
    image_size: int
    state_dim: int
    action_dim: int
    horizon: int
    num_steps: int
    chunk_dt: float = DEFAULT_CHUNK_DT
    subtasks: tuple[str, ...] = ()
    vocabulary: tuple[str, ...] = ()


class LerobotEngine:
    def __init__(self, checkpoint: str | Path | None = None, preset: str = "lerobot", device: str = "auto",
                 seed: int = 0, joint_limits: np.ndarray | None = None, max_velocity: np.ndarray | None = None,
                 planner_pieces: int = 1, dtype: str = "float32", compile_actor: bool | None = None,
                 weights: str = "bf16", fused_expert: bool = False,
                 tokenizer: str | Path | None = None, rtc: RtcSettings | None = None, rtc_mode: str = "guided",
                 max_frame_bytes: int = MAX_FRAME_BYTES, prompt_tokens: int = 0):
        if isinstance(prompt_tokens, bool) or int(prompt_tokens) != prompt_tokens or prompt_tokens < 0:
            raise ValueError(f"prompt_tokens must be an integer >= 0 (0: auto), got {prompt_tokens!r}")
        if rtc_mode not in RTC_MODES:
            raise ValueError(f"rtc_mode {rtc_mode!r}: expected one of {', '.join(RTC_MODES)}")
        if rtc_mode == "trained":
            raise ValueError(RTC_TRAINED_UNSUPPORTED)
        if rtc is not None and not isinstance(rtc, RtcSettings):
            raise TypeError(f"rtc must be an RtcSettings or None, got {type(rtc).__name__}")
        self.rtc, self.rtc_mode = rtc, rtc_mode
        if not checkpoint:
            raise PolicyDirError("a LeRobot model needs `checkpoint`: the policy directory")
        if weights not in WEIGHT_MODES:
            raise ValueError(f"weights {weights!r}: expected one of {', '.join(WEIGHT_MODES)}")
        self.device = resolve_device(device)
        self.dtype = getattr(torch, dtype)
        self.seed = int(seed)
        self.weights = weights
        # the fast path's action expert as the fused Triton layer-step kernels (runtime/fused_expert.py),
        # under the same start-up gate as the rest of the fast path; CUDA only (the CPU runs plain torch)
        # (bf16 weights: quantised ones have their own GEMM)
        if fused_expert and (self.device.type != "cuda" or weights != "bf16"):
            raise ValueError(f"fused_expert: the fused expert kernels run on a GPU with bf16 weights, not on "
                             f"{self.device} with weights {weights}")
        self.fused_expert = bool(fused_expert)
        if weights != "bf16":
            why = fp8_supported(self.device) if weights == "fp8" else None
            why = why or (tk.triton_error(self.device) if self.device.type == "cuda" else None)
            if why:
                raise RuntimeError(f"weights: {weights} on {self.device}: {why}")
        # quantised weights: loaded in float32 first, for the start-up gate's reference
        self.policy = p = load_policy(checkpoint, self.device, torch.float32 if weights != "bf16" else self.dtype,
                                      tokenizer=tokenizer)
        if p.config.get("use_relative_actions"):
            raise PolicyDirError(f"{checkpoint}: relative actions (use_relative_actions) are not supported yet")
        if p.tokenizer is None:
            p.tokenize("")  # raises the clear "no tokenizer.json" error
        self.prompt_tokens = self._prompt_budget(int(prompt_tokens))
        self._check_prompt_fits("")   # a budget too small for any prompt stops start-up
        self.actor = p.model
        self.notes: list[str] = []          # start-up facts the host logs (e.g. the compile gate)
        self.gates: dict[str, dict] = {}    # each start-up gate's numbers
        if weights != "bf16":
            self._quantize_gated(weights, len(p.camera_keys))
        if self.fused_expert and p.kind == "smolvla":
            raise ValueError("fused_expert: the fused expert kernels are π0/π0.5's (Gemma expert); SmolVLA has none")
        if compile_actor is None:   # the fast path by default on a GPU: π0, π0.5, SmolVLA
            compile_actor = self.device.type == "cuda" and hasattr(p.model, "compile_layers")
        if self.fused_expert and not compile_actor:
            raise ValueError("fused_expert: the fused kernels are part of the fast path; not with compile: false")
        if compile_actor:
            self._compile_gated(len(p.camera_keys))
        self.config = LerobotInfo(name=f"lerobot_{p.kind}", n_cameras=len(p.camera_keys),
                                  image_size=p.model.image_size, state_dim=p.state_dim, action_dim=p.action_dim,
                                  horizon=p.n_action_steps, num_steps=int(p.config.get("num_inference_steps",
                                                                                       p.config.get("num_steps", 10))))
        D, H, L = p.action_dim, p.chunk_size, self.prompt_tokens
        limits = np.asarray(joint_limits if joint_limits is not None else [[-np.inf, np.inf]] * D, np.float32)
        vmax = np.asarray(max_velocity if max_velocity is not None else [np.inf] * D, np.float32)
        if limits.shape != (D, 2) or vmax.shape != (D,):
            raise ValueError(f"joint_limits must be [{D}, 2] and max_velocity [{D}], got {limits.shape} and {vmax.shape}")

        on_gpu = self.device.type == "cuda"
        self.actor_stream = torch.cuda.Stream(self.device, priority=-3) if on_gpu else None
        self.planner_stream = None
        self.planner_graphs: list[StaticGraph] = []
        b = self.buffers = BufferSet(self.device)
        self.prompt_in_channel = p.kind != "pi05"
        # channel slot = [token ids | mask as 0/1]
        self.channel = SubtaskChannel(b, 2 * L, actor_stream=self.actor_stream)
        R, n = p.model.image_size, len(p.camera_keys)
        b.declare("actor.images", (1, n, 3, R, R), torch.float32)
        self._init_frames(n, int(max_frame_bytes))
        b.declare("actor.state", (1, int(p.config["max_state_dim"])), torch.float32)
        self._state_host = np.zeros((1, int(p.config["max_state_dim"])), np.float32)
        b.declare("actor.prompt", (1, 2 * L), torch.int64)       # π0.5: this chunk's prompt
        b.declare("actor.noise", (1, H, int(p.config["max_action_dim"])), torch.float32)
        b.declare("actor.actions", (1, H, D), torch.float32)     # normalised, before the post kernel
        b.declare("actor.subtask_version", (1,), torch.int64)
        self._img_masks = torch.ones(1, n, dtype=torch.bool, device=self.device)
        scale, offset = p.post["action"].affine(inverse=True) if "action" in p.post else (torch.ones(D),
                                                                                           torch.zeros(D))
        # unnormalise (x * scale + offset), clamp, velocities: one kernel (the reference's post)
        self.postprocess = Postprocessor(offset.numpy(), scale.numpy(), limits, vmax, self.config.chunk_dt,
                                         H, self.device)
        self.chunk_io = ChunkIO(b, self.postprocess, self.seed)
        # the chunk is two graphs on the actor stream: the cameras (frames -> images -> vision encoder ->
        # image features), then the rest. act() launches the first as soon as the frames are copied and
        # prepares the state, prompt and noise while the device encodes the cameras
        with torch.inference_mode():
            feats = self.actor.embed_images(b["actor.images"])
        b.declare("actor.features", tuple(feats.shape), feats.dtype)
        del feats
        self.vision_graph = StaticGraph("actor_vision", self._vision_fn, b, reads=list(FRAME_BUFFERS),
                                        writes=["actor.images", "actor.features"], stream=self.actor_stream).capture()
        self.actor_graph = GraphChain("actor", self.vision_graph, StaticGraph(
            "actor_chunk", lambda bufs: self._actor_fn(bufs, vision=False), b, reads=ACTOR_READS,
            writes=["actor.actions", "actor.subtask_version"], stream=self.actor_stream).capture())
        self.rtc_graph: GraphChain | None = None
        if rtc is not None:
            b.declare("actor.rtc_prefix", (1, H, int(p.config["max_action_dim"])), torch.float32)
            b.declare("actor.rtc_weights", (1, H, 1), torch.float32)
            self.rtc_graph = self.capture_rtc_graph(rtc)
            self.notes.append(f"rtc: guided ({rtc.jacobian}), schedule {rtc.schedule}, execution horizon "
                              f"{rtc.execution_horizon}, max guidance weight {rtc.max_guidance_weight}: a second "
                              f"actor graph")
        inputs = ["actor.state", *(() if self.prompt_in_channel else ("actor.prompt",)), "actor.noise", "actor.q0"]
        b.prepare_many(inputs)   # act()'s one input copy (and with an RTC prefix)
        if rtc is not None:
            b.prepare_many([*inputs, "actor.rtc_prefix", "actor.rtc_weights"])
        self.capsules = CapsuleStore(b)
        self.capsules.snapshot("initial")
        self._task_text = ""
        self._subtask = SubtaskState(0, "", "none")   # π0.5's host-side subtask

    def _prompt_budget(self, asked: int) -> int:
        """The prompt's token slots in the graph. LeRobot pads every prompt to tokenizer_max_length (π0.5:
        200) and the VLM runs over the padding too; masked, it changes no valid token's output, so a
        shorter static budget gives the same chunk for less prefix work. 0 (auto): π0 and SmolVLA keep
        tokenizer_max_length (48); π0.5 gets room for the state at its longest (every bin 3 digits) plus
        PROMPT_TASK_TOKENS of task text, in multiples of 16, at most tokenizer_max_length. A task or
        coaching text that does not fit a budget below tokenizer_max_length is refused when it is set
        (_check_prompt_fits); at tokenizer_max_length longer prompts are truncated as LeRobot truncates."""
        p = self.policy
        if asked > p.max_length:
            raise ValueError(f"prompt_tokens {asked} is more than the policy's tokenizer_max_length {p.max_length}")
        if asked:
            return asked
        if p.kind != "pi05":
            return p.max_length
        need = p.count_tokens(p.prompt("", np.ones(p.state_dim, np.float32))) + PROMPT_TASK_TOKENS
        return min(p.max_length, -(-need // 16) * 16)

    def _check_prompt_fits(self, text: str) -> None:
        """Refuse a task / coaching text whose prompt cannot fit the graph's prompt_tokens (below LeRobot's
        own tokenizer_max_length; π0.5: with the state at its longest, every bin 3 digits)."""
        p, L = self.policy, self.prompt_tokens
        if L >= p.max_length:
            return
        prompt = p.prompt(text, np.ones(p.state_dim, np.float32)) if p.kind == "pi05" else p.prompt(text)
        n = p.count_tokens(prompt)
        if n > L:
            raise ValueError(f"the text's prompt is {n} tokens{' with the state' if p.kind == 'pi05' else ''}, more "
                             f"than the graph's prompt_tokens {L}: shorten it or raise prompt_tokens (at most "
                             f"{p.max_length})")

    def _quantize_gated(self, kind: str, n_cameras: int) -> None:
        """Weight-only quantisation behind its start-up gate (quant.quantize_with_gate): cosine >=
        QUANT_MIN_COS vs the float32 network and mean |error| <= QUANT_MAX_ERROR_RATIO x the bf16 network's,
        on seeded probes. Else start-up stops with the numbers: no silent fallback."""
        g = self.gates["weights"] = quantize_with_gate(self.policy, kind, self.dtype, n_cameras)
        q = g["quantised"]
        if not gate_passes(g):
            raise RuntimeError(
                f"weights: {kind} refused by the start-up gate: vs the float32 network, cosine {q['cos']:.6f} "
                f"(needs >= {QUANT_MIN_COS}), mean |error| {q['mean_abs']:.4g} = {g['error_ratio']:.2f}x the bf16 "
                f"network's {g['bf16']['mean_abs']:.4g} (needs <= {QUANT_MAX_ERROR_RATIO}x). Use weights: bf16")
        self.notes.append(f"weights: {kind} ({g['layers']} layers), cosine {q['cos']:.6f} vs float32, mean |error| "
                          f"{q['mean_abs']:.3g} = {g['error_ratio']:.2f}x bf16's ({g['bf16']['mean_abs']:.3g})")

    def _compile_gated(self, n_cameras: int) -> None:
        """The fast path (compiled layers; on a GPU the Triton attention, optionally the fused expert) behind
        its start-up gate: on seeded inputs its chunk must match the plain path's (base.compile_gate: cosine
        >= COMPILE_MIN_COS), else start-up stops (FastPathRefused). Compilation happens here, before the
        graph is captured."""
        net = self.policy.model
        if not hasattr(net, "compile_layers"):
            raise PolicyDirError(f"compile: the {self.policy.kind} network has no compiled path")
        probe = {k: v.to(self.device) for k, v in self.policy.probe_inputs(n_cameras, tokens=self.prompt_tokens).items()}
        t0 = time.perf_counter()
        with torch.inference_mode():
            plain = net(*probe.values())
            net.compile_layers(kernels=self.device.type == "cuda", fused=self.fused_expert)
            fast = net(*probe.values())
        what = "fused_expert: the fused expert kernels" if net._fused else "compile: the compiled fast path"
        gate = compile_gate(plain, fast, what, COMPILE_MIN_COS)
        self.gates["compile"] = {**gate, "kernels": self.device.type == "cuda", "fused_expert": net._fused}
        self.notes.append(f"compile: layers compiled{' (expert: fused kernels)' if net._fused else ''} in "
                          f"{time.perf_counter() - t0:.1f} s, cosine {gate['cos']:.7f} vs the plain path")

    # --- camera frames ---------------------------------------------------------------------------------
    def _init_frames(self, n: int, capacity: int) -> None:
        """The static frame buffers, the pinned staging they are filled from, and (on a GPU) the frame
        kernel's start-up gate against LeRobot's torch ops."""
        b, net = self.buffers, self.policy.model
        b.declare("actor.frames", (n, capacity), torch.uint8)
        b.declare("actor.frame_geometry", (n, tk.GEOMETRY_FIELDS), torch.int32)
        b.declare("actor.frame_scales", (n, 2), torch.float32)
        self._frame_capacity = capacity
        self._pad = (bool(net.pad_centred), bool(net.pad_clamp))
        self._geometry_host = np.zeros((n, tk.GEOMETRY_FIELDS), np.int32)
        self._scales_host = np.zeros((n, 2), np.float32)
        self._geometry_written = None   # what the geometry buffers hold (None: unknown, write them)
        self._frames_staging = self._frames_np = self._frames_copied = None
        if self.device.type != "cuda":
            return
        self._frames_staging = torch.empty(n, capacity, dtype=torch.uint8, pin_memory=True)
        self._frames_np = self._frames_staging.numpy()
        if tk.triton_error(self.device) is not None:
            raise RuntimeError(f"LeRobot engine on {self.device}: the in-graph frame kernel needs Triton "
                               f"({tk.triton_error(self.device)}); install the Triton that matches torch")
        # gate: a 640x480 rgb8 and a 300x200 bgr8 probe frame through the kernel vs the torch reference
        rng = np.random.default_rng(0)
        probes = [(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), "rgb8"),
                  (rng.integers(0, 256, (200, 300, 3), dtype=np.uint8), "bgr8")]
        frames = torch.zeros(2, 640 * 480 * 3, dtype=torch.uint8, device=self.device)
        geo = []
        for i, (img, enc) in enumerate(probes):
            frames[i, : img.size].copy_(torch.from_numpy(img.reshape(-1)))
            geo.append(tk.frame_geometry(img.shape[0], img.shape[1], enc, net.image_size, *self._pad))
        R = net.image_size
        fast = torch.empty(2, 3, R, R, device=self.device)
        ref = torch.empty(2, 3, R, R, device=self.device)
        tk.frames_to_images(frames, torch.tensor([g[:8] for g in geo], dtype=torch.int32, device=self.device),
                            torch.tensor([g[8:] for g in geo], dtype=torch.float32, device=self.device), fast)
        tk.frames_to_images_reference(frames, geo, R, ref)
        err = float((fast - ref).abs().max())
        if not err <= FRAME_KERNEL_MAX_ABS:
            raise RuntimeError(f"the frame kernel differs from LeRobot's resize-with-pad by {err:.3g} "
                               f"(gate {FRAME_KERNEL_MAX_ABS}): refusing to start")
        self.notes.append(f"frames: resize-with-pad in the graph (Triton), max |diff| {err:.2g} vs the torch ops")

    def _write_frames(self, images, encodings, stream) -> None:
        """Validate every frame, then copy them into the static frame buffer (GPU: through pinned
        staging, asynchronously on `stream`) and their geometry into the geometry buffers."""
        R, cap = self.policy.model.image_size, self._frame_capacity
        layouts = [image_layout(img, enc) for img, enc in zip(images, encodings)]
        for i, ((h, w, c, _), enc) in enumerate(zip(layouts, encodings)):
            if h * w * c > cap:
                raise ValueError(f"camera {i}: a {w}x{h} {enc} frame is {h * w * c} bytes, more than the engine's "
                                 f"frame buffer ({cap} bytes per camera, max_frame_bytes)")
            g = tk.frame_geometry(h, w, enc, R, *self._pad)
            self._geometry_host[i] = g[:8]
            self._scales_host[i] = g[8:]
        frames = self.buffers["actor.frames"]
        on_gpu = self._frames_np is not None
        if on_gpu and self._frames_copied is not None:
            self._frames_copied.synchronize()   # the last copies out of the staging buffer have finished
        for i, (img, (h, w, c, _)) in enumerate(zip(images, layouts)):
            if isinstance(img, torch.Tensor) and img.device.type != "cpu":
                with _on(stream):
                    frames[i, : h * w * c].view(h, w, c).copy_(img.reshape(h, w, c))
                continue
            src = img.numpy() if isinstance(img, torch.Tensor) else img
            dst = self._frames_np[i] if on_gpu else frames[i].numpy()
            np.copyto(dst[: h * w * c].reshape(h, w, c), src.reshape(h, w, c))
            if on_gpu:
                with _on(stream):
                    frames[i, : h * w * c].copy_(self._frames_staging[i, : h * w * c], non_blocking=True)
        if on_gpu:
            if self._frames_copied is None:
                self._frames_copied = torch.cuda.Event()
            self._frames_copied.record(stream)
        if self._geometry_written is None or not (np.array_equal(self._geometry_written[0], self._geometry_host)
                                                  and np.array_equal(self._geometry_written[1], self._scales_host)):
            self.buffers.write("actor.frame_geometry", self._geometry_host, stream=stream)
            self.buffers.write("actor.frame_scales", self._scales_host, stream=stream)
            self._geometry_written = (self._geometry_host.copy(), self._scales_host.copy())

    def _frames_to_images(self, b: BufferSet) -> None:
        images = b["actor.images"][0]
        if self.device.type == "cuda":
            tk.frames_to_images(b["actor.frames"], b["actor.frame_geometry"], b["actor.frame_scales"], images)
        else:   # eager on the CPU: LeRobot's own ops, the geometry read back from its buffer
            geo = [tk.FrameGeometry(*g, *s) for g, s in zip(b["actor.frame_geometry"].tolist(),
                                                            b["actor.frame_scales"].tolist())]
            tk.frames_to_images_reference(b["actor.frames"], geo, images.shape[-1], images)

    # --- the graphs ----------------------------------------------------------------------------------
    def _vision_fn(self, b: BufferSet) -> None:
        """The cameras: frames -> images (resize-with-pad, normalisation) -> the vision encoder's features."""
        self._frames_to_images(b)
        b["actor.features"].copy_(self.actor.embed_images(b["actor.images"]))

    def _actor_fn(self, b: BufferSet, guidance: Guidance | None = None, vision: bool = True) -> None:
        """The whole chunk (vision=False: from the image features _vision_fn left in their buffer)."""
        L = self.prompt_tokens
        if vision:
            self._vision_fn(b)
        slot, version = self.channel.read_in_graph(b)
        prompt = slot if self.prompt_in_channel else b["actor.prompt"]
        tokens, mask = prompt[:, :L], prompt[:, L:] != 0
        out = self.actor(b["actor.images"], self._img_masks, tokens, mask, b["actor.state"], b["actor.noise"],
                         guidance=guidance, features=b["actor.features"])
        b["actor.actions"].copy_(out[..., : self.policy.action_dim])
        b["actor.subtask_version"].copy_(version)
        self.chunk_io.in_graph(b)

    def capture_rtc_graph(self, rtc: RtcSettings) -> GraphChain:
        """The guided actor graph for `rtc` over the engine's buffers, after the same camera graph (the
        constructor captures the one act() replays; a benchmark may capture another jacobian's). vjp:
        autograd inside the graph."""
        def guided_fn(b: BufferSet) -> None:
            self._actor_fn(b, Guidance(b["actor.rtc_prefix"], b["actor.rtc_weights"], float(rtc.max_guidance_weight),
                                       rtc.jacobian), vision=False)
        return GraphChain(f"actor_rtc_{rtc.jacobian}", self.vision_graph, StaticGraph(
            f"actor_rtc_{rtc.jacobian}_chunk", guided_fn, self.buffers,
            reads=[*ACTOR_READS, "actor.rtc_prefix", "actor.rtc_weights"],
            writes=["actor.actions", "actor.subtask_version"], stream=self.actor_stream,
            grad=rtc.jacobian == "vjp").capture())

    def rtc_inputs(self, prefix, delay: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The prefix [P, action_dim] in action units -> what "actor.rtc_prefix" holds (normalised as
        LeRobot's preprocessor normalises actions, zero-padded to [1, H, max_action_dim]) and the weights
        prefix_weights(schedule, delay, min(execution_horizon, P), H) as "actor.rtc_weights" [1, H, 1]."""
        rtc, p = self.rtc, self.policy
        H, D = p.chunk_size, p.action_dim
        pre = np.asarray(prefix, dtype=np.float32)
        if pre.ndim != 2 or pre.shape[1] != D or not 1 <= pre.shape[0] <= H:
            raise ValueError(f"the RTC prefix must be [P, {D}] with 1 <= P <= {H} (the chunk), got {list(pre.shape)}")
        if not np.all(np.isfinite(pre)):
            raise ValueError("the RTC prefix has non-finite values")
        if isinstance(delay, bool) or int(delay) != delay or delay < 0:
            raise ValueError(f"the RTC delay must be an integer >= 0, got {delay!r}")
        P = pre.shape[0]
        norm = torch.from_numpy(pre)
        norm = p.post["action"].normalize(norm) if "action" in p.post else norm
        padded = torch.zeros(tuple(self.buffers["actor.rtc_prefix"].shape), dtype=torch.float32)
        padded[0, :P, :D] = norm
        weights = prefix_weights(rtc.schedule, int(delay), min(rtc.execution_horizon, P), H)
        return padded, weights.view(1, H, 1)

    # --- task / coaching -----------------------------------------------------------------------------
    def set_task(self, text: str) -> None:
        """The task is the first subtask (a LeRobot policy has no planner)."""
        check_text(text, "task")
        self._task_text = text
        self._publish(text, "operator")   # the operator's task is the subtask

    @property
    def task(self) -> str:
        return self._task_text

    @property
    def subtask(self) -> SubtaskState:
        return self.channel.state if self.prompt_in_channel else self._subtask

    def coach(self, text: str, source: str = "coach") -> SubtaskState:
        check_text(text, "coaching text")
        return self._publish(text, source)

    def _publish(self, text: str, source: str) -> SubtaskState:
        self._check_prompt_fits(text)
        if not self.prompt_in_channel:
            self.policy.tokenize(text)   # fail here, not at the next chunk, if it cannot be tokenised
            self._subtask = SubtaskState(self._subtask.version + 1, text, source)
            return self._subtask
        tokens, mask = self.policy.tokenize(self.policy.prompt(text), self.prompt_tokens)
        return self.channel.publish(np.concatenate([tokens, mask.astype(np.int64)]), text, source)

    def plan(self, images, encodings, allow_commit: bool = True) -> SubtaskState | None:
        return None   # no planner network

    def planner_pieces(self, get_images: Callable, on_result: Callable, allow_commit: Callable = lambda: True
                       ) -> list[Callable[[], None]]:
        return [lambda: None]

    def reset(self) -> None:
        self.synchronize()
        with self.channel.lock:
            self.capsules.restore("initial")
            self.channel.reset_host_state()
            self._geometry_written = None   # the capsule rewrote the geometry buffers
        self.synchronize()
        self._task_text = ""
        self._subtask = SubtaskState(0, "", "none")

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # --- the actor -----------------------------------------------------------------------------------
    def act(self, images: Sequence[np.ndarray], encodings: Sequence[str], joint_positions: np.ndarray,
            chunk_seq: int = 0, action_origin: np.ndarray | None = None, prefix: np.ndarray | None = None,
            delay: int = 0) -> ChunkResult:
        """One chunk. prefix (real-time chunking, needs `rtc`): float32 [P, action_dim] in action units,
        row i the action due at the observation stamp + (i + 1) * dt (aligned with the chunk's rows),
        P <= the chunk's rows; delay: how many of its leading actions run before this chunk can.
        Without a prefix (None, or 0 rows) the plain chunk."""
        t0 = time.perf_counter()
        p = self.policy
        guided = prefix is not None and np.size(prefix) > 0
        if guided and self.rtc_graph is None:
            raise ValueError("act(prefix=...): this engine was built without real-time chunking (rtc=None)")
        rtc_in = self.rtc_inputs(prefix, delay) if guided else None   # checked before anything is written
        q = check_joints(joint_positions, p.state_dim)
        q0 = action_start(q, action_origin, self.config.action_dim)
        if len(images) != self.config.n_cameras or len(encodings) != len(images):
            raise ValueError(f"the policy takes {self.config.n_cameras} camera image(s) {p.camera_keys}, got "
                             f"{len(images)} images and {len(encodings)} encodings")
        stream = self.actor_stream
        self._write_frames(images, encodings, stream)   # first: its copy runs while the rest is prepared
        self.vision_graph.replay()                      # and the cameras' encoder (everything below waits)
        state = p.normalize_state_np(q)
        self._state_host[0, : state.shape[0]] = state     # zero-padded to max_state_dim
        inputs = {"actor.state": self._state_host}
        subtask = self._subtask
        if not self.prompt_in_channel:
            tokens, mask = p.tokenize(p.prompt(subtask.text, state), self.prompt_tokens,
                                      strict=self.prompt_tokens < p.max_length)
            inputs["actor.prompt"] = np.concatenate([tokens, mask.astype(np.int64)])[None]
        inputs.update(self.chunk_io.inputs(chunk_seq, q0))
        if rtc_in is not None:
            inputs.update({"actor.rtc_prefix": rtc_in[0], "actor.rtc_weights": rtc_in[1]})
        self.buffers.write_many(inputs, stream=stream)     # one host-to-device copy for all of them
        (self.actor_graph if rtc_in is None else self.rtc_graph).graphs[-1].replay()   # the rest of the chunk
        positions, velocities, nonfinite, version = self.chunk_io.collect(stream)
        if self.prompt_in_channel:
            text = self.channel.state.text if version == self.channel.state.version else ""
        else:
            version, text = subtask.version, subtask.text
        return ChunkResult(chunk_seq=int(chunk_seq), positions=positions, velocities=velocities,
                           dt=self.config.chunk_dt, subtask_version=version, subtask_text=text, nonfinite=nonfinite,
                           latency_s=time.perf_counter() - t0)

