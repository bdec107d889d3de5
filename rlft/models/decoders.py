"""Prefill and one-token decode steps over a KV cache, for any HF causal LM.

A decoder owns the per-row state of a batch being generated: the KV cache, which key positions are
real (left padding is not), and each row's next position id. The sampling loop only calls
``prefill`` once, then ``step`` per token and ``select`` to drop finished rows; it never sees the model.

:class:`HFDecoder` runs the model's own transformer body, so it works for every architecture
transformers supports; :mod:`rlft.models.fused.llama_decoder` replaces its ``step`` for Llama-family models.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel

from .kv_cache import cache_argument, cache_is_plain, make_cache
from .lm_head import apply_lm_head
from .positions import position_ids_from_mask


class HFDecoder:
    """Batched decoding through ``model.get_decoder()`` with a :class:`~rlft.models.kv_cache.GrowableLayer` cache.

    Per step it avoids what ``generate`` redoes every token: the 4-D attention mask is a free view of a
    (B, capacity) mask built once (for ``sdpa``/``eager`` attention on plain full-attention caches; other
    cases pass the 2-D mask and let transformers build it), logits are computed for the last position
    only, and the LM head runs in float32 even under bfloat16 autocast so log-probs stay accurate.
    """

    def __init__(self, model: PreTrainedModel, max_new_tokens: int) -> None:
        self.model = model
        self.body = model.get_decoder()
        self.max_new_tokens = max_new_tokens
        self.cache: DynamicCache | None = None  # made by `start` for each batch
        self.length = 0  # number of key positions filled (prompt width + tokens fed so far)

    def start(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Set up the per-row state for a new batch of prompts; returns their position ids (B, P)."""
        batch, width = input_ids.shape
        # Start with room for 128 new tokens; GrowableLayer doubles when a long generation needs more.
        self.cache = make_cache(self.model, width + min(self.max_new_tokens, 128))
        self.key_valid = torch.ones(batch, width + self.max_new_tokens, dtype=torch.bool, device=input_ids.device)
        self.key_valid[:, :width] = attention_mask.bool()
        self.has_padding = not bool(self.key_valid[:, :width].all())
        positions = position_ids_from_mask(attention_mask)
        self.length = width
        self.positions = positions[:, -1] + 1  # each row's next position id
        self._setup_step_masks()
        return positions

    def prefill(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Run the left-padded prompts; return float32 next-token logits (B, V) at the last column."""
        positions = self.start(input_ids, attention_mask)
        out = self.body(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            **cache_argument(self.body, self.cache),
            use_cache=True,
        )
        return self.head(out.last_hidden_state[:, -1])

    def _setup_step_masks(self) -> None:
        """Pick the cheapest correct mask form for one-token steps (see class docstring)."""
        attn = getattr(self.model.config, "_attn_implementation", None)
        plain = self.cache is not None and cache_is_plain(self.cache)
        self.mask_kind = "2d"
        if plain and attn == "sdpa":
            self.mask_kind = "bool"
        elif plain and attn == "eager":
            self.mask_kind = "additive"
            self.key_bias = self.key_valid.new_zeros(self.key_valid.shape, dtype=torch.float32).masked_fill_(
                ~self.key_valid, torch.finfo(torch.float32).min
            )

    def head(self, hidden: Tensor) -> Tensor:
        """Float32 logits of the last hidden states (B, d) → (B, V)."""
        with torch.autocast(hidden.device.type, enabled=False):
            weight_dtype = self.model.get_output_embeddings().weight.dtype
            return apply_lm_head(self.model, hidden.to(weight_dtype)).float()

    def step_mask(self, length: int) -> Tensor:
        """The attention mask for a one-token step that sees ``length`` keys."""
        if self.mask_kind == "bool":
            return self.key_valid[:, None, None, :length]
        if self.mask_kind == "additive":
            return self.key_bias[:, None, None, :length]
        return self.key_valid[:, :length]

    def step(self, tokens: Tensor) -> Tensor:
        """Feed one token per row (B,); return float32 next-token logits (B, V)."""
        out = self.body(
            input_ids=tokens[:, None],
            attention_mask=self.step_mask(self.length + 1),
            position_ids=self.positions[:, None],
            **cache_argument(self.body, self.cache),
            use_cache=True,
        )
        self.length += 1
        self.positions = self.positions + 1
        return self.head(out.last_hidden_state[:, -1])

    def select(self, rows: Tensor) -> None:
        """Keep only batch rows ``rows`` (compaction after some sequences finished)."""
        if self.cache is not None:  # None only before the first batch
            self.cache.batch_select_indices(rows)
        self.key_valid = self.key_valid.index_select(0, rows)
        if self.mask_kind == "additive":
            self.key_bias = self.key_bias.index_select(0, rows)
        self.positions = self.positions.index_select(0, rows)
