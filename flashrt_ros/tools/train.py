"""Train the reference planner and actor on the tabletop world (CPU, minutes).

    python -m flashrt_ros.tools.train --out flashrt_ros/models/weights/reference
    flashrt-ros train --critic [--out DIR] [...]   # the value critic instead: flashrt_ros.tools.train_critic

Data: the scripted expert labels states of seeded training worlds (seeds below
`TRAIN_SEED_LIMIT`; evaluation uses seeds from `flashrt_ros.tools.evaluate.HELD_OUT_SEED_START`).
The expert's labels depend on the state only (next unvisited target; straight line toward it), so
instead of recording expert episodes and relabelling the policy's own visits (DAgger), states are
sampled to cover everything the closed loop can reach: the robot anywhere on the table, near or on
targets, on the expert's path with noise, any number of targets visited. The actor is also taught
subtasks that are not the expert's next one (any colour, "done"), which is what coaching needs.

Planner: cross-entropy over the subtask texts. Actor: flow matching with the convention of
`flashrt_ros.models.actor` (x_t = t * actions + (1 - t) * noise, loss on the velocity
actions - noise), t drawn with more weight near the noise end as in π0.

Training-time RTC (arXiv 2512.05964, for `overlap_policy: rtc`, `rtc_mode: trained`): a share of
the actor's examples (1 - `--rtc-plain-fraction`) get a delay d in [1, `--rtc-max-delay`] (default
horizon / 2); their first d actions are given clean (flow time 1 for those tokens) and the loss is on
the rest only. Their chunks are `rtc_chunk`: the prefix is a plan the robot was already following,
the rest the expert's continuation from its end (with the expert's own chunk as the prefix the model
learns to ignore it: the observation already says everything). `--actor-init` fine-tunes an actor
that exists (the shipped one is the plain recipe's actor fine-tuned so, see its config.json).

Cost and shape of learning: ~12 min on 2 idle CPU cores (data 1 min, planner 2500 steps ~5 min,
actor 2500 steps ~6 min); `--device cuda` runs the same recipe in ~5 min. Both losses sit on a
plateau (the model has not yet tied colour words to image patches) and then drop within a few
hundred steps: the actor around step 1200-2000, the planner around 800-1800. Batch 128 escapes
it reliably in these step counts; batch 64 or widths of 64 often did not (seen on the H100).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models import Actor, ModelConfig, Planner, WordTokenizer, images_to_model, save_checkpoint
from ..models.checkpoint import ACTOR_FILE, PLANNER_FILE, load_into
from ..sim import TabletopWorld, WorldConfig, expert_chunk, subtask_for
from ..sim.expert import straight_line_chunk
from ..sim.tabletop import COLOURS, colour_of

TRAIN_SEED_LIMIT = 100_000


@dataclass
class Dataset:
    images: torch.Tensor  # uint8 [N, n_cam, S, S, 3]
    tokens: torch.Tensor  # int64 [N, L]
    state: torch.Tensor  # float32 [N, 2]
    labels: torch.Tensor  # planner: int64 [N]; actor: float32 [N, H, 2] chunks in joint units
    delays: torch.Tensor | None = None  # actor with training-time RTC: int64 [N], the clean prefix length


def _robot_position(world: TabletopWorld, rng: np.random.Generator, goal: np.ndarray) -> np.ndarray:
    """A robot position the closed loop can plausibly be in while heading for `goal`."""
    kind = rng.random()
    if kind < 0.35:  # anywhere: recovery from the policy's own errors
        p = rng.uniform(0.0, 1.0, 2)
    elif kind < 0.65:  # close to the goal: the last centimetres decide the visit
        p = goal + rng.normal(0.0, 0.06, 2)
    elif kind < 0.85:  # on (or just visited) another target: where each leg starts
        other = world.targets[world.task[rng.integers(len(world.task))]]
        p = other + rng.normal(0.0, 0.03, 2)
    else:  # on the straight path from a random point, with sideways noise
        start = rng.uniform(0.0, 1.0, 2)
        p = start + rng.random() * (goal - start) + rng.normal(0.0, 0.03, 2)
    return np.clip(p, 0.0, 1.0).astype(np.float32)


def collect_planner_data(config: ModelConfig, n: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    world = TabletopWorld(WorldConfig(image_size=config.image_size))
    tokenizer = WordTokenizer(config.vocabulary)
    images = np.empty((n, 1, config.image_size, config.image_size, 3), np.uint8)
    tokens = np.empty((n, config.task_len), np.int64)
    state = np.empty((n, 2), np.float32)
    labels = np.empty(n, np.int64)
    for i in range(n):
        world.reset(int(rng.integers(TRAIN_SEED_LIMIT)))
        n_visited = int(rng.integers(len(world.task) + 1))
        world.set_state(world.position, n_visited)
        # just after a visit the robot sits on the last visited target, otherwise anywhere
        anchor = world.targets[world.visited[-1]] if world.visited and rng.random() < 0.4 else rng.uniform(0, 1, 2)
        position = _robot_position(world, rng, anchor)
        nxt = world.next_target
        if nxt is not None and np.linalg.norm(position - world.targets[nxt]) <= world.config.visit_radius:
            position = np.clip(anchor + rng.normal(0, 0.3, 2), 0, 1)  # would already count as visited
            if np.linalg.norm(position - world.targets[nxt]) <= world.config.visit_radius:
                world.visited.append(nxt)
        world.set_state(position)
        images[i, 0] = world.render()
        tokens[i] = tokenizer.encode(world.task_text, config.task_len)
        state[i] = world.position
        labels[i] = config.subtasks.index(subtask_for(world.next_target))
    return Dataset(*(torch.from_numpy(a) for a in (images, tokens, state, labels)))


def rtc_chunk(world: TabletopWorld, subtask: str, horizon: int, delay: int, rng: np.random.Generator
              ) -> np.ndarray:
    """A training chunk for training-time RTC with a clean prefix of `delay` actions: the prefix is
    a plan the robot was already following (the previous chunk, computed earlier: offset from where
    the robot is now, and after a subtask change heading for another target), and the rest is the
    expert's continuation *from the prefix's end*. With the expert's own chunk as prefix the rest
    would follow from the observation alone and the model could ignore the prefix; this way the
    loss rewards continuing it, which is what RTC needs at a chunk boundary."""
    step = world.config.max_speed * world.config.dt
    colour = colour_of(subtask)
    goal = world.position if colour is None else world.targets[colour]
    old_goal = goal
    if rng.random() < 0.25:                       # the previous chunk went somewhere else
        old_goal = world.targets[COLOURS[rng.integers(len(COLOURS))]]
    start = np.clip(world.position + rng.normal(0.0, 0.015, 2), 0.0, 1.0)
    prefix = straight_line_chunk(start, old_goal, delay, step * rng.uniform(0.7, 1.0))
    rest = straight_line_chunk(prefix[-1], goal, horizon - delay, step)
    return np.concatenate([prefix, rest]).astype(np.float32)


def collect_actor_data(config: ModelConfig, n: int, seed: int, rtc_max_delay: int = 0,
                       rtc_plain_fraction: float = 1.0) -> Dataset:
    """The actor's examples; with rtc_max_delay > 0 a delay per example (0 for `rtc_plain_fraction`
    of them, else uniform in [1, rtc_max_delay]) and `rtc_chunk` labels where it is > 0."""
    rng = np.random.default_rng(seed)
    delays = np.zeros(n, np.int64)
    world = TabletopWorld(WorldConfig(image_size=config.image_size, dt=config.chunk_dt))
    tokenizer = WordTokenizer(config.vocabulary)
    colours = [s.split()[-1] for s in config.subtasks if s != "done"]
    images = np.empty((n, 1, config.image_size, config.image_size, 3), np.uint8)
    tokens = np.empty((n, config.text_len), np.int64)
    state = np.empty((n, 2), np.float32)
    chunks = np.empty((n, config.horizon, 2), np.float32)
    for i in range(n):
        world.reset(int(rng.integers(TRAIN_SEED_LIMIT)))
        world.set_state(world.position, int(rng.integers(len(world.task) + 1)))
        kind = rng.random()
        if kind < 0.6:
            subtask = subtask_for(world.next_target)  # what the planner will ask for
        elif kind < 0.95:
            subtask = subtask_for(colours[rng.integers(len(colours))])  # coaching: any colour, visited or not
        else:
            subtask = "done"
        goal_colour = subtask.split()[-1] if subtask != "done" else world.task[rng.integers(len(world.task))]
        world.set_state(_robot_position(world, rng, world.targets[goal_colour]))
        images[i, 0] = world.render()
        tokens[i] = tokenizer.encode(subtask, config.text_len)
        state[i] = world.position
        chunks[i] = expert_chunk(world, subtask, config.horizon)
        if rtc_max_delay > 0 and rng.random() >= rtc_plain_fraction:
            delays[i] = rng.integers(1, rtc_max_delay + 1)
            chunks[i] = rtc_chunk(world, subtask, config.horizon, int(delays[i]), rng)
    return Dataset(*(torch.from_numpy(a) for a in (images, tokens, state, chunks)),
                   delays=torch.from_numpy(delays) if rtc_max_delay > 0 else None)


def _learning_rate(step: int, steps: int, peak: float, warmup: int = 100) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _batches(n: int, batch: int, steps: int, generator: torch.Generator):
    order = torch.randperm(n, generator=generator)
    cursor = 0
    for _ in range(steps):
        if cursor + batch > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        yield order[cursor:cursor + batch]
        cursor += batch


def train_planner(planner: Planner, data: Dataset, steps: int, batch: int, lr: float, seed: int, log=print) -> None:
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(planner.parameters(), lr=lr, weight_decay=0.01)
    planner.train()
    start = time.time()
    for step, index in enumerate(_batches(len(data.labels), batch, steps, generator)):
        for group in optimiser.param_groups:
            group["lr"] = _learning_rate(step, steps, lr)
        device = planner.head.weight.device
        labels = data.labels[index].to(device)
        logits = planner(images_to_model(data.images[index]).to(device), data.tokens[index].to(device))
        loss = F.cross_entropy(logits, labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(planner.parameters(), 1.0)
        optimiser.step()
        if step % 200 == 0 or step == steps - 1:
            accuracy = (logits.argmax(-1) == labels).float().mean().item()
            log(f"planner step {step:5d} loss {loss.item():.4f} batch accuracy {accuracy:.3f} "
                f"({time.time() - start:.0f} s)")
    planner.eval()


def sample_flow_time(n: int, generator: torch.Generator) -> torch.Tensor:
    """t in [0, 0.999], denser near t = 0 (noise): π0's Beta(1.5, 1) on its reversed time."""
    s = torch.rand(n, generator=generator) ** (1 / 1.5)  # inverse CDF of Beta(1.5, 1)
    return 1.0 - (0.999 * s + 0.001)


def sample_delays(n: int, max_delay: int, plain_fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Training-time RTC's delay per example: 0 (the plain chunk) for `plain_fraction` of them,
    else uniform in [0, max_delay]. int64 [n]."""
    d = torch.randint(0, max_delay + 1, (n,), generator=generator)
    plain = torch.rand(n, generator=generator) < plain_fraction
    return torch.where(plain, torch.zeros_like(d), d)


def flow_matching_loss(actor: Actor, images, state, tokens, actions, generator, samples_per_observation: int,
                       rtc_max_delay: int = 0, rtc_plain_fraction: float = 1.0, delays=None):
    """Mean squared error of the predicted velocity; each encoded prefix serves several (t, noise).

    With rtc_max_delay > 0, training-time RTC (arXiv 2512.05964): per example a delay d, the first
    d actions are given clean (x = the action, flow time 1 for those tokens) and the loss is on the
    rest only; `rtc_plain_fraction` of the examples have d = 0 (the plain chunk). `delays` [N]: the
    examples' own d (their labels were made for it: `rtc_chunk`) instead of drawing one."""
    context, state_feature = actor.condition(actor.encode(images, state, tokens))
    repeat = lambda x: x.repeat_interleave(samples_per_observation, dim=0)  # noqa: E731
    condition = [(repeat(k), repeat(v)) for k, v in context], repeat(state_feature)
    target = actor.normalise_actions(actions).repeat_interleave(samples_per_observation, dim=0)
    noise = torch.randn(target.shape, generator=generator).to(target.device)
    t = sample_flow_time(len(target), generator).to(target.device)
    if rtc_max_delay <= 0 and delays is None:
        x_t = t[:, None, None] * target + (1 - t[:, None, None]) * noise
        return F.mse_loss(actor.velocity_from(condition, x_t, t), target - noise)
    if delays is not None:
        d = delays.to(target.device).repeat_interleave(samples_per_observation, dim=0)
    else:
        d = sample_delays(len(target), rtc_max_delay, rtc_plain_fraction, generator).to(target.device)
    clean = torch.arange(target.shape[1], device=target.device)[None] < d[:, None]     # [N, H]
    t_tokens = torch.where(clean, torch.ones_like(t)[:, None], t[:, None])             # [N, H]
    x_t = t_tokens[..., None] * target + (1 - t_tokens[..., None]) * noise
    # per-token time has two values per example: two embeddings and a select (as trained-mode
    # inference computes it; the same as velocity_from(condition, x_t, t_tokens), cheaper)
    embed = actor.time_embedding
    time = torch.where(clean[..., None], embed(torch.ones_like(t))[:, None], embed(t)[:, None])
    error = (actor.velocity_embedded(condition, x_t, time) - (target - noise)) ** 2
    scored = (~clean)[..., None].to(error.dtype)
    return (error * scored).sum() / (scored.sum() * target.shape[-1])


def train_actor(actor: Actor, data: Dataset, steps: int, batch: int, lr: float, seed: int,
                samples_per_observation: int = 4, log=print, rtc_max_delay: int = 0,
                rtc_plain_fraction: float = 1.0) -> None:
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(actor.parameters(), lr=lr, weight_decay=0.01)
    actor.train()
    start = time.time()
    for step, index in enumerate(_batches(len(data.state), batch, steps, generator)):
        for group in optimiser.param_groups:
            group["lr"] = _learning_rate(step, steps, lr)
        device = actor.action_std.device
        loss = flow_matching_loss(actor, images_to_model(data.images[index]).to(device), data.state[index].to(device),
                                  data.tokens[index].to(device), data.labels[index].to(device), generator,
                                  samples_per_observation, rtc_max_delay, rtc_plain_fraction,
                                  None if data.delays is None else data.delays[index])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(actor.parameters(), 1.0)
        optimiser.step()
        if step % 200 == 0 or step == steps - 1:
            log(f"actor step {step:5d} loss {loss.item():.4f} ({time.time() - start:.0f} s)")
    actor.eval()


def set_normalisation(actor: Actor, data: Dataset) -> None:
    """Per-joint mean/std of states and actions, into the actor's buffers (saved with the weights)."""
    with torch.no_grad():
        actor.state_mean.copy_(data.state.mean(0))
        actor.state_std.copy_(data.state.std(0).clamp_min(1e-3))
        flat = data.labels.reshape(-1, data.labels.shape[-1])
        actor.action_mean.copy_(flat.mean(0))
        actor.action_std.copy_(flat.std(0).clamp_min(1e-3))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--critic" in argv:  # `flashrt-ros train --critic ...`: the critic has its own recipe and options
        from .train_critic import main as train_critic_main
        return train_critic_main([a for a in argv if a != "--critic"])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="--critic: train the value critic instead (see flashrt_ros.tools.train_critic)")
    parser.add_argument("--out", default="flashrt_ros/models/weights/reference")
    parser.add_argument("--preset", default="reference")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a preset field, e.g. --set patch_size=16 (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--planner-samples", type=int, default=30_000)
    parser.add_argument("--planner-steps", type=int, default=2500)
    parser.add_argument("--actor-samples", type=int, default=60_000)
    parser.add_argument("--actor-steps", type=int, default=2500)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--samples-per-observation", type=int, default=1, help="flow (t, noise) draws per image")
    parser.add_argument("--rtc-max-delay", type=int, default=-1,
                        help="training-time RTC: the clean prefix has 0..this many actions (-1: horizon / 2; "
                             "0: no RTC, the plain recipe)")
    parser.add_argument("--rtc-plain-fraction", type=float, default=0.4,
                        help="training-time RTC: fraction of examples with no prefix (d = 0), so the plain "
                             "chunk stays as good")
    parser.add_argument("--planner-from", default="",
                        help="take the planner from this checkpoint instead of training it (actor-only retrain)")
    parser.add_argument("--actor-init", default="",
                        help="start the actor from this checkpoint's actor (weights and normalisation) instead of "
                             "from scratch: fine-tuning, e.g. adding training-time RTC to trained weights")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu (the shipped recipe) or cuda (faster experiments)")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress shows up when logged to a file

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = ModelConfig.from_name(args.preset)
    for item in args.set:
        field, value = item.split("=", 1)
        config = dataclasses.replace(config, **{field: type(getattr(config, field))(value)})
    rtc_max_delay = config.horizon // 2 if args.rtc_max_delay < 0 else args.rtc_max_delay
    started = time.time()
    planner_data = None if args.planner_from else collect_planner_data(config, args.planner_samples, seed=args.seed)
    actor_data = collect_actor_data(config, args.actor_samples, seed=args.seed + 1, rtc_max_delay=rtc_max_delay,
                                    rtc_plain_fraction=args.rtc_plain_fraction)
    print(f"collected {0 if args.planner_from else args.planner_samples} planner + {args.actor_samples} actor "
          f"samples ({time.time() - started:.0f} s)")
    planner, actor = Planner(config), Actor(config)
    if args.actor_init:
        load_into(actor, Path(args.actor_init) / ACTOR_FILE)
        print(f"actor initialised from {args.actor_init}")
    else:
        set_normalisation(actor, actor_data)
    planner.to(args.device), actor.to(args.device)
    if args.planner_from:
        load_into(planner, Path(args.planner_from) / PLANNER_FILE)
        print(f"planner taken from {args.planner_from}")
    else:
        train_planner(planner, planner_data, args.planner_steps, args.batch, args.lr, args.seed)
    train_actor(actor, actor_data, args.actor_steps, args.batch, args.lr, args.seed, args.samples_per_observation,
                rtc_max_delay=rtc_max_delay, rtc_plain_fraction=args.rtc_plain_fraction)
    planner.to("cpu"), actor.to("cpu")
    elapsed = time.time() - started
    save_checkpoint(args.out, actor, planner, extra={
        "command": "python -m flashrt_ros.tools.train", "args": vars(args), "seconds": round(elapsed, 1),
        "train_seeds": f"[0, {TRAIN_SEED_LIMIT})",
        "rtc": {"training_time_rtc": rtc_max_delay > 0, "max_delay": rtc_max_delay,
                "plain_fraction": args.rtc_plain_fraction}})
    print(f"saved {args.out} after {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
