"""The one device rule: CUDA when a GPU is present, else the CPU. Imports torch only when
called, so importing `cache` stays light."""

from __future__ import annotations

from typing import Any


def default_device() -> Any:
    """`torch.device("cuda")` when a GPU is usable, else `torch.device("cpu")`."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
