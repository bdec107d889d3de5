"""A fused, differentiable forward of Llama-family transformer bodies for training on a CPU.

It computes the same function as the model's own body (``model.get_decoder()``) on right-padded rows
with positions 0..T−1, and gradients flow into the model's own parameters, so an optimiser over
``model.parameters()`` trains it as usual. What makes it faster (per step of DPO on the offline tiny
models, see ``benchmarks/dpo_vs_trl.py``):

- q, k, v projections are one matmul on weights concatenated per call, gate and up another; each
  RMSNorm weight and the attention scale 1/√d are folded into the matmul weight after them (the
  gradients still reach the norm weights through the fold): about half the ops per layer;
- float32 matmuls, forward and both backward products, go to oneDNN
  (:class:`~rlft.models.fused.onednn.OneDNNLinear`) rather than MKL: on the project's AMD CPUs MKL's
  float32 GEMM takes its AVX2 path at ~90 GFLOP/s per core while oneDNN's AVX-512 kernels reach ~215.
  Results agree with ``F.linear`` to float32 rounding;
- ``bf16=True`` casts each fused weight to bfloat16 once per call and runs matmuls and attention in
  bfloat16, keeping the residual stream, norms and everything after the body in float32 (what CPU
  autocast does, with fewer casts);
- RoPE over q and k, SwiGLU and each weightless RMSNorm (with its cast to the matmul dtype) are one
  pass over memory forward and one backward (:mod:`rlft.models.fused.kernels.training`, C compiled on first
  use; torch ops where no compiler is available) instead of 2-8 torch ops each;
- attention is causal with no padding mask: with right padding every real token precedes the padding
  of its row, so the causal mask alone keeps padding out of real positions;
- completions that share a prompt (a preference pair, an RRHF list) can share its computation:
  :class:`SharedPrompts` runs each prompt once and lets every completion attend to its keys and values;
- short rows use explicit attention matmuls, not SDPA (see :func:`_attention`).

``fast_train_blocker`` says when a model does not qualify (then callers use the model's own forward).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel

from ..errors import ModelError
from .kernels.training import rms_norm, rope, rope_tables, swiglu
from .llama_decoder import cat_bias, fast_path_blocker
from .onednn import OneDNNLinear, onednn_linear_available


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, bf16: bool = False) -> Tensor:
    """``F.linear`` over the last dim of ``x``: bfloat16 (``bf16``), oneDNN float32, or plain F.linear."""
    if bf16:
        return F.linear(x.to(torch.bfloat16), weight.to(torch.bfloat16), bias)
    if x.dtype == torch.float32 and x.device.type == "cpu" and onednn_linear_available():
        y: Tensor = OneDNNLinear.apply(x, weight, bias)
        return y
    return F.linear(x, weight, bias)


def fast_train_blocker(model: PreTrainedModel) -> str | None:
    """Why the fused forward cannot stand in for ``model``'s body, or None if it can."""
    reason = fast_path_blocker(model)  # the decode path's architecture check: plain Llama blocks only
    if reason is not None:
        return reason
    config = model.config
    if getattr(config, "attention_dropout", 0.0):
        return "the model uses attention dropout"
    if getattr(model.get_decoder(), "gradient_checkpointing", False):
        return "gradient checkpointing is on"
    body = model.get_decoder()
    if getattr(body, "rotary_emb", None) is None:
        return "the body has no rotary embedding module"
    if type(getattr(body, "norm", None)).__name__ != type(body.layers[0].input_layernorm).__name__:
        return "the final norm differs from the layer norms"
    return None


FORWARDS = ("auto", "fast", "hf")


def use_fused_forward(model: PreTrainedModel, forward: str = "auto") -> bool:
    """Whether to run ``model``'s body with the fused forward: ``forward`` "auto" (when
    :func:`fast_train_blocker` allows it), "fast" (demanded: an error naming the blocker otherwise) or
    "hf" (never)."""
    if forward not in FORWARDS:
        raise ModelError(f"forward={forward!r} (expected one of {', '.join(FORWARDS)})")
    if forward == "hf":
        return False
    blocker = fast_train_blocker(model)
    if blocker is not None and forward == "fast":
        raise ModelError(f"forward='fast' is not possible for this model: {blocker}")
    return blocker is None


MANUAL_ATTENTION_MAX_LEN = 256


def _attention(q: Tensor, k: Tensor, v: Tensor, group: int, allowed: Tensor | None) -> Tensor:
    """softmax(q·kᵀ + mask)·v for q (B, H, Tq, D) and k, v (B, H_kv, Tk, D), the scale already in q. The
    mask is causal (``allowed`` None, Tq = Tk) or ``allowed`` (B, Tq, Tk), True where query i may attend
    to key j (every query needs at least one key).

    Short rows (Tk ≤ 256): explicit batched matmuls with the softmax in float32. On the CPU, SDPA's flash
    kernel is no faster at these lengths in float32 and 3-5× slower in bfloat16 (its backward), and the
    (B, H, Tq, Tk) scores are small. Longer rows use SDPA, whose memory does not grow with T².
    """
    if k.shape[2] > MANUAL_ATTENTION_MAX_LEN:
        mask = None if allowed is None else allowed[:, None]
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=allowed is None, scale=1.0, enable_gqa=group > 1
        )
    if group > 1:  # grouped-query attention: each key/value head serves `group` query heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    if allowed is None:
        blocked = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).triu(1)
    else:
        blocked = ~allowed[:, None]
    scores = torch.matmul(q, k.transpose(-1, -2)).float().masked_fill(blocked, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v)


def _heads(x: Tensor, batch: int, width: int) -> Tensor:
    """Flat rows (batch·width, H, D) → (batch, H, width, D)."""
    return x.view(batch, width, *x.shape[1:]).transpose(1, 2)


def _rows(x: Tensor) -> Tensor:
    """(B, H, T, D) → flat rows (B·T, H·D)."""
    return x.transpose(1, 2).reshape(-1, x.shape[1] * x.shape[3])


def attend_rows(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    layout: tuple[int, int] | SharedPrompts,
    group: int,
    allowed: Tensor | None,
) -> Tensor:
    """Attention of flat rows (N, H, D) laid out as ``layout`` (see :func:`fused_hidden_rows`) → (N, H·D);
    ``allowed`` is ``layout.allowed()`` for shared prompts (computed once per forward, not per layer)."""
    if not isinstance(layout, SharedPrompts):
        batch, width = layout
        q4, k4, v4 = (_heads(t, batch, width) for t in (q, k, v))
        return _rows(_attention(q4, k4, v4, group, None))
    n_prompt = layout.prompts * layout.prompt_width
    qp, kp, vp = (_heads(t[:n_prompt], layout.prompts, layout.prompt_width) for t in (q, k, v))
    qc, kc, vc = (_heads(t[n_prompt:], layout.completions, layout.completion_width) for t in (q, k, v))
    keys = torch.cat([kp.index_select(0, layout.group), kc], dim=2)  # (S, H_kv, P + C, D)
    values = torch.cat([vp.index_select(0, layout.group), vc], dim=2)
    out_p = _attention(qp, kp, vp, group, None)
    out_c = _attention(qc, keys, values, group, allowed)
    return torch.cat([_rows(out_p), _rows(out_c)])


@dataclass
class SharedPrompts:
    """Completions that share prompts: the flat rows of a fused forward are ``G`` right-padded prompts of
    width ``P`` followed by ``S`` right-padded completions of width ``C``; completion s continues prompt
    ``group[s]`` (of ``prompt_lengths[group[s]]`` tokens). Each completion attends to its prompt's real
    tokens and causally to itself — the attention of a separate prompt+completion row, with the prompt's
    keys and values computed once per group instead of once per completion."""

    prompts: int
    prompt_width: int
    completions: int
    completion_width: int
    group: Tensor  # (S,) long
    prompt_lengths: Tensor  # (G,) long

    def allowed(self) -> Tensor:
        """(S, C, P + C): prompt keys up to the prompt's length, then causal over the completion."""
        width = self.prompt_width
        prompt_keys = torch.arange(width)[None, :] < self.prompt_lengths[self.group][:, None]  # (S, P)
        causal = torch.ones(self.completion_width, self.completion_width, dtype=torch.bool).tril()
        return torch.cat(
            [
                prompt_keys[:, None, :].expand(-1, self.completion_width, -1),
                causal[None].expand(self.completions, -1, -1),
            ],
            dim=-1,
        )


def fused_hidden_rows(
    model: PreTrainedModel,
    input_ids: Tensor,
    position_ids: Tensor,
    layout: tuple[int, int] | SharedPrompts,
    bf16: bool = False,
) -> Tensor:
    """Final (normed) hidden states, float32, of flat token rows ``input_ids`` (N,) at ``position_ids`` (N,).

    ``layout`` says how rows attend: ``(B, T)`` — B right-padded sequences of width T, causal (with right
    padding every real token precedes its row's padding, so no padding mask is needed); or a
    :class:`SharedPrompts`.

    Per layer, with n(·) the weightless RMSNorm and w₁, w₂ the norm weights folded into the matmuls:
        h  = x + W_o · attn(rope(s·W_q·w₁ n(x)), rope(W_k·w₁ n(x)), W_v·w₁ n(x))
        x' = h + W_down · (silu(W_gate·w₂ n(h)) ⊙ W_up·w₂ n(h))
    """
    body = model.get_decoder()
    config = model.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    group = heads // kv_heads
    dim = body.layers[0].self_attn.head_dim
    hidden = config.hidden_size
    x = body.embed_tokens(input_ids).float()  # (N, d) residual stream, float32
    cos, sin = body.rotary_emb(x, position_ids[None])  # (1, N, D)
    cs = rope_tables(cos[0], sin[0])  # (N, D) float32
    compute = torch.bfloat16 if bf16 else torch.float32
    allowed = layout.allowed() if isinstance(layout, SharedPrompts) else None

    for layer in body.layers:
        attn, mlp = layer.self_attn, layer.mlp
        ln1, ln2 = layer.input_layernorm, layer.post_attention_layernorm
        s = attn.scaling
        w_qkv = torch.cat([attn.q_proj.weight * s, attn.k_proj.weight, attn.v_proj.weight]) * ln1.weight
        b_qkv = cat_bias(attn.q_proj, attn.k_proj, attn.v_proj, scales=(s, 1.0, 1.0))
        qkv = linear(rms_norm(x, ln1.variance_epsilon, compute), w_qkv, b_qkv, bf16)
        qk, v = rope(qkv, cs, heads, kv_heads, dim)  # (N, H + H_kv, D), (N, H_kv, D) in compute dtype
        out = attend_rows(qk[:, :heads], qk[:, heads:], v, layout, group, allowed)
        x = x + linear(out, attn.o_proj.weight, attn.o_proj.bias, bf16).float()
        w_gu = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]) * ln2.weight
        b_gu = cat_bias(mlp.gate_proj, mlp.up_proj, scales=(1.0, 1.0))
        gate_up = linear(rms_norm(x, ln2.variance_epsilon, compute), w_gu, b_gu, bf16)
        x = x + linear(swiglu(gate_up), mlp.down_proj.weight, mlp.down_proj.bias, bf16).float()
    return F.rms_norm(x, (hidden,), body.norm.weight.float(), body.norm.variance_epsilon)


def fused_hidden_states(model: PreTrainedModel, input_ids: Tensor, bf16: bool = False) -> Tensor:
    """Final (normed) hidden states (B, T, d), float32, of right-padded rows at positions 0..T−1."""
    batch, width = input_ids.shape
    positions = torch.arange(width, device=input_ids.device).repeat(batch)
    rows = fused_hidden_rows(model, input_ids.reshape(-1), positions, (batch, width), bf16)
    return rows.view(batch, width, -1)
