"""LeRobot π0, π0.5 and SmolVLA checkpoints as flashrt_ros networks (LeRobot is not imported).

loader.py reads a LeRobot policy directory; pi0.py / smolvla.py are the networks (static shapes,
one forward = one chunk, capturable as one CUDA graph); processing.py the input/output transforms.
"""
from .loader import KINDS, LerobotPolicy, PolicyDirError, load_policy

__all__ = ["KINDS", "LerobotPolicy", "PolicyDirError", "load_policy"]
