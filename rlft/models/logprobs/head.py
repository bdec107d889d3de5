"""The one chunked LM-head log-prob loop: hidden rows and their target tokens in, log-probs (and entropies) out.

For a hidden row h predicting token y, with logits z = head(h) and temperature τ,

    log π(y | ·) = z[y]/τ − logsumexp(z/τ),        H = −Σ_v π(v) log π(v)

in float32 — the sampler's formula, so the ratio exp(logp − logp_old) of PPO-style losses compares like
with like. Materialising all (N, V) logits at once is the usual memory peak of RL fine-tuning (V ≈ 150k
for current LMs), so the head runs on at most ``chunk_size`` rows at a time and each chunk is reduced to
one number per row before the next starts (``gather − logsumexp``: no second (chunk, V) tensor).
Every log-prob path of rlft (token, response, rollout and preference-sequence log-probs) ends here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from transformers import PreTrainedModel

from rlft.algos.policy_losses import entropy_from_logits

from ..lm_head import apply_lm_head


def head_logprobs(
    model: PreTrainedModel,
    rows: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 4096,
    head: Callable[[Tensor], Tensor] | None = None,
    entropy: bool = False,
    entropy_grad: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """(N,) float32 log π(target | row) of (N, d) hidden ``rows`` at ``temperature``, and the (N,) entropies
    of π(· | row) when ``entropy`` (differentiable only if ``entropy_grad`` and grad mode is on).

    ``head`` replaces :func:`~rlft.models.lm_head.apply_lm_head` (the fused path's bias-free oneDNN head).
    The head always runs in float32, autocast or not: log-probs feed exp(logp − logp_old).
    """
    head = head or (lambda r: apply_lm_head(model, r))
    logps, entropies = [], []
    with torch.autocast(rows.device.type, enabled=False):
        for lo in range(0, rows.shape[0], chunk_size):
            logits = head(rows[lo : lo + chunk_size].float()).float()
            if temperature != 1.0:
                logits = logits / temperature
            picked = logits.gather(-1, targets[lo : lo + chunk_size, None]).squeeze(-1)
            logps.append(picked - torch.logsumexp(logits, dim=-1))
            if entropy:
                with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                    entropies.append(entropy_from_logits(logits))
            del logits
    empty = rows.new_zeros(0, dtype=torch.float32)
    logp = torch.cat(logps) if logps else empty
    if not entropy:
        return logp, None
    return logp, (torch.cat(entropies).float() if entropies else empty)
