"""Prefill and one-token decode for Llama-family models (Llama, Mistral without sliding window, Qwen2).

At the batch sizes RL fine-tuning samples with on a CPU, a decode step of a small model is dominated
by per-op overhead and by matmul speed, not by FLOPs: HF's layer code issues ~30 small ops and several
Python wrappers per layer, and its float32 matmuls go to MKL. This decoder computes the same function
with fewer, faster ops:

- q, k, v projections fused into one matmul, gate and up projections into another;
- the attention scale 1/√d folded into the query weights (RoPE is linear, so rope(s·q) = s·rope(q));
- each RMSNorm weight folded into the matmul after it;
- matmul weights prepacked for oneDNN (:mod:`rlft.models.onednn`, about 2-3× MKL's float32 rate here);
- RoPE from a cos/sin table, applied to queries and keys together; decode attention as two batched
  matmuls over the KV heads (grouped-query attention without repeating keys), with an additive
  padding bias only when the batch has padding; prefill attention through SDPA.

It keeps HF's cache object (:mod:`rlft.models.kv_cache`), so it shares masks, compaction and
bookkeeping with :class:`HFDecoder`. The architecture check below is strict: anything unusual (LoRA
wrappers, extra norms, other activations, sliding windows, hooks) falls back to :class:`HFDecoder`.
Numerically it matches the HF forward to float32 rounding (tested against ``token_logprobs``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from .decoders import HFDecoder
from .kv_cache import cache_is_plain
from .onednn import PackedLinear

FAST_MODEL_TYPES = ("llama", "mistral", "qwen2")
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")  # angles independent of sequence length
_LAYER_CHILDREN = {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}
_ATTN_CHILDREN = {"q_proj", "k_proj", "v_proj", "o_proj"}
_MLP_CHILDREN = {"gate_proj", "up_proj", "down_proj", "act_fn"}


def fast_path_blocker(model: PreTrainedModel) -> str | None:
    """Why ``model`` cannot use the fast decode step, or None if it can."""
    config = model.config
    if getattr(config, "model_type", None) not in FAST_MODEL_TYPES:
        return f"model_type {getattr(config, 'model_type', None)!r} is not one of {FAST_MODEL_TYPES}"
    if getattr(config, "hidden_act", None) != "silu":
        return f"hidden_act {getattr(config, 'hidden_act', None)!r} is not 'silu'"
    # The cache HF would build tells whether every layer is plain full attention (no sliding window).
    if any(type(layer) is not DynamicLayer for layer in DynamicCache(config=config).layers):
        return "some layers do not use plain full attention (sliding window?)"
    body = model.get_decoder()
    head = model.get_output_embeddings()
    if type(head) is not nn.Linear or head.bias is not None:
        return "the LM head is not a plain bias-free nn.Linear"
    if type(getattr(body, "embed_tokens", None)) is not nn.Embedding:
        return "the token embedding is not a plain nn.Embedding"
    if getattr(config, "final_logit_softcapping", None):
        return "the model soft-caps its logits"
    for module in model.modules():
        if hasattr(module, "_hf_hook") or module._forward_hooks or module._forward_pre_hooks:
            return "the model has forward hooks (accelerate offloading, adapters, …)"
    for layer in body.layers:
        if {name for name, _ in layer.named_children()} != _LAYER_CHILDREN:
            return f"decoder layer {type(layer).__name__} has unexpected submodules"
        attn, mlp = layer.self_attn, layer.mlp
        if {name for name, _ in attn.named_children()} != _ATTN_CHILDREN:
            return f"attention {type(attn).__name__} has unexpected submodules"
        if {name for name, _ in mlp.named_children()} != _MLP_CHILDREN:
            return f"MLP {type(mlp).__name__} has unexpected submodules"
        linears = [getattr(attn, n) for n in sorted(_ATTN_CHILDREN)] + [
            mlp.gate_proj,
            mlp.up_proj,
            mlp.down_proj,
        ]
        if any(type(lin) is not nn.Linear for lin in linears):
            return "a projection is not a plain nn.Linear (LoRA or quantised layers?)"
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            if not type(norm).__name__.endswith("RMSNorm") or not hasattr(norm, "variance_epsilon"):
                return f"norm {type(norm).__name__} is not a Llama-style RMSNorm"
        if abs(attn.scaling - attn.head_dim**-0.5) > 1e-12:
            return "attention uses a non-standard scale"
    if not type(body.norm).__name__.endswith("RMSNorm"):
        return f"final norm {type(body.norm).__name__} is not a Llama-style RMSNorm"
    return None


@dataclass
class _LayerWeights:
    """One decoder layer, with each RMSNorm weight folded into the matmul that follows it."""

    eps1: float
    eps2: float
    qkv: PackedLinear
    o: PackedLinear
    gate_up: PackedLinear
    down: PackedLinear


@dataclass
class FusedWeights:
    """Decode-step copies of a model's weights (fused, folded, cast, prepacked; see module docstring)."""

    layers: list[_LayerWeights]
    embed: Tensor
    norm_eps: float
    head: PackedLinear
    heads: int
    kv_heads: int
    head_dim: int


def _bias(linear: nn.Linear) -> Tensor:
    return linear.bias if linear.bias is not None else linear.weight.new_zeros(linear.out_features)


def _cat_bias(*linears: nn.Linear, scales: tuple[float, ...]) -> Tensor | None:
    if all(lin.bias is None for lin in linears):
        return None
    return torch.cat([_bias(lin) * scale for lin, scale in zip(linears, scales, strict=True)])


def build_fused_weights(model: PreTrainedModel, dtype: torch.dtype, batch_hint: int = 64) -> FusedWeights:
    """Fuse q/k/v and gate/up, fold norms and the attention scale in, cast matmul weights to ``dtype``.

    Folding: rmsnorm(x)·w then W equals n(x) then W·diag(w), so each norm weight multiplies the columns
    of the next matmul; the 1/√d attention scale multiplies W_q (and b_q). The LM head stays float32
    for accurate log-probs (as in :meth:`HFDecoder.head`).
    """
    body = model.get_decoder()
    config = model.config
    layers = []
    with torch.no_grad():
        for layer in body.layers:
            attn, mlp = layer.self_attn, layer.mlp
            ln1 = layer.input_layernorm.weight.float()
            ln2 = layer.post_attention_layernorm.weight.float()
            s = attn.scaling
            qkv_w = torch.cat(
                [attn.q_proj.weight.float() * s, attn.k_proj.weight.float(), attn.v_proj.weight.float()]
            )
            layers.append(
                _LayerWeights(
                    eps1=float(layer.input_layernorm.variance_epsilon),
                    eps2=float(layer.post_attention_layernorm.variance_epsilon),
                    qkv=PackedLinear(
                        qkv_w * ln1,
                        _cat_bias(attn.q_proj, attn.k_proj, attn.v_proj, scales=(s, 1, 1)),
                        dtype,
                        batch_hint,
                    ),
                    o=PackedLinear(attn.o_proj.weight, attn.o_proj.bias, dtype, batch_hint),
                    gate_up=PackedLinear(
                        torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).float() * ln2,
                        _cat_bias(mlp.gate_proj, mlp.up_proj, scales=(1, 1)),
                        dtype,
                        batch_hint,
                    ),
                    down=PackedLinear(mlp.down_proj.weight, mlp.down_proj.bias, dtype, batch_hint),
                )
            )
        head = model.get_output_embeddings().weight.float() * body.norm.weight.float()
        return FusedWeights(
            layers=layers,
            embed=body.embed_tokens.weight,
            norm_eps=float(body.norm.variance_epsilon),
            head=PackedLinear(head, None, torch.float32, batch_hint),
            heads=config.num_attention_heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            head_dim=body.layers[0].self_attn.head_dim,
        )


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class FastLlamaDecoder(HFDecoder):
    """:class:`HFDecoder` with prefill and step computed by :meth:`_forward` (same cache and bookkeeping)."""

    def __init__(self, model: PreTrainedModel, max_new_tokens: int, weight_dtype: torch.dtype) -> None:
        super().__init__(model, max_new_tokens)
        self.weight_dtype = weight_dtype
        self.rotary = self.body.rotary_emb

    def prefill(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The prompts through the same fused block (oneDNN matmuls, SDPA attention), into the cache."""
        # Rebuilt for every batch (~4% of a 64×64 sampling call on the 15M model): a cache keyed on
        # parameter versions would miss in-place updates through ``param.data``, and stale weights in
        # an RL loop would be a silent bug.
        self.weights = build_fused_weights(self.model, self.weight_dtype, batch_hint=input_ids.shape[0])
        positions = self.start(input_ids, attention_mask)
        if not cache_is_plain(self.cache):  # the architecture check should make this impossible
            raise RuntimeError("fast decode needs a plain full-attention cache")
        self.key_bias = torch.zeros(self.key_valid.shape, dtype=torch.float32).masked_fill_(
            ~self.key_valid, torch.finfo(torch.float32).min
        )
        # RoPE angles depend only on the position for these types: compute cos/sin for every position
        # this generation can reach once, then each step is a table lookup instead of HF's rotary call.
        self.rope_table = None
        if getattr(self.rotary, "rope_type", None) in STATIC_ROPE_TYPES:
            last = int(self.positions.max()) + self.max_new_tokens
            cos, sin = self.rotary(torch.zeros(1, 1), torch.arange(last + 1)[None])
            self.rope_table = (cos[0].float(), sin[0].float())
        width = input_ids.shape[1]
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        # Causal and not a pad key; the diagonal too, so a pad query never has an all-masked row (NaN).
        # Pad positions compute garbage that nothing real attends to.
        mask = (causal & self.key_valid[:, None, :width]) | torch.eye(width, dtype=torch.bool)
        return self._forward(input_ids, positions, mask[:, None])

    def step(self, tokens: Tensor) -> Tensor:
        """Feed one token per row (B,); return float32 next-token logits (B, V)."""
        logits = self._forward(tokens[:, None], self.positions[:, None], None)
        self.length += 1
        self.positions = self.positions + 1
        return logits

    def select(self, rows: Tensor) -> None:
        super().select(rows)
        self.key_bias = self.key_bias.index_select(0, rows)
        self.has_padding = not bool(self.key_valid[:, : self.length].all())

    def _rope(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos, sin (B·T, 1, D) for positions (B, T)."""
        if self.rope_table is None:
            cos, sin = self.rotary(torch.zeros(1, 1), positions)
            return cos.float().flatten(0, 1)[:, None], sin.float().flatten(0, 1)[:, None]
        cos, sin = self.rope_table
        flat = positions.reshape(-1)
        return F.embedding(flat, cos)[:, None], F.embedding(flat, sin)[:, None]

    def _forward(self, tokens: Tensor, positions: Tensor, prefill_mask: Tensor | None) -> Tensor:
        """T tokens per row through every layer, appending their keys/values to the cache; returns the
        float32 logits (B, V) of each row's last token.

        Per layer: h = x + W_o·attn(rope(W_q n), rope(W_k n), W_v n) with n = rmsnorm(x), then
        x' = h + W_down(silu(W_gate m) ⊙ W_up m) with m = rmsnorm(h) — the Llama block. Decoding
        (``prefill_mask`` None, T = 1) attends with two batched matmuls over the KV heads; prefill uses
        SDPA with the given (B, 1, T, T) boolean mask.
        """
        w = self.weights
        batch, steps = tokens.shape
        heads, kv_heads, dim = w.heads, w.kv_heads, w.head_dim
        group = heads // kv_heads
        q_and_k = (heads + kv_heads) * dim
        x = F.embedding(tokens.reshape(-1), w.embed).float()  # (B·T, d) residual stream, float32
        width = x.shape[-1]
        cos, sin = self._rope(positions)
        decode = prefill_mask is None
        bias = self.key_bias[:, None, None, : self.length + 1] if decode and self.has_padding else None
        for layer, cache_layer in zip(w.layers, self.cache.layers, strict=True):
            dtype = layer.qkv.dtype  # compute dtype: float32, or bfloat16 for the bf16 option
            qkv = layer.qkv(F.rms_norm(x, (width,), None, layer.eps1))
            qk = qkv[:, :q_and_k].view(batch * steps, heads + kv_heads, dim)
            qk = (qk * cos + _rotate_half(qk) * sin).to(dtype).view(batch, steps, heads + kv_heads, dim)
            v = qkv[:, q_and_k:].view(batch, steps, kv_heads, dim)
            keys, values = cache_layer.update(qk[:, :, heads:].transpose(1, 2), v.transpose(1, 2))
            if decode:
                q = qk[:, 0, :heads].reshape(batch, kv_heads, group, dim)
                scores = torch.matmul(q, keys.transpose(-1, -2))  # (B, H_kv, group, L); scale is in W_q
                if bias is not None:
                    scores = scores + bias
                probs = torch.softmax(scores.float(), dim=-1).to(dtype)
                attn = torch.matmul(probs, values).reshape(batch, heads * dim)
            else:
                q = qk[:, :, :heads].transpose(1, 2)  # (B, H, T, D)
                attn = F.scaled_dot_product_attention(
                    q, keys, values, attn_mask=prefill_mask, scale=1.0, enable_gqa=group > 1
                )
                attn = attn.transpose(1, 2).reshape(batch * steps, heads * dim)
            x = x + layer.o(attn)
            gate, up = layer.gate_up(F.rms_norm(x, (width,), None, layer.eps2)).chunk(2, dim=-1)
            x = x + layer.down(F.silu(gate) * up)
        last = x.view(batch, steps, width)[:, -1]
        with torch.autocast("cpu", enabled=False):
            return w.head(F.rms_norm(last, (width,), None, w.norm_eps)).float()
