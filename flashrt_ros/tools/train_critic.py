"""Train the reference value critic on rollouts of the shipped policy with failures injected (CPU).

    flashrt-ros train --critic                      # rebuilds flashrt_ros/models/weights/reference_critic
    flashrt-ros train --critic --out /tmp/critic --episodes 200 --steps 400

What it does, in order. Cost: the shipped critic took 16 min on 2 CPU cores shared with other
work (rollouts 9 min, training 4.5 min, validation 2.3 min; config.json "seconds"); on idle cores
about 11 min.
1. Data. The shipped policy (eager, CPU) runs closed-loop episodes of training seeds
   (`--seed-start`.., below `TRAIN_SEED_LIMIT`), each with the failure `draw_injection(seed, mix,
   window)` of flashrt_ros.sim.failures applied at its time (`run_episode(events=...)`; a wrong
   coaching holds to the episode's end). Every 10 world steps (2 Hz, from t = 0) a sample records
   what the host's critic reads: the observation the actor acts on (image, joint state), the
   task's tokens, the subtask in force (the planner's or the coaching) as tokens, the episode time.
   Label: the world's verdict at the end (success 1, fail 0), never the injection's kind.
   Injection window: the shipped policy finishes a clean episode in 2-4.5 s; training draws the
   injection's time in `TRAIN_WINDOW` (0.3-4 s: the evaluation's `INJECTION_WINDOW_S`, 0.3-2.2 s,
   and later, e.g. a target knocked off after two visits). The mix is `DEFAULT_MIX`.
   Episodes run `--parallel` at a time in threads whose actor and planner calls are batched (one
   forward for all), each with its own noise generator; batched matmuls may round differently
   from batch-1 ones, which can change an episode's path by a hair (its label is still the world's verdict).
2. Training. `Critic(CriticConfig.for_policy(shipped config, time_scale_s=5))` starts from the
   shipped planner (`init_from_planner`: its trunk already tells visited targets from the next
   one) and keeps its vision encoder and task embedding frozen (`FROZEN`); each batch is mirrored
   by one of the table's 8 symmetries (`mirror`); state normalisation from the data; BCE with
   logits, AdamW, cosine schedule. Both choices were measured (see FROZEN, --time-scale-s). A
   failing episode gives a sample every 0.5 s for 30 s, a succeeding one for its 2-5 s: per time
   the samples keep the episodes' own proportions, so no reweighting (the value at time t is
   P(success | what is seen) under the training mix).
3. Validation on other training-range seeds (`--val-seed-start`.., disjoint from the training
   ones; never the held-out evaluation seeds): AUC over samples, and the host's ending rule
   simulated on each episode's 2 Hz value trace (ended at the first reading where the value has
   been < threshold for `patience` consecutive readings) over a grid; reported: the share of
   failing episodes ended >= 2 s before the time limit and the share of succeeding episodes ended
   at all. Two validation sets: injections in `TRAIN_WINDOW` (many failures) and with the default
   `draw_injection(seed)` (the evaluation's mix and window). The defaults written to config.json
   are the smallest-patience / highest-threshold cell with no false end and >= 95% early ends on
   both sets (`choose_rule`).
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models import REFERENCE_WEIGHTS, EagerPolicy, WordTokenizer, images_to_model
from ..models.critic import Critic, CriticConfig, save_critic
from ..sim import TabletopWorld, WorldConfig, run_episode
from ..sim.failures import DEFAULT_MIX, apply_injection, draw_injection
from .train import TRAIN_SEED_LIMIT, _batches, _learning_rate

DEFAULT_OUT = "flashrt_ros/models/weights/reference_critic"
TRAIN_WINDOW = (0.3, 4.0)
SAMPLE_PERIOD_STEPS = 10  # 2 Hz at the world's 20 Hz
EARLY_MARGIN_S = 2.0      # a failing episode counts as ended early if ended this long before its limit
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)
PATIENCES = (1, 2, 3, 4, 6)


@dataclass
class Episodes:
    """Samples of many episodes at 2 Hz (what the critic reads) plus one row per episode."""
    images: torch.Tensor          # uint8 [N, n_cam, S, S, 3]
    state: torch.Tensor           # float32 [N, 2]
    task_tokens: torch.Tensor     # int64 [N, task_len]
    subtask_tokens: torch.Tensor  # int64 [N, text_len]
    time_s: torch.Tensor          # float32 [N]
    episode: torch.Tensor         # int64 [N]: index into the per-episode lists
    success: list[bool]           # per episode: the world's verdict
    seeds: list[int]
    kinds: list[str]              # the injection drawn (took effect only if before the episode ended)
    end_time: list[float]

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor(self.success, dtype=torch.float32)[self.episode]

    def inputs(self, index) -> tuple[torch.Tensor, ...]:
        return (images_to_model(self.images[index]), self.state[index], self.task_tokens[index],
                self.subtask_tokens[index], self.time_s[index])


class _Lockstep:
    """Episodes in threads meet here: once every live episode waits on a model call, the waiting
    actor calls run as one batch and the planner calls as another (under the lock: the others are
    all waiting anyway)."""

    def __init__(self, policy: EagerPolicy, live: int):
        self.policy, self.live = policy, live
        self.pending: list[dict] = []
        self.condition = threading.Condition()

    def call(self, kind: str, obs, text: str, generator=None):
        request = {"kind": kind, "obs": obs, "text": text, "generator": generator, "done": False}
        with self.condition:
            self.pending.append(request)
            self._run_if_all_waiting()
            while not request["done"]:
                self.condition.wait()
        if "error" in request:
            raise RuntimeError("a batched model call failed") from request["error"]
        return request["result"]

    def leave(self) -> None:
        with self.condition:
            self.live -= 1
            self._run_if_all_waiting()

    def _run_if_all_waiting(self) -> None:
        if not self.pending or len(self.pending) < self.live:
            return
        batch, self.pending = self.pending, []
        try:
            acts = [r for r in batch if r["kind"] == "act"]
            plans = [r for r in batch if r["kind"] == "plan"]
            if acts:
                chunks = self.policy.act_batch([r["obs"] for r in acts], [r["text"] for r in acts],
                                               [r["generator"] for r in acts])
                for r, chunk in zip(acts, chunks):
                    r["result"] = chunk
            if plans:
                for r, subtask in zip(plans, self.policy.plan_batch([r["obs"] for r in plans],
                                                                    [r["text"] for r in plans])):
                    r["result"] = subtask
        except Exception as error:  # noqa: BLE001 - handed to every waiting episode
            for r in batch:
                r["error"] = error
        for r in batch:
            r["done"] = True
        self.condition.notify_all()


def collect(policy: EagerPolicy, seeds, *, mix=None, window=TRAIN_WINDOW, parallel: int = 8,
            log=print) -> Episodes:
    """Roll out the policy on `seeds` with their injections; record samples at 2 Hz (see module doc)."""
    c = policy.config
    tokenizer = WordTokenizer(c.vocabulary)
    seeds = list(seeds)
    todo: queue.Queue = queue.Queue()
    for i, seed in enumerate(seeds):
        todo.put((i, seed))
    per_episode: list[dict | None] = [None] * len(seeds)
    lockstep = _Lockstep(policy, min(parallel, len(seeds)))
    errors: list[BaseException] = []
    finished: list[int] = []
    progress = threading.Lock()
    started = time.time()

    def worker():
        world = TabletopWorld(WorldConfig(image_size=c.image_size))
        generator = torch.Generator()
        try:
            while True:
                try:
                    i, seed = todo.get_nowait()
                except queue.Empty:
                    return
                injection = draw_injection(seed, mix, window) if window is not None else draw_injection(seed, mix)
                step = int(round(injection.time / world.config.dt))
                rows: list[tuple] = []

                def record(k, obs, subtask, rows=rows):
                    if k % SAMPLE_PERIOD_STEPS == 0:
                        rows.append((np.stack([obs.images[n] for n in policy.camera_names]),
                                     np.asarray(obs.joint_positions, np.float32), subtask, float(obs.time)))

                generator.manual_seed(seed)
                result = run_episode(
                    world, lambda obs, text: lockstep.call("act", obs, text, generator),
                    lambda obs, text: lockstep.call("plan", obs, text), seed=seed,
                    events=[(step, lambda w, inj=injection: apply_injection(w, inj))], on_step=record)
                per_episode[i] = {"rows": rows, "success": bool(result.success), "kind": injection.kind,
                                  "task": result.task, "end_time": float(result.time), "seed": seed}
                with progress:
                    finished.append(i)
                    if len(finished) % 50 == 0 or len(finished) == len(seeds):
                        log(f"  {len(finished)}/{len(seeds)} episodes ({time.time() - started:.0f} s)")
        except BaseException as error:  # noqa: BLE001 - re-raised by the caller
            errors.append(error)
        finally:
            lockstep.leave()

    threads = [threading.Thread(target=worker, name=f"critic-rollout-{k}") for k in range(lockstep.live)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    images, state, task, subtask, times, episode = [], [], [], [], [], []
    for i, e in enumerate(per_episode):
        task_ids = tokenizer.encode("visit " + ", then ".join(e["task"]), c.task_len)
        for image, joints, text, t in e["rows"]:
            images.append(image), state.append(joints), times.append(t), episode.append(i)
            task.append(task_ids), subtask.append(tokenizer.encode(text, c.text_len))
    return Episodes(torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(state)),
                    torch.from_numpy(np.stack(task)), torch.from_numpy(np.stack(subtask)),
                    torch.tensor(times, dtype=torch.float32), torch.tensor(episode, dtype=torch.int64),
                    [e["success"] for e in per_episode], [e["seed"] for e in per_episode],
                    [e["kind"] for e in per_episode], [e["end_time"] for e in per_episode])


def mirror(images: torch.Tensor, state: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One of the table's 8 symmetries (k in 0..7) applied to uint8 images [..., S, S, 3] (row 0 =
    the far edge y = 1, column 0 = x = 0) and joint states [..., 2] alike: bit 0 mirrors x, bit 1
    mirrors y, bit 2 transposes (x, y -> 1 - y, 1 - x). The world's rules are symmetric, so the label
    stays; what changes is the layout, which the critic must not memorise episode by episode."""
    x, y = state[..., 0], state[..., 1]
    if k & 1:
        images, x = images.flip(-2), 1 - x
    if k & 2:
        images, y = images.flip(-3), 1 - y
    if k & 4:
        images, x, y = images.transpose(-2, -3), 1 - y, 1 - x
    return images, torch.stack([x, y], dim=-1)


# Kept as the shipped planner trained them: the vision encoder and the task's embedding. Fine-tuning
# them too fitted the training episodes' layouts (loss 0.04) and validated far worse (AUC 0.74-0.78
# against 0.93-0.96, a third of succeeding episodes ended).
FROZEN = ("vision", "text_embedding", "text_to_film", "vision_to_prefix")


def train_critic(critic: Critic, data: Episodes, steps: int, batch: int, lr: float, seed: int, log=print) -> None:
    generator = torch.Generator().manual_seed(seed)
    for name in FROZEN:
        getattr(critic, name).requires_grad_(False)
    trained = [p for p in critic.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trained, lr=lr, weight_decay=0.01)
    labels = data.labels
    critic.train()
    started = time.time()
    for step, index in enumerate(_batches(len(labels), batch, steps, generator)):
        for group in optimiser.param_groups:
            group["lr"] = _learning_rate(step, steps, lr, warmup=min(50, steps // 10))
        k = int(torch.randint(0, 8, (1,), generator=generator))
        images, state = mirror(data.images[index], data.state[index], k)
        logits = critic(images_to_model(images), state, data.task_tokens[index], data.subtask_tokens[index],
                        data.time_s[index])
        loss = F.binary_cross_entropy_with_logits(logits, labels[index])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimiser.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"critic step {step:5d} loss {loss.item():.4f} ({time.time() - started:.0f} s)")
    critic.requires_grad_(True)
    critic.eval()


@torch.inference_mode()
def values(critic: Critic, data: Episodes, batch: int = 256) -> np.ndarray:
    out = [torch.sigmoid(critic(*data.inputs(slice(i, i + batch)))) for i in range(0, len(data.time_s), batch)]
    return torch.cat(out).numpy()


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: P(a success's sample scores above a failure's), ties half."""
    positive = labels > 0.5
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind="mergesort")] = np.arange(1, len(scores) + 1)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.bincount(inverse, weights=ranks) / counts)[inverse]  # tied scores share their mean rank
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def ended_at(trace_values: np.ndarray, trace_times: np.ndarray, threshold: float, patience: int) -> float | None:
    """The host's ending rule on one episode's 2 Hz value trace: the time of the first reading at
    which the value has been < threshold for `patience` consecutive readings, or None."""
    run = 0
    for v, t in zip(trace_values, trace_times):
        run = run + 1 if v < threshold else 0
        if run >= patience:
            return float(t)
    return None


def rule_table(data: Episodes, value: np.ndarray, time_limit: float, thresholds=THRESHOLDS,
               patiences=PATIENCES) -> list[dict]:
    """Per (threshold, patience): share of failing episodes ended >= EARLY_MARGIN_S before the
    limit, share of succeeding episodes ended at all, mean end time of the failing ones."""
    episode = data.episode.numpy()
    times = data.time_s.numpy()
    traces = [(value[episode == i], times[episode == i]) for i in range(len(data.success))]
    rows = []
    for threshold in thresholds:
        for patience in patiences:
            ends = [ended_at(v, t, threshold, patience) for v, t in traces]
            fail = [e for e, ok in zip(ends, data.success) if not ok]
            good = [e for e, ok in zip(ends, data.success) if ok]
            early = [e is not None and e <= time_limit - EARLY_MARGIN_S + 1e-9 for e in fail]
            rows.append({"value_threshold": threshold, "value_patience": patience,
                         "failing": len(fail), "succeeding": len(good),
                         "failing_ended_early": float(np.mean(early)) if fail else float("nan"),
                         "succeeding_ended": float(np.mean([e is not None for e in good])) if good else float("nan"),
                         "failing_mean_end_s": float(np.mean([e for e in fail if e is not None]))
                         if any(e is not None for e in fail) else float("nan")})
    return rows


def choose_rule(tables: list[list[dict]], max_false: float = 0.0, min_early: float = 0.95) -> dict | None:
    """The cell that is safe on every table (succeeding ended <= max_false, failing ended early >=
    min_early), preferring margin against false ends: the lowest threshold, then the most patience.
    Either only delays the end of a failing episode, which still has to come 2 s before its limit."""
    cells = []
    for k, row in enumerate(tables[0]):
        same = [t[k] for t in tables]
        if all(r["succeeding_ended"] <= max_false and r["failing_ended_early"] >= min_early for r in same):
            cells.append(row)
    if not cells:
        return None
    return min(cells, key=lambda r: (r["value_threshold"], -r["value_patience"]))


def describe(data: Episodes) -> dict:
    kinds: dict[str, dict[str, int]] = {}
    for kind, ok in zip(data.kinds, data.success):
        entry = kinds.setdefault(kind, {"episodes": 0, "failed": 0})
        entry["episodes"] += 1
        entry["failed"] += int(not ok)
    return {"episodes": len(data.success), "failed": int(sum(not s for s in data.success)),
            "samples": int(len(data.time_s)), "by_injection_drawn": kinds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="flashrt-ros train --critic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--policy", default=str(REFERENCE_WEIGHTS), help="the policy checkpoint to roll out")
    parser.add_argument("--seed-start", type=int, default=20_000, help="training episodes' first world seed")
    parser.add_argument("--episodes", type=int, default=400)
    parser.add_argument("--val-seed-start", type=int, default=90_000, help="validation episodes' first seed")
    parser.add_argument("--val-episodes", type=int, default=100, help="per validation set (two sets)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--time-scale-s", type=float, default=5.0,
                        help="the critic's episode-time input is seconds / this: a clean episode's length, so "
                             "the seconds that tell success from failure are not squeezed near 0 (with the "
                             "30 s time limit the critic barely used the time: failing episodes valued ~0.3 at 30 s)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parallel", type=int, default=8, help="episodes rolled out at once (batched calls)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    last = max(args.seed_start + args.episodes, args.val_seed_start + args.val_episodes)
    if last > TRAIN_SEED_LIMIT:
        parser.error(f"seeds must stay below TRAIN_SEED_LIMIT={TRAIN_SEED_LIMIT} (held-out seeds are never trained on)")
    if not (args.seed_start + args.episodes <= args.val_seed_start
            or args.val_seed_start + args.val_episodes <= args.seed_start):
        parser.error("training and validation seeds overlap")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.time()
    policy = EagerPolicy.from_checkpoint(args.policy)
    time_limit = WorldConfig().time_limit
    print(f"rolling out {args.episodes} training episodes (injections in {TRAIN_WINDOW} s)")
    data = collect(policy, range(args.seed_start, args.seed_start + args.episodes), parallel=args.parallel)
    collect_s = time.time() - started
    print(f"collected {describe(data)} ({collect_s:.0f} s)")

    critic = Critic(CriticConfig.for_policy(policy.config, time_scale_s=args.time_scale_s))
    copied = critic.init_from_planner(policy.planner)
    with torch.no_grad():
        critic.state_mean.copy_(data.state.mean(0))
        critic.state_std.copy_(data.state.std(0).clamp_min(1e-3))
    print(f"initialised {len(copied)} tensors from the shipped planner")
    train_started = time.time()
    train_critic(critic, data, args.steps, args.batch, args.lr, args.seed)
    train_s = time.time() - train_started

    validation = {}
    tables = []
    val_started = time.time()
    sets = {"train_window": TRAIN_WINDOW, "default_draw": None}
    for k, (name, window) in enumerate(sets.items()):
        first = args.val_seed_start + k * args.val_episodes // len(sets)
        seeds = range(first, first + args.val_episodes // len(sets))
        val = collect(policy, seeds, window=window, parallel=args.parallel)
        v = values(critic, val)
        table = rule_table(val, v, time_limit)
        tables.append(table)
        validation[name] = {"seeds": f"[{seeds.start}, {seeds.stop})",
                            "window_s": list(window) if window else "draw_injection default",
                            **describe(val), "auc": round(auc(v, val.labels.numpy()), 4), "rule_grid": table}
        print(f"validation {name}: {describe(val)} AUC {validation[name]['auc']}")
        for row in table:
            print(f"  threshold {row['value_threshold']:.2f} patience {row['value_patience']}: failing ended >= 2 s "
                  f"early {row['failing_ended_early']:.2f} (mean at {row['failing_mean_end_s']:.1f} s), "
                  f"succeeding ended {row['succeeding_ended']:.3f}")
    val_s = time.time() - val_started
    chosen = choose_rule(tables)
    print(f"chosen rule: {chosen}")
    elapsed = time.time() - started
    save_critic(args.out, critic, extra={
        "command": "flashrt-ros train --critic " + " ".join(argv if argv is not None else sys.argv[1:]),
        "args": {**vars(args), "policy": "reference" if args.policy == str(REFERENCE_WEIGHTS) else args.policy},
        "policy": str(Path(args.policy).name),
        "train_seeds": f"[{args.seed_start}, {args.seed_start + args.episodes})",
        "injections": {"mix": DEFAULT_MIX, "window_s": list(TRAIN_WINDOW)},
        "data": describe(data), "initialised_from_planner": len(copied),
        "validation": validation,
        "ending_rule": None if chosen is None else {"value_threshold": chosen["value_threshold"],
                                                    "value_patience": chosen["value_patience"],
                                                    "readings_hz": 2.0},
        "seconds": {"rollouts": round(collect_s, 1), "training": round(train_s, 1),
                    "validation": round(val_s, 1), "total": round(elapsed, 1)},
        "machine": f"{torch.get_num_threads()} CPU threads"})
    print(f"saved {args.out} after {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
