"""Checkpoint I/O: tensors only, written atomically, loaded with `weights_only=True` and
strictly, so a crafted pickle or a checkpoint of another model is refused with one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from cache.atomic import atomic_write
from cache.errors import TcdError


class CheckpointError(TcdError):
    """A checkpoint is missing, corrupted, or does not fit the model."""


def save_checkpoint(path: Path, model: nn.Module, extra: dict[str, Any] | None = None) -> None:
    payload = {"model": model.state_dict(), **(extra or {})}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def update_checkpoint(path: Path, **changes: Any) -> None:
    """Rewrite a checkpoint's entries other than the model (atomically)."""
    payload = {**load_checkpoint(path), **changes}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(
    path: Path, model: nn.Module | None = None, mmap: bool = False
) -> dict[str, Any]:
    """Load tensors only (weights_only=True) and, given a model, fill it strictly. `mmap`:
    the tensors are mapped from the file, not read (for a caller reading the other entries)."""
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # unpickling errors of many kinds for a damaged or unsafe file
        raise CheckpointError(
            f"{path}: not a readable tensors-only checkpoint "
            f"({exc.__class__.__name__}: {str(exc)[:200]})"
        ) from None
    if not isinstance(payload, dict) or "model" not in payload:
        raise CheckpointError(f"{path}: not a checkpoint written by tcd train")
    if model is not None:
        try:
            model.load_state_dict(payload["model"], strict=True)
        except RuntimeError as exc:
            raise CheckpointError(
                f"{path}: does not fit this model ({str(exc).splitlines()[0]})"
            ) from None
    return payload
