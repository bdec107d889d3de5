"""Trainer checkpoints: ``run/checkpoints/step-N/`` holds the model in Hugging Face format (so any step can
be loaded with ``from_pretrained``) and ``trainer_state.pt`` with everything else needed for exact resume:
optimiser and scheduler states, RNG states, the step and the data position."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from rlft.models import save_pretrained_atomic
from rlft.run import CheckpointError, RunDir, atomic_path

__all__ = ["TRAINER_STATE", "latest_checkpoint", "load_trainer_state", "save_checkpoint"]

TRAINER_STATE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def save_checkpoint(run: RunDir, step: int, model: Any, tokenizer: Any, state: dict[str, Any]) -> Path:
    """Write ``run/checkpoints/step-{step}/`` (model + tokenizer, then trainer_state.pt last).

    The state file is written after the model directory is in place and is what marks a checkpoint
    complete: :func:`latest_checkpoint` skips a directory without it (a crash between the two writes).
    """
    out = run.checkpoints / f"step-{step}"
    save_pretrained_atomic(model, tokenizer, out)
    with atomic_path(out / TRAINER_STATE) as tmp:
        torch.save(state, tmp)
    return out


def latest_checkpoint(run: RunDir) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    if not run.checkpoints.is_dir():
        return None
    found = []
    for path in run.checkpoints.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and (path / TRAINER_STATE).is_file():
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    """The ``trainer_state.pt`` of a checkpoint; tensors, numbers and plain containers only."""
    return torch.load(checkpoint / TRAINER_STATE, map_location="cpu", weights_only=True)


def restore_optimizer(optimizer: Any, scheduler: Any, state: dict[str, Any], checkpoint: Path) -> None:
    """Load a checkpoint's optimizer and scheduler state; a state that does not fit these parameters
    (the run was resumed with another model, LoRA setting or version) is a :class:`CheckpointError`
    naming the checkpoint, not torch's message about parameter groups."""
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (ValueError, KeyError) as err:
        raise CheckpointError(
            f"{checkpoint}: its optimizer state does not fit the model being trained ({err}); resume with "
            "the configuration that wrote it, or start a new run"
        ) from err
