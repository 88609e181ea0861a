"""The reference tabletop world: a point robot visiting coloured discs in a given order.

numpy only, no ROS, no torch. Deterministic given the seed. The contract is in
docs/design/interfaces.md ("The reference world").

Coordinates: the table is [0, 1] x [0, 1] metres. The camera looks straight down; image row 0 is
the far edge (y = 1), column 0 is x = 0, so pixel (r, c) shows the point
x = (c + 0.5) / S, y = 1 - (r + 0.5) / S.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .follower import FollowedTrajectory, TrajectoryFollower, chunk_velocities

COLOURS = ("red", "green", "blue", "yellow")
COLOUR_RGB = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
}
TABLE_RGB = (200, 190, 170)
ROBOT_RGB = (20, 20, 20)
JOINT_NAMES = ("joint_x", "joint_y")
JOINT_LIMITS = (0.0, 1.0)
CAMERA_NAMES = ("top",)
SUBTASKS = tuple(f"go to {c}" for c in COLOURS) + ("done",)
TASK_LENGTH = 3
# The follower's clock is world time + this: world time 0 (an episode's first observation) is a
# real stamp, while a follower stamp of 0 means "start now".
FOLLOWER_CLOCK_OFFSET = 1.0


def subtask_for(colour: str | None) -> str:
    """The subtask text that sends the robot to `colour` (None: nothing left to do)."""
    return "done" if colour is None else f"go to {colour}"


def colour_of(subtask: str) -> str | None:
    """The colour a subtask text names, or None for "done" and anything unrecognised."""
    words = subtask.strip().lower().split()
    return words[-1] if len(words) == 3 and words[:2] == ["go", "to"] and words[-1] in COLOURS else None


def task_text(task: tuple[str, ...]) -> str:
    return "visit " + ", then ".join(task)


@dataclass(frozen=True)
class WorldConfig:
    image_size: int = 96
    dt: float = 0.05  # 20 Hz
    max_speed: float = 0.5  # m/s
    visit_radius: float = 0.06
    target_radius: float = 0.05  # drawn disc radius
    hollow_width: float = 0.02  # ring width of a visited target
    robot_radius: float = 0.02  # drawn marker radius
    min_separation: float = 0.25  # between target centres
    margin: float = 0.1  # targets keep this far from the table edge
    time_limit: float = 30.0


@dataclass(frozen=True)
class ActionChunk:
    """Positions the robot should be at: `positions[i]` is for time `start_time + (i + 1) * dt`."""

    start_time: float
    dt: float
    positions: np.ndarray  # (H, 2) float32, joint units


@dataclass(frozen=True)
class Observation:
    images: dict[str, np.ndarray]  # camera name -> (S, S, 3) uint8
    joint_names: tuple[str, ...]
    joint_positions: np.ndarray  # (2,) float32
    time: float


@dataclass
class TabletopWorld:
    config: WorldConfig = field(default_factory=WorldConfig)
    seed: int = 0

    def __post_init__(self):
        s = self.config.image_size
        centres = (np.arange(s, dtype=np.float32) + 0.5) / s
        # pixel-centre coordinates, (S, S) each, precomputed once for rendering
        self._pixel_x = np.broadcast_to(centres[None, :], (s, s))
        self._pixel_y = np.broadcast_to(1.0 - centres[:, None], (s, s))
        self.reset(self.seed)

    # --- episode control -------------------------------------------------------------------
    def reset(self, seed: int) -> Observation:
        rng = np.random.default_rng(seed)
        self.seed = int(seed)
        self.targets = self._sample_targets(rng)
        order = rng.permutation(len(COLOURS))[:TASK_LENGTH]
        self.task = tuple(COLOURS[i] for i in order)
        self.position = self._sample_start(rng)
        self.visited: list[str] = []
        self.removed: set[str] = set()     # targets knocked off the table (failure injection)
        self.jammed: set[int] = set()      # joints that no longer move (failure injection)
        self.time = 0.0
        self.steps = 0
        self.follower = TrajectoryFollower(len(JOINT_NAMES), self.position, time=FOLLOWER_CLOCK_OFFSET)
        self._trail = [self.position.copy()]  # the robot's position at each step of this episode
        return self.observation()

    def _sample_targets(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        lo, hi = self.config.margin, 1.0 - self.config.margin
        for _ in range(10_000):  # rejection sampling; succeeds within a few tries for these sizes
            points = rng.uniform(lo, hi, size=(len(COLOURS), 2))
            gaps = np.linalg.norm(points[:, None] - points[None], axis=-1) + np.eye(len(COLOURS))
            if gaps.min() >= self.config.min_separation:
                return {c: p.astype(np.float32) for c, p in zip(COLOURS, points)}
        raise RuntimeError("could not place well-separated targets; min_separation too large")

    def _sample_start(self, rng: np.random.Generator) -> np.ndarray:
        # start away from every target so no episode begins with a free visit
        for _ in range(10_000):
            p = rng.uniform(0.05, 0.95, size=2)
            if all(np.linalg.norm(p - t) > 2 * self.config.visit_radius for t in self.targets.values()):
                return p.astype(np.float32)
        raise RuntimeError("could not place the robot away from the targets")

    def set_state(self, position, n_visited: int | None = None) -> None:
        """Place the robot and mark the first `n_visited` task targets visited (data collection, tests)."""
        self.position = np.clip(np.asarray(position, dtype=np.float32), *JOINT_LIMITS)
        self.follower.set_state(self.position, time=self.time + FOLLOWER_CLOCK_OFFSET)
        self._trail[-1] = self.position.copy()
        if n_visited is not None:
            self.visited = list(self.task[:n_visited])

    def knock_off(self, colour: str) -> None:
        """A failure: the target falls off the table. It is no longer drawn and can never be visited."""
        if colour not in self.targets:
            raise ValueError(f"no target {colour!r}; have {sorted(self.targets)}")
        self.removed.add(colour)

    def jam(self, joint: int) -> None:
        """A failure: joint `joint` stops moving (a seized actuator); the others go on."""
        if not 0 <= joint < len(JOINT_NAMES):
            raise ValueError(f"joint index {joint} out of range 0..{len(JOINT_NAMES) - 1}")
        self.jammed.add(int(joint))

    def push(self, position) -> None:
        """A disturbance: the robot is moved to `position` (a bump); what was visited stays visited."""
        self.set_state(position)

    # --- properties ------------------------------------------------------------------------
    @property
    def task_text(self) -> str:
        return task_text(self.task)

    @property
    def next_target(self) -> str | None:
        return self.task[len(self.visited)] if len(self.visited) < len(self.task) else None

    @property
    def success(self) -> bool:
        return len(self.visited) == len(self.task)

    @property
    def timed_out(self) -> bool:
        return self.time >= self.config.time_limit - 1e-9

    @property
    def done(self) -> bool:
        return self.success or self.timed_out

    # --- control ---------------------------------------------------------------------------
    def apply_chunk(self, positions, start_time: float | None = None, dt: float | None = None,
                    velocities=None) -> None:
        """Follow a chunk: `positions[i]` is for time `start_time + (i + 1) * dt` (`start_time`
        defaults to now, `dt` to the world step). It replaces the one being followed. Without
        `velocities` they are `chunk_velocities` from the robot's position at `start_time` (what
        the host publishes); an empty or None chunk holds. ValueError for a chunk the robot cannot
        follow (then the previous one goes on)."""
        if positions is None or np.asarray(positions).size == 0:
            self.hold()
            return
        positions = np.asarray(positions, dtype=np.float32)
        if positions.ndim != 2 or positions.shape[1] != len(JOINT_NAMES):
            raise ValueError(f"chunk positions must be (H, {len(JOINT_NAMES)}), got {positions.shape}")
        if not np.isfinite(positions).all():
            raise ValueError("chunk positions contain NaN or inf")
        start = self.time if start_time is None else float(start_time)
        dt = self.config.dt if dt is None else float(dt)
        if velocities is None:
            velocities = chunk_velocities(self.position_at(start), positions, dt)
        self.apply_trajectory(start, dt * np.arange(1, len(positions) + 1), positions, velocities)

    def apply_trajectory(self, start_time: float, times_from_start, positions, velocities=None) -> None:
        """Follow points due at world time `start_time + times_from_start[i]` (joint_trajectory_controller
        semantics, see flashrt_ros.sim.follower); empty positions hold. ValueError (the previous
        motion goes on) for one the robot cannot follow, e.g. one that ends at or before now."""
        self.follower.command(float(start_time) + FOLLOWER_CLOCK_OFFSET, times_from_start, positions, velocities,
                              now=self.time + FOLLOWER_CLOCK_OFFSET)

    def hold(self) -> None:
        """Stop: hold where the robot is (an empty trajectory)."""
        self.follower.hold()

    @property
    def chunk(self) -> FollowedTrajectory | None:
        """The trajectory being followed (times in world seconds), None while holding."""
        followed = self.follower.trajectory
        if followed is None:
            return None
        return FollowedTrajectory(followed.times - FOLLOWER_CLOCK_OFFSET, followed.positions, followed.velocities)

    def chunk_target(self, t: float) -> np.ndarray:
        """Where the followed trajectory wants the robot at world time t (float32)."""
        return self.follower.sample(t + FOLLOWER_CLOCK_OFFSET)[0].astype(np.float32)

    def position_at(self, t: float) -> np.ndarray:
        """The robot's position at world time t of this episode (at the step at or before t; now
        for a t in the future)."""
        index = int(np.floor(t / self.config.dt + 1e-6))
        return self._trail[min(max(index, 0), len(self._trail) - 1)]

    def step(self) -> Observation:
        """Advance one dt: move toward the follower's setpoint for the end of this step (at most
        max_speed * dt), then check visits."""
        if self.done:
            return self.observation()
        end = self.time + self.config.dt + FOLLOWER_CLOCK_OFFSET
        goal, velocity = self.follower.sample(end)
        previous = self.position
        wanted = goal.astype(np.float32) - previous  # float32 as the robot's position
        delta = wanted.copy()
        for j in self.jammed:
            delta[j] = 0.0
        reach = self.config.max_speed * self.config.dt
        distance = float(np.linalg.norm(delta))
        if distance > reach:
            delta = delta * (reach / distance)
        self.position = np.clip(previous + delta, *JOINT_LIMITS).astype(np.float32)
        moved = self.position - previous
        if not np.allclose(moved, wanted, rtol=0.0, atol=1e-6):  # speed or joint limits: the robot lags
            velocity = moved / self.config.dt
        self.follower.set_state(self.position, velocity, end)
        self.steps += 1
        self.time = self.steps * self.config.dt  # no accumulated float drift
        self._trail.append(self.position.copy())
        nxt = self.next_target
        if nxt is not None and nxt not in self.removed and np.linalg.norm(self.position - self.targets[nxt]) <= self.config.visit_radius:
            self.visited.append(nxt)
        return self.observation()

    # --- sensing ---------------------------------------------------------------------------
    def render(self) -> np.ndarray:
        """Top-down RGB image (S, S, 3) uint8. Visited targets are hollow rings; the robot is a dark dot."""
        cfg = self.config
        image = np.empty((cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
        image[:] = TABLE_RGB
        for colour in COLOURS:
            if colour in self.removed:
                continue
            x, y = self.targets[colour]
            d = np.hypot(self._pixel_x - x, self._pixel_y - y)
            mask = d <= cfg.target_radius
            if colour in self.visited:
                mask &= d > cfg.target_radius - cfg.hollow_width
            image[mask] = COLOUR_RGB[colour]
        x, y = self.position
        image[np.hypot(self._pixel_x - x, self._pixel_y - y) <= cfg.robot_radius] = ROBOT_RGB
        return image

    def observation(self) -> Observation:
        return Observation(
            images={CAMERA_NAMES[0]: self.render()},
            joint_names=JOINT_NAMES,
            joint_positions=self.position.astype(np.float32).copy(),
            time=self.time,
        )
