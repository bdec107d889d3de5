"""The fused Llama body of a model whose weights never change (a reference model), with its matmul weights
fused, folded and prepacked for oneDNN once instead of on every call.

:func:`~rlft.models.fused.llama_forward.fused_hidden_rows` rebuilds its fused weights (q/k/v and gate/up
concatenated, norm weights folded in) on every call, because a trained policy changes between calls and
gradients must reach the original parameters. A frozen reference needs neither, so it can keep the
decoder's prepacked :class:`~rlft.models.fused.llama_decoder.FusedWeights` for the whole run — measured 9–17%
less time per reference pass on the offline tiny models (``benchmarks/grpo_vs_trl.py`` shapes) — with
RoPE as the decoder's complex multiplication (:func:`~rlft.models.fused.rope.rotate_pairs`: its q/k rows
are stored pair-interleaved, which leaves every q·k unchanged).

Per layer, with n(·) the weightless RMSNorm and the norm weights folded into the packed matmuls:
    h  = x + W_o · attn(rope(W_q n(x)), rope(W_k n(x)), W_v n(x))
    x' = h + W_down · (silu(W_gate n(h)) ⊙ W_up n(h))
then the final RMSNorm with its weight. No autograd: call it under ``torch.no_grad()``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel

from .llama_decoder import build_fused_weights
from .llama_forward import SharedPrompts, attend_rows
from .rope import rotate_pairs, rotation

__all__ = ["FrozenForward"]


class FrozenForward:
    """``hidden_rows(input_ids, position_ids, layout)``: the same function as
    :func:`~rlft.models.fused.llama_forward.fused_hidden_rows` for a model that ``model`` must never change under
    (its weights are copied, packed, once). ``bf16`` packs bfloat16 weights (matmuls and attention in
    bfloat16, the residual stream and norms in float32)."""

    def __init__(self, model: PreTrainedModel, bf16: bool = False, batch_hint: int = 1024) -> None:
        self.dtype = torch.bfloat16 if bf16 else torch.float32
        self.weights = build_fused_weights(model, self.dtype, batch_hint=batch_hint)
        body = model.get_decoder()
        self.rotary = body.rotary_emb
        self.norm_weight = body.norm.weight.detach().float()

    @torch.no_grad()
    def hidden_rows(
        self, input_ids: Tensor, position_ids: Tensor, layout: tuple[int, int] | SharedPrompts
    ) -> Tensor:
        """Final (normed) hidden states (N, d), float32, of flat token rows; ``layout`` as in
        :func:`~rlft.models.fused.llama_forward.fused_hidden_rows`."""
        w, dtype = self.weights, self.dtype
        heads, kv_heads, dim = w.heads, w.kv_heads, w.head_dim
        group, k_end = heads // kv_heads, (heads + kv_heads) * dim
        x = F.embedding(input_ids, w.embed).float()
        width = x.shape[-1]
        rot = rotation(*self.rotary(torch.zeros(1, 1), position_ids[None]))[0][:, None]  # (N, 1, D/2)
        allowed = layout.allowed() if isinstance(layout, SharedPrompts) else None

        for layer in w.layers:
            qkv = layer.qkv(F.rms_norm(x, (width,), None, layer.eps1))
            qk = rotate_pairs(qkv[:, :k_end].view(-1, heads + kv_heads, dim), rot).to(dtype)
            v = qkv[:, k_end:].view(-1, kv_heads, dim)
            x = x + layer.o(attend_rows(qk[:, :heads], qk[:, heads:], v, layout, group, allowed)).float()
            gate, up = layer.gate_up(F.rms_norm(x, (width,), None, layer.eps2)).chunk(2, dim=-1)
            x = x + layer.down(F.silu(gate) * up).float()
        return F.rms_norm(x, (width,), self.norm_weight, w.norm_eps)
