"""The simulator: the reference world (tabletop, scripted expert, closed-loop rollout; no ROS, no
torch) and, in world_node.py, the same world as a ROS node."""

from .follower import TrajectoryFollower, chunk_velocities
from .expert import ExpertPolicy, expert_chunk, expert_subtask, straight_line_chunk
from .rollout import CoachEvent, EpisodeResult, run_episode
from .tabletop import (
    CAMERA_NAMES,
    COLOURS,
    JOINT_NAMES,
    SUBTASKS,
    ActionChunk,
    Observation,
    TabletopWorld,
    WorldConfig,
    colour_of,
    subtask_for,
    task_text,
)
