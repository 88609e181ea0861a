"""The reference world (no ROS, no torch): tabletop, scripted expert, closed-loop rollout."""

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
