"""Fused RoPE, SwiGLU and RMSNorm for the training forward (``train.c``), as autograd functions.

Each of :func:`rope`, :func:`swiglu` and :func:`rms_norm` computes what the torch expression in its
``reference_*`` twin computes (RoPE's formula is :mod:`rlft.models.fused.rope`'s, SwiGLU's is shared with
the decode kernels), forward and backward, in one pass over memory each way instead of several (see
train.c for why that matters with bfloat16 matmuls). Activations are float32 or bfloat16; the arithmetic
is float32 either way, rounded once when stored. Where the library cannot be built (or
``RLFT_KERNELS=0``), or for tensors it does not take (not on the CPU, other dtypes), the
functions run their torch twins, so callers never need to know.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx

from ..rope import rotate_half_split, rotation
from . import load, reference_swiglu

SOURCE = Path(__file__).with_name("train.c")
_SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16"}


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    signatures = {
        ("rope", "fwd"): [p, p, p, p, i, i, i, i, i],
        ("rope", "bwd"): [p, p, p, p, i, i, i, i, i],
        ("swiglu", "fwd"): [p, p, i, i, i],
        ("swiglu", "bwd"): [p, p, p, i, i, i],
        ("rms_norm", "fwd"): [p, p, p, i, i, f, i],
        ("rms_norm", "bwd"): [p, p, p, p, i, i, i],
    }
    for (op, direction), args in signatures.items():
        for suffix in _SUFFIX.values():
            fn = getattr(lib, f"rlft_{op}_{suffix}_{direction}")
            fn.argtypes, fn.restype = args, None
    return lib


def _fn(lib: ctypes.CDLL, op: str, dtype: torch.dtype, direction: str) -> Callable[..., None]:
    # getattr, not lib[name]: CDLL keeps the attribute, which is where _declare set the signature
    fn: Callable[..., None] = getattr(lib, f"rlft_{op}_{_SUFFIX[dtype]}_{direction}")
    return fn


@functools.cache
def train_kernels() -> ctypes.CDLL | None:
    """The loaded, checked training library, or None."""
    return load(SOURCE, _declare, _self_check)


def _usable(*tensors: Tensor) -> bool:
    return train_kernels() is not None and all(t.device.type == "cpu" and t.dtype in _SUFFIX for t in tensors)


# --- RoPE over the [q | k | v] rows of a fused projection --------------------------------------------------


def rope_tables(cos: Tensor, sin: Tensor) -> Tensor:
    """HF's (N, D) cos/sin tables (two equal halves) → (N, D) float32 [cos_0..cos_{D/2−1} | sin_0..], the
    layout ``train.c`` reads."""
    rot = rotation(cos, sin)
    return torch.cat([rot.real, rot.imag], dim=-1).contiguous()


def reference_rope(qkv: Tensor, cs: Tensor, heads: int, kv_heads: int, dim: int) -> tuple[Tensor, Tensor]:
    """q and k of the rows of ``qkv`` (N, (H + 2·H_kv)·D) rotated by HF's half-split RoPE
    (:func:`~rlft.models.fused.rope.rotate_half_split`: computed in float32, returned in ``qkv``'s dtype)
    as (N, H + H_kv, D), and v as (N, H_kv, D)."""
    half, end = dim // 2, (heads + kv_heads) * dim
    rot = torch.complex(cs[:, :half], cs[:, half:])[:, None]
    qk = rotate_half_split(qkv[:, :end].view(-1, heads + kv_heads, dim), rot)
    return qk, qkv[:, end:].view(-1, kv_heads, dim)


class _Ctx(FunctionCtx):
    """Autograd's context as the functions below use it (for the type checker: autograd passes its own
    object, which takes any attribute)."""

    saved_tensors: tuple[Tensor, ...]
    lib: ctypes.CDLL
    shape: tuple[int, int, int]  # _RoPE: (heads, kv_heads, dim)
    dtype: torch.dtype  # _RMSNorm: the output dtype


class _RoPE(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: _Ctx, lib: ctypes.CDLL, qkv: Tensor, cs: Tensor, heads: int, kv_heads: int, dim: int
    ) -> tuple[Tensor, Tensor]:
        qkv = qkv.contiguous()
        rows = qkv.shape[0]
        qk = qkv.new_empty(rows, heads + kv_heads, dim)
        v = qkv.new_empty(rows, kv_heads, dim)
        threads = torch.get_num_threads()
        _fn(lib, "rope", qkv.dtype, "fwd")(
            qkv.data_ptr(), cs.data_ptr(), qk.data_ptr(), v.data_ptr(), rows, heads, kv_heads, dim, threads
        )
        ctx.save_for_backward(cs)
        ctx.lib, ctx.shape = lib, (heads, kv_heads, dim)
        return qk, v

    @staticmethod
    def backward(
        ctx: _Ctx, grad_qk: Tensor | None, grad_v: Tensor | None
    ) -> tuple[None, Tensor, None, None, None, None]:
        (cs,) = ctx.saved_tensors
        heads, kv_heads, dim = ctx.shape
        like = grad_qk if grad_qk is not None else grad_v
        assert like is not None, "autograd passes the gradient of at least one output"
        rows = like.shape[0]
        grad_qk = like.new_zeros(rows, heads + kv_heads, dim) if grad_qk is None else grad_qk.contiguous()
        grad_v = like.new_zeros(rows, kv_heads, dim) if grad_v is None else grad_v.contiguous()
        grad = like.new_empty(rows, (heads + 2 * kv_heads) * dim)
        _fn(ctx.lib, "rope", like.dtype, "bwd")(
            grad_qk.data_ptr(),
            grad_v.data_ptr(),
            cs.data_ptr(),
            grad.data_ptr(),
            rows,
            heads,
            kv_heads,
            dim,
            torch.get_num_threads(),
        )
        return None, grad, None, None, None, None


def rope(qkv: Tensor, cs: Tensor, heads: int, kv_heads: int, dim: int) -> tuple[Tensor, Tensor]:
    """:func:`reference_rope` in one pass each way (``cs`` from :func:`rope_tables`)."""
    if not _usable(qkv) or cs.dtype != torch.float32 or not cs.is_contiguous():
        return reference_rope(qkv, cs, heads, kv_heads, dim)
    qk_v: tuple[Tensor, Tensor] = _RoPE.apply(train_kernels(), qkv, cs, heads, kv_heads, dim)
    return qk_v


# --- SwiGLU ----------------------------------------------------------------------------------------------


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: _Ctx, lib: ctypes.CDLL, gate_up: Tensor) -> Tensor:
        gate_up = gate_up.contiguous()
        rows, inter = gate_up.shape[0], gate_up.shape[1] // 2
        y = gate_up.new_empty(rows, inter)
        _fn(lib, "swiglu", gate_up.dtype, "fwd")(
            gate_up.data_ptr(), y.data_ptr(), rows, inter, torch.get_num_threads()
        )
        ctx.save_for_backward(gate_up)
        ctx.lib = lib
        return y

    @staticmethod
    def backward(ctx: _Ctx, dy: Tensor) -> tuple[None, Tensor]:
        (gate_up,) = ctx.saved_tensors
        dy = dy.to(gate_up.dtype).contiguous()
        grad = torch.empty_like(gate_up)
        rows, inter = dy.shape
        _fn(ctx.lib, "swiglu", gate_up.dtype, "bwd")(
            gate_up.data_ptr(), dy.data_ptr(), grad.data_ptr(), rows, inter, torch.get_num_threads()
        )
        return None, grad


def swiglu(gate_up: Tensor) -> Tensor:
    """:func:`reference_swiglu` in one pass each way, for 2-D ``gate_up``."""
    if not _usable(gate_up) or gate_up.dim() != 2:
        return reference_swiglu(gate_up)
    y: Tensor = _SwiGLU.apply(train_kernels(), gate_up)
    return y


# --- RMSNorm (weightless: the fused forward folds the weight into the next matmul) -------------------------


def reference_rms_norm(x: Tensor, eps: float, dtype: torch.dtype) -> Tensor:
    """x / √(mean(x²) + eps) over the last dim, in float32, returned as ``dtype``."""
    return F.rms_norm(x.float(), (x.shape[-1],), None, eps).to(dtype)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: _Ctx, lib: ctypes.CDLL, x: Tensor, eps: float, dtype: torch.dtype) -> Tensor:
        x = x.contiguous()
        rows, width = x.shape
        y = x.new_empty(rows, width, dtype=dtype)
        rstd = x.new_empty(rows)
        _fn(lib, "rms_norm", dtype, "fwd")(
            x.data_ptr(), y.data_ptr(), rstd.data_ptr(), rows, width, eps, torch.get_num_threads()
        )
        ctx.save_for_backward(x, rstd)
        ctx.lib, ctx.dtype = lib, dtype
        return y

    @staticmethod
    def backward(ctx: _Ctx, dy: Tensor) -> tuple[None, Tensor, None, None]:
        x, rstd = ctx.saved_tensors
        dy = dy.to(ctx.dtype).contiguous()
        dx = torch.empty_like(x)
        rows, width = x.shape
        _fn(ctx.lib, "rms_norm", ctx.dtype, "bwd")(
            x.data_ptr(), rstd.data_ptr(), dy.data_ptr(), dx.data_ptr(), rows, width, torch.get_num_threads()
        )
        return None, dx, None, None


def rms_norm(x: Tensor, eps: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """:func:`reference_rms_norm` in one pass each way, for 2-D float32 ``x``."""
    if not _usable(x) or x.dtype != torch.float32 or x.dim() != 2 or dtype not in _SUFFIX:
        return reference_rms_norm(x, eps, dtype)
    y: Tensor = _RMSNorm.apply(train_kernels(), x, eps, dtype)
    return y


# --- load-time check -----------------------------------------------------------------------------------------


def _rms_norm_apply(lib: ctypes.CDLL, x: Tensor, dtype: torch.dtype) -> Tensor:
    y: Tensor = _RMSNorm.apply(lib, x, 1e-6, dtype)
    return y


_Twin = Callable[[Tensor], Tensor | tuple[Tensor, Tensor]]  # a fused function or its torch twin, on one input


def _self_check(lib: ctypes.CDLL) -> None:
    """Every function, forward and backward, float32 and bfloat16, against its torch twin."""
    g = torch.Generator().manual_seed(0)
    heads, kv_heads, dim, rows = 3, 1, 40, 7  # D/2 = 20: a vector block and a scalar tail
    angle = torch.rand(rows, dim // 2, generator=g) * 6
    cs = torch.cat([angle.cos(), angle.sin()], -1).contiguous()
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        cases: list[tuple[_Twin, _Twin, Tensor]] = [
            (
                lambda t: _RoPE.apply(lib, t, cs, heads, kv_heads, dim),
                lambda t: reference_rope(t, cs, heads, kv_heads, dim),
                torch.randn(rows, (heads + 2 * kv_heads) * dim, generator=g),
            ),
            (lambda t: _SwiGLU.apply(lib, t), reference_swiglu, torch.randn(rows, 2 * 40, generator=g) * 4),
            (
                functools.partial(_rms_norm_apply, lib, dtype=dtype),
                functools.partial(reference_rms_norm, eps=1e-6, dtype=dtype),
                torch.randn(rows, 40, generator=g),
            ),
        ]
        for fused, reference, base in cases:
            x = base if fused is cases[2][0] else base.to(dtype)
            outs = []
            for fn in (fused, reference):
                leaf = x.clone().requires_grad_()
                result = fn(leaf)
                out = result if isinstance(result, tuple) else (result,)
                weights = [torch.linspace(-1, 1, o.numel()).view_as(o).to(o.dtype) for o in out]
                torch.stack(
                    [(o.float() * w.float()).sum() for o, w in zip(out, weights, strict=True)]
                ).sum().backward()
                assert leaf.grad is not None, "the backward gave the input no gradient"
                outs.append([*(o.float() for o in out), leaf.grad.float()])
            for a, b in zip(*outs, strict=True):
                if not torch.allclose(a, b, atol=tol, rtol=tol):
                    raise AssertionError("a training kernel disagrees with its torch twin; using torch ops")
