"""Trainer checkpoints: ``run/checkpoints/step-N/`` holds the model in Hugging Face format (so any step can
be loaded with ``from_pretrained``) and ``trainer_state.pt`` with everything else needed for exact resume:
optimiser and scheduler states, RNG states, the step and the data position."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError

from rlft.models import save_pretrained_atomic
from rlft.run import CheckpointError, RunDir, RunDirError, atomic_torch_save
from rlft.run.distributed import main_only
from rlft.train.common.parallel import SHARDED_DIR, CheckpointException, DataParallel

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["TRAINER_STATE", "latest_checkpoint", "load_trainer_state", "save_checkpoint"]

TRAINER_STATE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def save_checkpoint(
    run: RunDir,
    step: int,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    state: dict[str, Any],
    parallel: DataParallel | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> Path:
    """Write ``run/checkpoints/step-{step}/`` (model + tokenizer, then trainer_state.pt last). Every rank
    calls it; rank 0 writes the shared files.

    The state file is written after the model directory is in place and is what marks a checkpoint
    complete: :func:`latest_checkpoint` skips a directory without it (a crash between the two writes).
    A write that fails (a full disk, a vanished directory) removes the incomplete checkpoint and raises
    :class:`~rlft.run.RunDirError` naming the last complete one, which is left as it was.

    Under fsdp2 the model directory is the whole model gathered to rank 0 (what ``from_pretrained``
    loads), and ``dcp/`` beside it holds every rank's shard of the model and of ``optimizer``'s state
    (``torch.distributed.checkpoint``), from which a resumed run continues exactly.
    """
    out = run.checkpoints / f"step-{step}"
    parallel = parallel or DataParallel()
    full = parallel.full_state_dict(model)

    def write(what: Callable[[], object]) -> None:
        """``what()`` on rank 0; on any failure the incomplete checkpoint is removed there and every
        rank raises (one collective, whatever failed)."""

        def attempt() -> None:
            try:
                what()
            except (OSError, SafetensorError) as err:
                shutil.rmtree(out, ignore_errors=True)
                raise checkpoint_write_error(run, out, err) from None
            except BaseException:
                shutil.rmtree(out, ignore_errors=True)
                raise

        main_only(attempt)

    write(lambda: save_pretrained_atomic(model, tokenizer, out, state_dict=full))
    if parallel.sharded and optimizer is not None:
        try:
            parallel.save_sharded(model, optimizer, out / SHARDED_DIR)
        except CheckpointException as err:
            main_only(lambda: shutil.rmtree(out, ignore_errors=True))
            raise checkpoint_write_error(run, out / SHARDED_DIR, err) from None
    write(lambda: atomic_torch_save(state, out / TRAINER_STATE))
    return out


def checkpoint_write_error(run: RunDir, path: Path, err: BaseException) -> RunDirError:
    """The one-line error of a checkpoint that could not be written (safetensors reports the OS's
    error inside its own message)."""
    last = latest_checkpoint(run)
    kept = f"the last complete checkpoint is {last}" if last else "no complete checkpoint exists yet"
    reason = getattr(err, "strerror", None) or str(err)
    return RunDirError(f"cannot write {path}: {reason}; {kept}")


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
    """The ``trainer_state.pt`` of a checkpoint; tensors, numbers and plain containers only (torch's
    ``weights_only`` loader, which runs no code). A file that is corrupt or holds anything else is a
    :class:`CheckpointError` naming it."""
    path = checkpoint / TRAINER_STATE
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        return state
    except Exception as err:  # UnpicklingError, a zip error from torch's reader, …: all the same to a user
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise CheckpointError(
            f"{path}: not a trainer state this version can read ({reason}); delete {checkpoint} to resume "
            "from the previous checkpoint, or start a new run"
        ) from None


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
