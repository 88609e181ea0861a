"""Device selection with no silent fallback: asking for CUDA without one is an error."""
from __future__ import annotations

import torch


class DeviceError(RuntimeError):
    pass


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if torch sees a GPU, else cpu; 'cuda' without a GPU raises."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} requested but torch sees no CUDA GPU "
                              f"(torch {torch.__version__}, built for CUDA: {torch.version.cuda})")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise DeviceError(f"unknown device {name!r}: use 'auto', 'cuda', 'cuda:N' or 'cpu'")
