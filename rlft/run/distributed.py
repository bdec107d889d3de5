"""The processes of one run: who this rank is, the process group, and the few collectives training needs.

A run started by ``torchrun --nproc_per_node N -m rlft ...`` (or any launcher that sets ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``) has N ranks. :func:`session` opens
the process group for one command (gloo for CPU tensors, plus NCCL for CUDA ones when a GPU is present)
and closes it; without a launcher there is one rank and every collective here returns its input, so the
trainers call them unconditionally.

Rules every distributed code path follows:

* batch sizes are global; each rank takes its share, and every normaliser (token counts, sequence
  counts) is summed over ranks before it divides anything, so N ranks compute the one-rank update;
* only rank 0 writes (metrics, progress, checkpoints' shared files, the final model); what rank 0
  alone decides or fails at reaches every rank through :func:`main_only`;
* no rank waits forever: collectives time out after ``RLFT_DIST_TIMEOUT_S`` seconds (default 600), and a
  rank that fails makes torchrun stop the others.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "PeerFailure",
    "RankError",
    "World",
    "all_gather_objects",
    "broadcast_object",
    "collective",
    "is_main",
    "main_only",
    "max_over_ranks",
    "rank_share",
    "session",
    "sum_over_ranks",
    "world",
]

T = TypeVar("T")
TIMEOUT_ENV = "RLFT_DIST_TIMEOUT_S"


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` of ``size`` ranks, ``local_rank`` on its node."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


class RankError(RuntimeError):
    """An error raised on rank 0 inside :func:`main_only`, raised again on every other rank."""


class PeerFailure(RuntimeError):
    """This rank stopped because another rank failed (its collective broke off)."""


def launched_world() -> World:
    """The world the launcher's environment describes (one rank without a launcher)."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"])), size)


def world() -> World:
    """This process's :class:`World`: that of the open process group, else one rank."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), int(os.environ.get("LOCAL_RANK", dist.get_rank())), dist.get_world_size())
    return World()


def is_main() -> bool:
    """Whether this process writes: rank 0, or the only one."""
    return world().main


def _timeout() -> timedelta:
    raw = os.environ.get(TIMEOUT_ENV, "600")
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds") from None
    return timedelta(seconds=seconds)


@contextlib.contextmanager
def session() -> Iterator[World]:
    """Open the process group for one command when a launcher started several ranks (else do nothing),
    and close it however the command ends. CPU tensors go over gloo; CUDA tensors over NCCL, with this
    rank's GPU (``LOCAL_RANK``) made current first."""
    launched = launched_world()
    if launched.size == 1 or dist.is_initialized():
        yield world()
        return
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(launched.local_rank % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend, timeout=_timeout())
    try:
        yield world()
    finally:
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def collective(fn: Callable[[], T]) -> T:
    """Run a collective; a peer that died mid-way (gloo: 'Connection closed by peer', a timeout) becomes
    :class:`PeerFailure`, one line for the user instead of gloo's traceback."""
    try:
        return fn()
    except RuntimeError as err:
        if isinstance(err, (RankError, PeerFailure)) or not _from_transport(err):
            raise  # this rank's own failure (out of memory, a bad tensor): its own message
        reason = " ".join(str(err).split())[:200]
        raise PeerFailure(f"rank {dist.get_rank()} stopped: another rank failed ({reason})") from None


def _from_transport(err: RuntimeError) -> bool:
    """Whether ``err`` is the process group's report of a broken or silent peer (gloo and NCCL raise
    plain RuntimeErrors for these, naming the transport or the timeout)."""
    if isinstance(err, dist.DistError):
        return True
    text = str(err)
    return any(key in text for key in ("gloo", "NCCL", "Connection closed", "Connection reset", "timed out", "Timeout"))


def sum_over_ranks(*values: float) -> list[float]:
    """Each value summed over ranks (float64, so integer counts stay exact): token and sequence counts
    before they normalise a loss, and the sums behind logged means."""
    if not _active():
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64)
    collective(lambda: dist.all_reduce(t))
    return [float(v) for v in t.tolist()]


def max_over_ranks(value: int) -> int:
    """The largest of the ranks' ``value`` (a signal one rank caught, which every rank must follow)."""
    if not _active():
        return value
    t = torch.tensor([value], dtype=torch.int64)
    collective(lambda: dist.all_reduce(t, op=dist.ReduceOp.MAX))
    return int(t.item())


def broadcast_object(value: T, src: int = 0) -> T:
    """Rank ``src``'s ``value`` on every rank (plain Python data: paths, numbers, short strings)."""
    if not _active():
        return value
    box: list[Any] = [value]
    collective(lambda: dist.broadcast_object_list(box, src=src))
    return box[0]  # type: ignore[no-any-return]


def all_gather_objects(value: T) -> list[T]:
    """Every rank's ``value``, in rank order."""
    if not _active():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    collective(lambda: dist.all_gather_object(out, value))
    return out


def main_only(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 only; its result on every rank. When it raises, rank 0 raises it and every other
    rank raises :class:`RankError` with the same message, so a rank-0-only failure (a bad path, a full
    disk, a run directory in use) stops all ranks at once instead of leaving them waiting."""
    if not _active():
        return fn()
    outcome: tuple[bool, Any] = (True, None)
    error: BaseException | None = None
    if dist.get_rank() == 0:
        try:
            outcome = (True, fn())
        except Exception as err:
            error = err
            outcome = (False, f"{err}")
    ok, value = broadcast_object(outcome)
    if error is not None:
        raise error
    if not ok:
        raise RankError(value)
    return value  # type: ignore[no-any-return]


def rank_share(items: Sequence[T], parts: int, w: World | None = None) -> list[T]:
    """This rank's share of one global step's ``items`` split into ``parts`` equal micro-batches: from each
    micro-batch, the ``rank``-th of ``size`` equal slices. So the examples of global micro-batch m are the
    one-rank micro-batch m, wherever the ranks are, and every rank gets the same number of them."""
    w = w or world()
    if w.size == 1:
        return list(items)
    per_micro = len(items) // parts
    per_rank = per_micro // w.size
    out: list[T] = []
    for m in range(parts):
        start = m * per_micro + w.rank * per_rank
        out.extend(items[start : start + per_rank])
    return out
