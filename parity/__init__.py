"""Parity of flashrt_ros.models.lerobot with LeRobot's own pi0 / pi0.5 / SmolVLA (`make parity`).

lerobot_reference.py is the reference side and imports LeRobot: use it from .venv-lerobot only.
"""
