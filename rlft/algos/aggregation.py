"""Loss aggregation: how per-token losses ℓ_{i,t} become one scalar.

Every mode takes an optional `normalizer`: the count it divides by, computed over the *whole* optimiser
mini-batch (all micro-batches, all data-parallel ranks) with `global_normalizer`. Passing it makes the sum
of the micro-batch losses equal the whole-batch loss, so gradient accumulation and data parallelism do
not change the gradient (verl passes global token/sequence counts; TRL's DAPO divides by
`num_items_in_batch`). Under DDP, which averages gradients over ranks, multiply each rank's loss by the
world size.

Example (two responses, A = 1 over 500 tokens and A = 0.5 over 1500 tokens, ℓ = −A):
token-mean −0.625, seq-mean-token-mean −0.75, seq-mean-token-sum-norm (L_max = 2000) −0.3125,
only-token-mean −1.5.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .registry import Registry

AGGREGATIONS: Registry[Callable[..., Tensor]] = Registry("loss aggregation")


def _rows_with_tokens(mask: Tensor) -> Tensor:
    return (mask.sum(-1) > 0).sum().to(torch.float32)


def global_normalizer(mask: Tensor, mode: str) -> float:
    """What `mode` divides by, counted on the full mini-batch mask: tokens or sequences (1 for OTM)."""
    AGGREGATIONS.get(mode)
    if mode == "token-mean":
        return float(mask.sum())
    if mode == "only-token-mean":
        return 1.0
    return float(_rows_with_tokens(mask))


@AGGREGATIONS.register("token-mean")
def token_mean(
    loss: Tensor, mask: Tensor, normalizer: float | None = None, max_len: int | None = None
) -> Tensor:
    """Σ_{i,t} m ℓ / Σ_{i,t} m — DAPO (arXiv 2503.14476), CISPO, PPO in verl/TRL."""
    denom = mask.sum().clamp(min=1) if normalizer is None else normalizer
    return (loss * mask).sum() / denom


@AGGREGATIONS.register("seq-mean-token-mean")
def seq_mean_token_mean(
    loss: Tensor, mask: Tensor, normalizer: float | None = None, max_len: int | None = None
) -> Tensor:
    """(1/B) Σ_i [Σ_t m ℓ / Σ_t m] — GRPO (arXiv 2402.03300), GSPO, SAPO. B counts non-empty rows."""
    per_seq = (loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    denom = _rows_with_tokens(mask).clamp(min=1) if normalizer is None else normalizer
    return per_seq.sum() / denom


@AGGREGATIONS.register("seq-mean-token-sum")
def seq_mean_token_sum(
    loss: Tensor, mask: Tensor, normalizer: float | None = None, max_len: int | None = None
) -> Tensor:
    """(1/B) Σ_i Σ_t m ℓ — sequence-level REINFORCE / RLOO (arXiv 2402.14740)."""
    denom = _rows_with_tokens(mask).clamp(min=1) if normalizer is None else normalizer
    return (loss * mask).sum() / denom


@AGGREGATIONS.register("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(
    loss: Tensor, mask: Tensor, normalizer: float | None = None, max_len: int | None = None
) -> Tensor:
    """Σ_{i,t} m ℓ / (B · L_max) with a constant generation budget L_max — Dr. GRPO (arXiv 2503.20783)."""
    if max_len is None:
        raise ValueError("seq-mean-token-sum-norm needs max_len (the fixed generation budget L_max)")
    denom = _rows_with_tokens(mask).clamp(min=1) if normalizer is None else normalizer
    return (loss * mask).sum() / (denom * max_len)


@AGGREGATIONS.register("only-token-mean")
def only_token_mean(
    loss: Tensor, mask: Tensor, normalizer: float | None = None, max_len: int | None = None
) -> Tensor:
    """Σ_i [Σ_t m ℓ / Σ_t m] with no 1/B — DCPO's OTM (arXiv 2509.02333, eq. 8). Already additive."""
    return ((loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum()


def aggregate(
    loss: Tensor, mask: Tensor, mode: str, normalizer: float | None = None, max_len: int | None = None
) -> Tensor:
    """Aggregate per-token `loss` (B, T) under `mask` with the named mode."""
    return AGGREGATIONS.get(mode)(loss, mask.to(loss.dtype), normalizer, max_len)
