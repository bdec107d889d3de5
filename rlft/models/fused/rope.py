"""Rotary position embedding (RoPE) in torch ops: the one formula every fused path and kernel check uses.

RoPE rotates each pair of a head's features by the angle θ_j·pos of its position,

    (a, b) ↦ (a·cos − b·sin, a·sin + b·cos)  =  e^{iθ_j·pos}·(a + i·b),

which :func:`rotate_pairs` computes as one complex multiplication. Hugging Face pairs feature j with
j + D/2 (the half-split layout); the fused decoder and the frozen reference instead store their q/k weight
rows in :func:`rope_pair_order`, so each pair is adjacent and the product needs no reordering (the same
permutation of q and k leaves every q·k unchanged). The training forward keeps HF's layout, because its
weights are the model's own, rebuilt per call; :func:`rotate_half_split` gives the same rotation there,
and the C kernels (``kernels/decode.c`` pair-interleaved, ``kernels/train.c`` half-split) are checked
against these two.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


def rotation(cos: Tensor, sin: Tensor) -> Tensor:
    """e^{iθ·pos} = cos + i·sin from HF's (…, D) rotary tables, whose two halves repeat, as (…, D/2)
    complex64."""
    half = cos.shape[-1] // 2
    return torch.complex(cos[..., :half].float(), sin[..., :half].float())


@functools.lru_cache(maxsize=16)
def rope_pair_order(heads: int, head_dim: int) -> Tensor:
    """Row order that puts each RoPE pair (j, j + D/2) of every head next to each other.

    HF rotates x_j with x_{j+D/2}; with rows in this order a head's output is (x_0, x_{D/2}, x_1, …),
    which ``torch.view_as_complex`` reads as the D/2 complex numbers RoPE multiplies by e^{iθ·pos}.
    """
    half = head_dim // 2
    pairs = torch.stack([torch.arange(half), torch.arange(half) + half], dim=-1).flatten()
    return (pairs[None] + head_dim * torch.arange(heads)[:, None]).flatten()


def rotate_pairs(x: Tensor, rot: Tensor) -> Tensor:
    """x (…, D) with pairs (x_{2j}, x_{2j+1}) adjacent, each multiplied by ``rot`` (…, D/2) complex
    (broadcast): (x_{2j} + i·x_{2j+1})·rot_j, computed in float32 and returned in ``x``'s dtype."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * rot).flatten(-2).to(x.dtype)


def rotate_half_split(x: Tensor, rot: Tensor) -> Tensor:
    """:func:`rotate_pairs` on HF's layout, where x_j pairs with x_{j+D/2}:
    (x_j, x_{j+D/2}) ↦ (x_j·cos − x_{j+D/2}·sin, x_j·sin + x_{j+D/2}·cos)."""
    adjacent = x.unflatten(-1, (2, -1)).transpose(-1, -2).flatten(-2)
    rotated: Tensor = rotate_pairs(adjacent, rot).unflatten(-1, (-1, 2))
    return rotated.transpose(-1, -2).flatten(-2)
