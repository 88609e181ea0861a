"""The GPU mechanism: static buffers, captured graphs, the subtask hand-off, capsules and the
multi-rate scheduler. Knows nothing of ROS, robots or episodes (hosts add that policy)."""
from .buffers import BufferError, BufferSet
from .capsule import Capsule, CapsuleStore
from .device import DeviceError, resolve_device
from .graph import GraphChain, GraphError, StaticGraph
from .handoff import SubtaskChannel, SubtaskState
from .scheduler import MultiRateScheduler, Task

__all__ = [
    "BufferError", "BufferSet", "Capsule", "CapsuleStore", "DeviceError", "resolve_device",
    "GraphChain", "GraphError", "StaticGraph", "SubtaskChannel", "SubtaskState", "MultiRateScheduler", "Task",
]
