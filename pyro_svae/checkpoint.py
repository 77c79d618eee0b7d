"""Checkpoints of a fit in progress, so that ``fit(..., resume_from=path)`` continues exactly.

A checkpoint directory holds ``checkpoint.json`` (the fit's settings, progress counters, history
and the numpy generator state) and ``checkpoint.pt`` (tensors only: parameters, optimizer
moments, the torch RNG state and the best parameters so far), read back with
``torch.load(weights_only=True)``, which cannot run code. Files are written to a temporary name
and renamed, so an interrupted write never leaves a half checkpoint behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "check_resumable"]

_TENSORS, _STATE = "checkpoint.pt", "checkpoint.json"


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(directory, *, settings: dict, progress: dict, params: dict, optim_state: dict,
                    best: dict | None, numpy_rng_state: dict) -> Path:
    """Write a checkpoint to ``directory`` (created if needed); returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {"params": {k: v.detach().cpu() for k, v in params.items()}, "optim": optim_state,
               "torch_rng": torch.get_rng_state(), "best": best or {}}
    _atomic_write(directory / _TENSORS, lambda p: torch.save(tensors, p))
    document = {"settings": settings, "progress": progress, "numpy_rng": numpy_rng_state,
                "sha256": hashlib.sha256((directory / _TENSORS).read_bytes()).hexdigest()}
    _atomic_write(directory / _STATE, lambda p: p.write_text(json.dumps(document)))
    return directory


def load_checkpoint(directory):
    """Read a checkpoint: ``(document, tensors)``. Refuses a missing, modified or truncated one."""
    directory = Path(directory)
    state_file, tensor_file = directory / _STATE, directory / _TENSORS
    for f in (state_file, tensor_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f} is missing; expected a checkpoint written by fit(checkpoint_dir=...).")
    document = json.loads(state_file.read_text())
    if hashlib.sha256(tensor_file.read_bytes()).hexdigest() != document["sha256"]:
        raise ValueError(f"{tensor_file} does not match the checksum in {state_file.name}: modified or truncated.")
    return document, torch.load(tensor_file, map_location="cpu", weights_only=True)


#: settings added since checkpoints were first written, with the value that older ones trained with
ADDED_SETTINGS = {"lr_decay": 1.0, "encoder": "counts", "weight_decay": 0.0}


def check_resumable(saved: dict, current: dict) -> None:
    """Raise ``ValueError`` naming the first setting that differs (``max_epochs`` may grow)."""
    saved = {**ADDED_SETTINGS, **saved}
    for key in sorted(set(saved) | set(current)):
        if key == "max_epochs":
            continue
        if saved.get(key) != current.get(key):
            raise ValueError(f"Cannot resume: {key} was {saved.get(key)!r} in the checkpoint but is {current.get(key)!r} now.")
