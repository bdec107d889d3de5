"""Data parallelism of a trained model across the ranks of a run: ``parallel: ddp`` or ``parallel: fsdp2``.

    parallel = DataParallel.of(cfg)        # one rank: every method below does nothing
    model = parallel.prepare(model)        # before the optimiser is built
    ... backward of each micro-batch, each loss divided by a count summed over ranks ...
    parallel.finish_gradients(params)      # now every rank holds the one-rank gradient of the global batch
    grad_norm = parallel.norm(clip_grad_norm_(params, max_norm))

``ddp``: every rank holds the whole model (rank 0's weights, broadcast at the start) and the gradients are
summed over ranks in flat buckets after the last micro-batch of a step — DDP with gradient accumulation,
written out rather than through ``torch.nn.parallel.DistributedDataParallel``, whose reducer is driven by
the wrapper's ``forward``: rlft's samplers and fused CPU paths call the model's weights directly.

``fsdp2``: torch's ``fully_shard`` on each decoder layer (the classes the model lists in
``_no_split_modules``) and on the root, over a 1-D device mesh: parameters, gradients and optimiser
state are split across ranks (ZeRO-3). FSDP2 averages gradients in its reduce-scatter; rlft's losses are
already divided by global counts, so :meth:`finish_gradients` multiplies by the world size to get the sum.
Sampling and evaluation run inside :meth:`gathered`, where every parameter is whole.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException

from rlft.run import CheckpointError, ConfigError
from rlft.run.distributed import World, collective, world

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["PARALLEL_MODES", "SHARDED_DIR", "CheckpointException", "DataParallel"]

T = TypeVar("T")
PARALLEL_MODES = ("ddp", "fsdp2")
SHARDED_DIR = "dcp"  # the checkpoint's sharded part: torch.distributed.checkpoint's layout
_BUCKET_ELEMENTS = 1 << 24  # 64 MiB of float32 per all-reduce


@dataclass
class DataParallel:
    """How the ranks of a run share one model (see the module docstring)."""

    mode: str = "ddp"
    world: World = field(default_factory=World)
    offload: bool = False  # fsdp2: keep sharded parameters and optimiser state in CPU memory

    @classmethod
    def of(cls, cfg: Any) -> DataParallel:
        """The data parallelism a trainer config asks for (``parallel``, ``fsdp_offload``) on this run's
        ranks."""
        mode = getattr(cfg, "parallel", "ddp")
        if mode not in PARALLEL_MODES:
            raise ConfigError(f"config key 'parallel': expected one of {', '.join(PARALLEL_MODES)}, got {mode!r}")
        return cls(mode, world(), bool(getattr(cfg, "fsdp_offload", False)))

    @property
    def active(self) -> bool:
        return self.world.size > 1

    @property
    def sharded(self) -> bool:
        """Parameters are split across ranks (fsdp2 on more than one rank)."""
        return self.active and self.mode == "fsdp2"

    def prepare(self, model: PreTrainedModel) -> PreTrainedModel:
        """Make ``model`` this rank's part of the data-parallel model, in place; call it before building
        the optimiser (under fsdp2 the parameters become sharded DTensors)."""
        if not self.active:
            return model
        if not self.sharded:
            _broadcast_module(model)
            return model
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import (
            CPUOffloadPolicy,
            OffloadPolicy,
            fully_shard,
            register_fsdp_forward_method,
        )

        device = next(model.parameters()).device.type
        mesh = init_device_mesh(device, (self.world.size,))
        _return_large_blocks()
        offload = CPUOffloadPolicy() if self.offload else OffloadPolicy()
        layer_names = set(getattr(model, "_no_split_modules", None) or ())
        layers = [m for m in model.modules() if type(m).__name__ in layer_names]
        if not layers:
            raise ConfigError(
                f"config key 'parallel': fsdp2 shards a model by its decoder layers, and "
                f"{type(model).__name__} names none (_no_split_modules); use parallel: ddp"
            )
        for layer in layers:
            fully_shard(layer, mesh=mesh, offload_policy=offload)
        fully_shard(model, mesh=mesh, offload_policy=offload)
        # rlft's passes run the body and read the LM head's weight directly, bypassing the root module's
        # forward, whose hooks gather the root's own shards (embeddings, final norm, head) and reduce their
        # gradients: a pass goes through this method instead, which FSDP2 treats as a forward (:meth:`run`)
        type(model).rlft_run = _run_inside  # type: ignore[attr-defined]
        register_fsdp_forward_method(model, "rlft_run")
        # An empty pass now makes FSDP2 set the root up as the root: a first pass that called a decoder
        # layer directly (an evaluation through the body) would make that layer a root of its own.
        model.rlft_run(lambda: None)  # type: ignore[operator]
        model.reshard()  # type: ignore[operator]  # the root keeps its gathered weights after a pass
        return model

    def run(self, model: torch.nn.Module, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, a pass (forward, and later its backward) of ``model`` that may call its
        body and read its head's weights directly: under fsdp2 as a forward of the root module."""
        if not self.sharded:
            return fn(*args, **kwargs)
        return model.rlft_run(fn, *args, **kwargs)  # type: ignore[no-any-return, operator]

    def finish_gradients(self, params: Sequence[torch.Tensor]) -> None:
        """Turn this rank's gradients of its share of the batch into the gradient of the global batch
        (the sum over ranks: every loss is already divided by a global count)."""
        if not self.active:
            return
        if self.sharded:
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(self.world.size)
            return
        _sum_gradients(params)

    def after_step(self) -> None:
        """After an optimiser step under fsdp2: hand the memory of the freed per-layer gathers back to
        the system. glibc's malloc keeps freed blocks below its adaptive mmap threshold (up to 32 MiB)
        in the heap, so without this a rank holds a whole model's worth of gathered layers that it no
        longer uses, and sharding saves nothing."""
        if self.sharded:
            _trim_heap()

    @staticmethod
    def norm(value: torch.Tensor) -> torch.Tensor:
        """A gradient norm as a plain tensor (under fsdp2, ``clip_grad_norm_`` returns a DTensor)."""
        full = getattr(value, "full_tensor", None)
        return full() if callable(full) else value

    @contextlib.contextmanager
    def gathered(self, model: torch.nn.Module) -> Iterator[None]:
        """Inside, every parameter of ``model`` is whole on every rank (under fsdp2: all-gathered once
        and kept so through any number of forwards), so samplers and fused paths may read the weights
        directly and ranks may run different numbers of forwards. Outside fsdp2: nothing to do."""
        if not self.sharded:
            yield
            return
        from torch.distributed.fsdp import FSDPModule

        modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
        for m in modules:
            m.unshard()
            m.set_reshard_after_forward(False, recurse=False)
        try:
            yield
        finally:
            for m in modules:
                m.reshard()
                # FSDP2's defaults: layers free their gathered weights after a forward, the root keeps
                # its own (embeddings, head) for the backward that follows
                m.set_reshard_after_forward(m is not model, recurse=False)

    def full_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """The whole model's state dict in CPU memory on rank 0 (empty on the other ranks); None when the
        model is not sharded (its own state dict is whole). A collective under fsdp2: every rank calls it."""
        if not self.sharded:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True, broadcast_from_rank0=False)
        full = collective(lambda: get_model_state_dict(model, options=options))
        out = {k: v for k, v in full.items() if isinstance(v, torch.Tensor)}
        # tied weights (an LM head sharing the embedding) come back as separate copies: make them one
        # tensor again, so that save_pretrained writes the tied model it would write unsharded
        first: dict[int, str] = {}
        for name, param in model.named_parameters(remove_duplicate=False):
            if name in out:
                out[name] = out[first.setdefault(id(param), name)]
        return out

    def save_sharded(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
        """Every rank writes its shard of the model and of the optimiser state under ``path``
        (``torch.distributed.checkpoint``: a ``.distcp`` file per rank and a ``.metadata`` index)."""
        from torch.distributed.checkpoint.state_dict_saver import save

        save(_state(model, optimizer), checkpoint_id=str(path))

    def load_sharded(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], checkpoint: Path
    ) -> None:
        """Fill ``state["optimizer"]`` (the trainer state of ``checkpoint``) for ``optimizer``: when the
        checkpoint has a sharded part (:meth:`save_sharded`), load it into ``model`` and ``optimizer`` —
        on any number of ranks, sharded or not, since DCP reshards on load — and take the optimiser's
        state from it. A checkpoint without one (written by one process or under ddp) has the whole
        optimiser state already, which a sharded run cannot take: that is a :class:`CheckpointError`.
        The index is read without running code from the file (:class:`~rlft.train.common.safe_dcp.SafeReader`)."""
        from torch.distributed.checkpoint.state_dict import set_state_dict
        from torch.distributed.checkpoint.state_dict_loader import load

        from rlft.train.common.safe_dcp import SafeReader

        path = checkpoint / SHARDED_DIR
        if not (path / ".metadata").is_file():
            if self.sharded:
                raise CheckpointError(
                    f"{checkpoint}: written by one process or under parallel: ddp (no {SHARDED_DIR}/); "
                    "resume it with parallel: ddp"
                )
            return
        loaded = _state(model, optimizer)
        no_dist = not (dist.is_available() and dist.is_initialized())
        with warnings.catch_warnings():  # (one process: DCP says it assumes so)
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            load(loaded, storage_reader=SafeReader(str(path)), no_dist=no_dist)
        set_state_dict(
            model, optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optimizer"]
        )
        state["optimizer"] = optimizer.state_dict()


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


def _return_large_blocks() -> None:
    """Make glibc's malloc map every block over 128 KiB on its own, and unmap it when freed. FSDP2 gathers
    and frees a layer's weights and gradients many times a step; with glibc's adaptive threshold (up to
    32 MiB) those buffers stay in the heap once freed, and a rank's peak holds a whole model's worth of
    them — more than an unsharded rank holds."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):  # not glibc
        pass


_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def _trim_heap() -> None:
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _run_inside(module: torch.nn.Module, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return fn(*args, **kwargs)


def _broadcast_module(model: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (loaded from the same files they already agree;
    this makes it so whatever initialised them)."""
    tensors = [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
    seen: set[int] = set()
    for t in tensors:
        if id(t) in seen:  # tied weights: broadcast once
            continue
        seen.add(id(t))
        collective(functools.partial(dist.broadcast, t.data, src=0))


def _sum_gradients(params: Sequence[torch.Tensor]) -> None:
    """Sum every gradient over ranks, in flat buckets of about 64 MiB. A parameter without a gradient on
    some rank (not reached by its share of the batch) gets a zero one when another rank has one, so every
    rank updates the same parameters."""
    present = torch.tensor([0.0 if p.grad is None else 1.0 for p in params])
    collective(lambda: dist.all_reduce(present, op=dist.ReduceOp.MAX))
    grads = []
    for p, anywhere in zip(params, present.tolist(), strict=True):
        if not anywhere:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    bucket: list[torch.Tensor] = []
    size = 0
    for g in grads:
        bucket.append(g)
        size += g.numel()
        if size >= _BUCKET_ELEMENTS:
            _reduce_bucket(bucket)
            bucket, size = [], 0
    if bucket:
        _reduce_bucket(bucket)


def _reduce_bucket(grads: list[torch.Tensor]) -> None:
    by_dtype: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for g in grads:
        by_dtype.setdefault((g.dtype, g.device), []).append(g)
    for group in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in group])
        collective(functools.partial(dist.all_reduce, flat))
        offset = 0
        for g in group:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def _state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optimizer_state}
