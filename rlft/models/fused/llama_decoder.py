"""Prefill and one-token decode for Llama-family models (Llama, Mistral without sliding window, Qwen2).

At the batch sizes RL fine-tuning samples with on a CPU, a decode step of a small model is dominated
by per-op overhead and by matmul speed, not by FLOPs: HF's layer code issues ~30 small ops and several
Python wrappers per layer, and its float32 matmuls go to MKL. This decoder computes the same function
with about half as many, faster ops (16 per layer per token, views not counted):

- q, k, v projections fused into one matmul, gate and up projections into another;
- the attention scale 1/√d folded into the query weights (RoPE is linear, so rope(s·q) = s·rope(q));
- each RMSNorm weight folded into the matmul after it;
- matmul weights prepacked for oneDNN (:mod:`rlft.models.fused.onednn`, about 2-3× MKL's float32 rate
  here; oneDNN's fused residual-add post-op measured no faster than a separate add, so it is unused);
- RoPE as one complex multiplication e^{iθ·pos}·(x_j + i·x_{j+D/2}) (:mod:`rlft.models.fused.rope`):
  the q/k weight rows are stored with each rotation pair adjacent, which permutes the head dimension of
  q and k alike and so leaves every q·k unchanged; the rotated keys are written straight into the cache;
- a preallocated static KV cache (:class:`~rlft.models.kv_cache.StaticKVCache`, keys stored
  transposed) written in place;
- float32 decode attention — RoPE, cache write, q·Kᵀ, softmax, p·V for every head — in one C kernel
  call per layer (:mod:`rlft.models.fused.kernels`; torch's ``bmm`` runs these one-row products at about
  10 GFLOP/s), else ``baddbmm`` (padding bias folded in) + softmax + ``bmm`` over (B·H_kv) heads
  (grouped-query attention without repeating keys); prefill attention through SDPA.

The architecture check below is strict: anything unusual (LoRA wrappers, extra norms, other
activations, sliding windows, hooks) falls back to :class:`HFDecoder`. Numerically it matches the HF
forward to float32 rounding (tested against ``token_logprobs``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from ..decoders import HFDecoder
from ..kv_cache import StaticKVCache
from ..positions import position_ids_from_mask
from .kernels import (
    KernelLinear,
    add_rms_norm,
    decode_attention,
    kernels,
    reference_add_rms_norm,
    reference_swiglu,
    swiglu,
)
from .onednn import PackedLinear
from .rope import rope_pair_order, rotate_pairs, rotation

FAST_MODEL_TYPES = ("llama", "mistral", "qwen2")
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")  # angles independent of sequence length
_LAYER_CHILDREN = {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}
_ATTN_CHILDREN = {"q_proj", "k_proj", "v_proj", "o_proj"}
_MLP_CHILDREN = {"gate_proj", "up_proj", "down_proj", "act_fn"}


def _foreign_hooks(module: nn.Module) -> bool:
    """Forward hooks other than FSDP2's, whose only job (gathering and freeing sharded weights) is done
    while the weights are whole (the fused path reads them then, see the DTensor check)."""
    hooks = [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
    return any(not getattr(h, "__module__", "").startswith("torch.distributed.fsdp") for h in hooks)


def fast_path_blocker(model: PreTrainedModel) -> str | None:
    """Why ``model`` cannot use the fast decode step, or None if it can."""
    device = next(model.parameters()).device
    if device.type != "cpu":  # the fused paths are CPU code (C kernels, oneDNN); a GPU runs HF's body
        return f"the fused paths run on the CPU and the weights are on {device}"
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
        if hasattr(module, "_hf_hook") or _foreign_hooks(module):
            return "the model has forward hooks (accelerate offloading, adapters, …)"
    if any(hasattr(p, "full_tensor") for p in model.parameters()):  # DTensor shards (FSDP2)
        return "the weights are sharded (parallel: fsdp2); sampling gathers them first"
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
    rotary = getattr(body, "rotary_emb", None)
    try:
        cos, sin = rotary(torch.zeros(1, 1), torch.arange(4)[None])
        half = cos.shape[-1] // 2
        standard = (
            cos.shape[-1] == body.layers[0].self_attn.head_dim  # no partial rotary
            and torch.equal(cos[..., :half], cos[..., half:])
            and torch.equal(sin[..., :half], sin[..., half:])
        )
    except Exception:  # anything unexpected about the rotary module: not the layout the fast path assumes
        standard = False
    if not standard:
        return "the rotary embedding is not HF's half-split cos/sin layout"
    return None


@dataclass
class _LayerWeights:
    """One decoder layer, with each RMSNorm weight folded into the matmul that follows it."""

    eps1: float
    eps2: float
    qkv: Linear
    o: Linear
    gate_up: Linear
    down: Linear


@dataclass
class FusedWeights:
    """Decode-step copies of a model's weights (fused, folded, cast, prepacked; see module docstring)."""

    layers: list[_LayerWeights]
    embed: Tensor
    norm_eps: float
    head: Linear
    heads: int
    kv_heads: int
    head_dim: int


def _bias(linear: nn.Linear) -> Tensor:
    return linear.bias if linear.bias is not None else linear.weight.new_zeros(linear.out_features)


def cat_bias(
    *linears: nn.Linear, scales: tuple[float, ...], orders: tuple[Tensor | None, ...] | None = None
) -> Tensor | None:
    """The bias of the fused matmul of ``linears``: [s₁·b₁ | s₂·b₂ | …] with a missing bias as zeros and
    part i's rows in ``orders[i]`` where given, or None when none of them has a bias."""
    if all(lin.bias is None for lin in linears):
        return None
    orders = orders or (None,) * len(linears)
    parts = [_bias(lin) * scale for lin, scale in zip(linears, scales, strict=True)]
    return torch.cat([p if order is None else p[order] for p, order in zip(parts, orders, strict=True)])


Linear = PackedLinear | KernelLinear
KERNEL_MAX_IN_FEATURES = 4096  # beyond this a weight panel outgrows the L2 and oneDNN's blocking wins


def _linear(weight: Tensor, bias: Tensor | None, dtype: torch.dtype, batch_hint: int) -> Linear:
    """The C kernel's float32 linear where it is available (no per-call overhead: ~6 µs against
    oneDNN's ~25 µs for a 64×128×128 product here), else oneDNN's prepacked one."""
    lib = kernels()
    if dtype == torch.float32 and lib is not None and weight.shape[1] <= KERNEL_MAX_IN_FEATURES:
        return KernelLinear(lib, weight, bias)
    return PackedLinear(weight, bias, dtype, batch_hint)


def build_fused_weights(model: PreTrainedModel, dtype: torch.dtype, batch_hint: int = 64) -> FusedWeights:
    """Fuse q/k/v and gate/up, fold norms and the attention scale in, cast matmul weights to ``dtype``.

    Folding: rmsnorm(x)·w then W equals n(x) then W·diag(w), so each norm weight multiplies the columns
    of the next matmul; the 1/√d attention scale multiplies W_q (and b_q). The rows of W_q and W_k are
    put in :func:`rope_pair_order`. The LM head stays float32 for accurate log-probs (as in
    :meth:`HFDecoder.head`).
    """
    body = model.get_decoder()
    config = model.config
    layers = []
    linear = functools.partial(_linear, batch_hint=batch_hint)
    with torch.no_grad():
        for layer in body.layers:
            attn, mlp = layer.self_attn, layer.mlp
            ln1 = layer.input_layernorm.weight.float()
            ln2 = layer.post_attention_layernorm.weight.float()
            s = attn.scaling
            q_order = rope_pair_order(config.num_attention_heads, attn.head_dim)
            k_order = rope_pair_order(attn.k_proj.out_features // attn.head_dim, attn.head_dim)
            # in place on the fresh concatenation: this runs for every sampled batch
            qkv_w = torch.cat(
                [attn.q_proj.weight[q_order], attn.k_proj.weight[k_order], attn.v_proj.weight]
            ).float()
            qkv_w[: len(q_order)].mul_(s)
            qkv_w.mul_(ln1)
            layers.append(
                _LayerWeights(
                    eps1=float(layer.input_layernorm.variance_epsilon),
                    eps2=float(layer.post_attention_layernorm.variance_epsilon),
                    qkv=linear(
                        qkv_w,
                        cat_bias(
                            attn.q_proj,
                            attn.k_proj,
                            attn.v_proj,
                            scales=(s, 1, 1),
                            orders=(q_order, k_order, None),
                        ),
                        dtype,
                    ),
                    o=linear(attn.o_proj.weight, attn.o_proj.bias, dtype),
                    gate_up=linear(
                        torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).float().mul_(ln2),
                        cat_bias(mlp.gate_proj, mlp.up_proj, scales=(1, 1)),
                        dtype,
                    ),
                    down=linear(mlp.down_proj.weight, mlp.down_proj.bias, dtype),
                )
            )
        head = model.get_output_embeddings().weight.float() * body.norm.weight.float()
        return FusedWeights(
            layers=layers,
            embed=body.embed_tokens.weight,
            norm_eps=float(body.norm.variance_epsilon),
            head=linear(head, None, torch.float32),
            heads=config.num_attention_heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            head_dim=body.layers[0].self_attn.head_dim,
        )


class FastLlamaDecoder(HFDecoder):
    """:class:`HFDecoder`'s interface (prefill, step, select) over :meth:`_forward` and a
    :class:`~rlft.models.kv_cache.StaticKVCache` instead of HF's model body and cache."""

    def __init__(self, model: PreTrainedModel, max_new_tokens: int, weight_dtype: torch.dtype) -> None:
        super().__init__(model, max_new_tokens)
        self.weight_dtype = weight_dtype
        self.exact = weight_dtype == torch.float32  # float32 compute throughout
        self.rotary = self.body.rotary_emb

    def start(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Per-row state and an empty cache sized for the whole generation; returns position ids (B, P)."""
        batch, width = input_ids.shape
        w = self.weights
        self.kv = StaticKVCache(
            len(w.layers), batch, w.kv_heads, width + self.max_new_tokens, w.head_dim, self.weight_dtype
        )
        self.key_valid = torch.ones(batch, self.kv.capacity, dtype=torch.bool)
        self.key_valid[:, :width] = attention_mask.bool()
        positions = position_ids_from_mask(attention_mask)
        self.length = width
        self.positions = positions[:, -1] + 1  # each row's next position id
        self._set_key_bias()
        return positions

    def _set_key_bias(self) -> None:
        """(B·H_kv, 1, capacity) additive mask of the decode steps: 0 for real keys, float32 min for
        left padding; None when no row is padded (then no mask op at all)."""
        self.kv_key_bias: Tensor | None = None
        if not bool(self.key_valid[:, : self.length].all()):
            bias = torch.zeros(self.key_valid.shape, dtype=torch.float32)
            bias.masked_fill_(~self.key_valid, torch.finfo(torch.float32).min)
            self.kv_key_bias = bias.repeat_interleave(self.weights.kv_heads, dim=0)[:, None]

    def prefill(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The prompts through the same fused block (oneDNN matmuls, SDPA attention), into the cache."""
        # Rebuilt for every batch (~4% of a 64×64 sampling call on the 15M model): a cache keyed on
        # parameter versions would miss in-place updates through ``param.data``, and stale weights in
        # an RL loop would be a silent bug.
        self.weights = build_fused_weights(self.model, self.weight_dtype, batch_hint=input_ids.shape[0])
        positions = self.start(input_ids, attention_mask)
        # RoPE angles depend only on the position for these types: e^{iθ·pos} for every position this
        # generation can reach, once; then each step is a table lookup instead of HF's rotary call.
        self.cis_table = None
        if getattr(self.rotary, "rope_type", None) in STATIC_ROPE_TYPES:
            last = int(self.positions.max()) + self.max_new_tokens
            self.cis_table = rotation(*self.rotary(torch.zeros(1, 1), torch.arange(last + 1)[None]))[0]
        width = input_ids.shape[1]
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        # Causal and not a pad key; the diagonal too, so a pad query never has an all-masked row (NaN).
        # Pad positions compute garbage that nothing real attends to.
        mask = (causal & self.key_valid[:, None, :width]) | torch.eye(width, dtype=torch.bool)
        return self._forward(input_ids, positions, 0, mask[:, None])

    def step(self, tokens: Tensor) -> Tensor:
        """Feed one token per row (B,); return float32 next-token logits (B, V)."""
        logits = self._forward(tokens[:, None], self.positions[:, None], self.length, None)
        self.length += 1
        self.positions = self.positions + 1
        return logits

    def select(self, rows: Tensor) -> None:
        self.kv.select(rows)
        self.key_valid = self.key_valid.index_select(0, rows)
        self.positions = self.positions.index_select(0, rows)
        self._set_key_bias()

    def _rope(self, positions: Tensor) -> Tensor:
        """e^{iθ·pos} (B·T, D/2) complex for positions (B, T)."""
        flat = positions.reshape(-1)
        if self.cis_table is not None:
            return self.cis_table.index_select(0, flat)
        return rotation(*self.rotary(torch.zeros(1, 1), positions)).reshape(flat.shape[0], -1)

    def _forward(self, tokens: Tensor, positions: Tensor, start: int, prefill_mask: Tensor | None) -> Tensor:
        """T tokens per row through every layer, writing their keys/values at cache positions
        [start, start + T); returns the float32 logits (B, V) of each row's last token.

        Per layer: h = x + W_o·attn(rope(W_q n), rope(W_k n), W_v n) with n = rmsnorm(x), then
        x' = h + W_down(silu(W_gate m) ⊙ W_up m) with m = rmsnorm(h) — the Llama block (norm weights
        folded into the next matmul). In float32 with the C kernels (:mod:`rlft.models.fused.kernels`), each
        residual add and the norm after it are one call, SwiGLU is one call, and a decode step runs
        RoPE, the cache write and attention in one call per layer; otherwise (no compiler, bfloat16)
        the same in torch ops, attention in :meth:`_torch_attention` (always so for prefill).
        """
        w = self.weights
        batch, steps = tokens.shape
        x = F.embedding(tokens.reshape(-1), w.embed).float()  # (B·T, d) residual stream, float32
        cis = self._rope(positions).view(batch, steps, 1, w.head_dim // 2)
        lib = kernels() if self.exact else None
        norm: Callable[[Tensor, Tensor | None, float], Tensor]
        act: Callable[[Tensor], Tensor]
        if lib is not None:
            norm, act = functools.partial(add_rms_norm, lib), functools.partial(swiglu, lib)
            cis_rows = torch.view_as_real(cis.view(batch, -1)) if steps == 1 else None  # (B, D/2, 2)
            bias_rows = None if self.kv_key_bias is None else self.kv_key_bias[:, 0]  # (B·H_kv, capacity)
        else:
            norm, act = reference_add_rms_norm, reference_swiglu
        n = norm(x, None, w.layers[0].eps1)
        for i, layer in enumerate(w.layers):
            qkv = layer.qkv(n)  # (B·T, (H + 2·H_kv)·D)
            if lib is not None and cis_rows is not None and prefill_mask is None:  # a decode step
                keys, values = self.kv.keys[i], self.kv.values[i]
                attn = decode_attention(lib, qkv, cis_rows, keys, values, bias_rows, w.heads, start)
            else:
                attn = self._torch_attention(i, qkv, cis, start, steps, prefill_mask)
            n = norm(x, layer.o(attn), layer.eps2)  # x += attention output; n = rmsnorm(x)
            eps = w.layers[i + 1].eps1 if i + 1 < len(w.layers) else w.norm_eps
            n = norm(x, layer.down(act(layer.gate_up(n))), eps)
        last = n.view(batch, steps, -1)[:, -1].contiguous()
        if self.exact:
            return w.head(last)
        with torch.autocast("cpu", enabled=False):
            return w.head(last).float()

    def _torch_attention(
        self, i: int, qkv: Tensor, cis: Tensor, start: int, steps: int, prefill_mask: Tensor | None
    ) -> Tensor:
        """Layer ``i``'s attention in torch ops (prefill; decode without the C kernel or in bf16).

        RoPE is one complex multiplication over q and k together; the rotated keys and the values
        go into the cache at [start, start + T). Decoding (T = 1) attends with two ``bmm`` over
        (B·H_kv) heads, the padding bias folded into the first (``baddbmm``). Prefill (start 0, so the
        keys are exactly this call's) uses SDPA with the (B, 1, T, T) boolean mask.
        """
        w, kv, exact = self.weights, self.kv, self.exact
        dtype = w.layers[i].qkv.dtype  # compute dtype: float32, or bfloat16 for the bf16 option
        heads, kv_heads, dim = w.heads, w.kv_heads, w.head_dim
        batch, group, k_end = qkv.shape[0] // steps, heads // kv_heads, (heads + kv_heads) * dim
        qk = qkv[:, :k_end].view(batch, steps, heads + kv_heads, dim)
        rotated = rotate_pairs(qk, cis)  # (B, T, H + H_kv, D), in qkv's dtype
        q, k = rotated[:, :, :heads], rotated[:, :, heads:]
        v = qkv[:, k_end:].view(batch, steps, kv_heads, dim)
        kv.write(i, start, k, v)
        if prefill_mask is not None:
            attn = F.scaled_dot_product_attention(
                q.transpose(1, 2),
                k.transpose(1, 2),
                v.transpose(1, 2),
                attn_mask=prefill_mask,
                scale=1.0,
                enable_gqa=group > 1,
            )
            return attn.transpose(1, 2).reshape(batch * steps, heads * dim)
        end = start + 1
        q3 = q.reshape(batch * kv_heads, group, dim)
        keys = kv.keys3[i].narrow(2, 0, end)  # (B·H_kv, D, L); the 1/√D scale is in W_q
        bias = None if self.kv_key_bias is None else self.kv_key_bias.narrow(2, 0, end)
        if bias is None:
            scores = torch.bmm(q3, keys)
        elif exact:
            scores = torch.baddbmm(bias, q3, keys)
        else:
            scores = torch.bmm(q3, keys).float() + bias
        probs = torch.softmax(scores, -1) if exact else torch.softmax(scores.float(), -1).to(dtype)
        return torch.bmm(probs, kv.values3[i].narrow(1, 0, end)).view(batch, heads * dim)
