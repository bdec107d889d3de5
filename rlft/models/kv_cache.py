"""A KV cache for batched decoding: HF's ``DynamicCache`` with its full-attention layers stored in place.

``DynamicLayer.update`` appends by ``torch.cat``, which copies the whole cache on every step (for a
14M-parameter model at batch 64 that is ~90 MB of memory traffic per token, comparable to the matmuls).
:class:`GrowableLayer` keeps keys and values in a buffer with spare capacity, writes each new token
into it and hands attention a view of the filled prefix; when full, the capacity doubles (amortised
O(1) per token). Sliding-window or other special layers keep HF's own implementation.

:class:`StaticKVCache` is the fused Llama decoder's own cache (no HF object): one preallocated
(B, H_kv, capacity, D) buffer per layer for keys and one for values, sized for the whole generation
(prompt width + max_new_tokens), so nothing is ever copied to grow, and the (B·H_kv, capacity, D)
views the attention matmuls read are built once per batch instead of once per layer per token.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer


class GrowableLayer(DynamicLayer):
    """One layer's keys/values, (B, H_kv, capacity, D) buffers of which the first ``length`` are filled.

    ``self.keys`` / ``self.values`` are always views of the filled part, so every HF method that reads
    them (``get_seq_length``, ``get_mask_sizes``, …) keeps working unchanged.
    """

    def __init__(self, capacity: int = 64, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.capacity = max(int(capacity), 1)
        self.length = 0
        self.key_buffer: Tensor | None = None
        self.value_buffer: Tensor | None = None

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        batch, heads, _, _ = key_states.shape
        self.key_buffer = key_states.new_empty((batch, heads, self.capacity, key_states.shape[-1]))
        self.value_buffer = value_states.new_empty((batch, heads, self.capacity, value_states.shape[-1]))
        self.length = 0
        self.is_initialized = True

    def _grow(self, needed: int) -> None:
        capacity = self.capacity
        while capacity < needed:
            capacity *= 2
        for name in ("key_buffer", "value_buffer"):
            old = getattr(self, name)
            new = old.new_empty((*old.shape[:2], capacity, old.shape[-1]))
            new[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, new)
        self.capacity = capacity

    def _refresh_views(self) -> tuple[Tensor, Tensor]:
        """Point ``keys`` / ``values`` at the filled part; returns the two views."""
        assert self.key_buffer is not None and self.value_buffer is not None, "the layer is not initialized"
        # narrow, not [:, :, :n]: same view, a fraction of the Python indexing cost (this runs per layer per token)
        self.keys = keys = self.key_buffer.narrow(2, 0, self.length)
        self.values = values = self.value_buffer.narrow(2, 0, self.length)
        return keys, values

    def update(
        self, key_states: Tensor, value_states: Tensor, *args: object, **kwargs: object
    ) -> tuple[Tensor, Tensor]:
        """Write the new (B, H_kv, q, D) states after the filled part; return views of all filled states."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            self._grow(end)
        assert self.key_buffer is not None and self.value_buffer is not None  # set by lazy_initialization
        self.key_buffer.narrow(2, self.length, end - self.length).copy_(key_states)
        self.value_buffer.narrow(2, self.length, end - self.length).copy_(value_states)
        self.length = end
        return self._refresh_views()

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def batch_select_indices(self, indices: Tensor) -> None:
        """Keep only rows ``indices`` (batch compaction)."""
        if not self.is_initialized:
            return
        assert self.key_buffer is not None and self.value_buffer is not None  # initialized
        # Selecting from the whole buffer (at most 2× the filled part) is one op and no temporary.
        self.key_buffer = self.key_buffer.index_select(0, indices)
        self.value_buffer = self.value_buffer.index_select(0, indices)
        self._refresh_views()

    def reorder_cache(self, beam_idx: Tensor) -> None:
        self.batch_select_indices(beam_idx)

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        if self.is_initialized and tokens_to_remove < 0:
            self.length = max(self.length + tokens_to_remove, 0)
            self._refresh_views()

    def reset(self) -> None:
        self.length = 0
        self.key_buffer = self.value_buffer = None
        super().reset()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            assert self.key_buffer is not None and self.value_buffer is not None  # initialized
            self.key_buffer = self.key_buffer.repeat_interleave(repeats, dim=0)
            self.value_buffer = self.value_buffer.repeat_interleave(repeats, dim=0)
            self._refresh_views()


def make_cache(model: PreTrainedModel, capacity: int) -> DynamicCache:
    """A ``DynamicCache`` for ``model`` whose plain full-attention layers are :class:`GrowableLayer`.

    Layers of any other kind (sliding window, linear attention, …) are left as HF built them.
    """
    cache = DynamicCache(config=model.config)
    if cache.layers:
        cache.layers = [
            GrowableLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers
        ]
    else:  # layers are created lazily: make the lazily created ones growable
        # transformers only calls it (`layer_class_to_replicate()`), so a factory does where it declares a class
        cache.layer_class_to_replicate = lambda: GrowableLayer(capacity)  # type: ignore[assignment]
    return cache


@functools.cache
def _cache_parameter(forward_owner: type[torch.nn.Module]) -> str:
    params = inspect.signature(forward_owner.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_argument(body: torch.nn.Module, cache: DynamicCache | None) -> dict[str, DynamicCache | None]:
    """The keyword that hands ``cache`` to ``body.forward``: ``cache`` from transformers 5.24 on, where
    ``past_key_values`` is deprecated (removal announced for 5.40), ``past_key_values`` before it.

    Read once per model class from the forward's signature, so both sides of the rename work without a
    version check and without the deprecation warning.
    """
    # A class is hashable; mypy checks nn.Module's instance __hash__ against functools.cache's Hashable
    return {_cache_parameter(type(body)): cache}  # type: ignore[arg-type]


def cache_is_plain(cache: DynamicCache) -> bool:
    """True if every layer is a :class:`GrowableLayer` (no sliding-window or other special attention)."""
    return bool(cache.layers) and all(type(layer) is GrowableLayer for layer in cache.layers)


CAPACITY_MULTIPLE = 16


class StaticKVCache:
    """Keys and values of ``layers`` layers in fixed buffers sized for a whole generation, written in place.

    Values are (B, H_kv, capacity, D); keys are stored transposed, (B, H_kv, D, capacity), because a
    decode step reads them as the right-hand side of q·Kᵀ: with positions contiguous, both ``bmm`` and
    the C kernel (:mod:`rlft.models.fused.kernels`) compute all scores of a head as D vectorised passes over
    positions, with no reduction across a vector's lanes per key. Position ``j`` of row ``b`` lives at
    ``keys[layer][b, :, :, j]`` and ``values[layer][b, :, j]``. The caller (which tracks how many
    positions are filled) writes each new position and attends over the filled prefix through
    ``keys3`` (B·H_kv, D, capacity) and ``values3`` (B·H_kv, capacity, D), views of the same memory
    with batch and heads merged for ``bmm``. Unwritten positions hold garbage and must never be read.
    The capacity is rounded up to a multiple of :data:`CAPACITY_MULTIPLE` (the kernel's vector width
    in positions, so its passes over positions need no remainder loop).
    """

    def __init__(
        self, layers: int, batch: int, kv_heads: int, capacity: int, head_dim: int, dtype: torch.dtype
    ) -> None:
        capacity = -(-capacity // CAPACITY_MULTIPLE) * CAPACITY_MULTIPLE
        self.keys = [torch.empty((batch, kv_heads, head_dim, capacity), dtype=dtype) for _ in range(layers)]
        self.values = [torch.empty((batch, kv_heads, capacity, head_dim), dtype=dtype) for _ in range(layers)]
        self._refresh_views()

    @property
    def capacity(self) -> int:
        return self.values[0].shape[2]

    def _refresh_views(self) -> None:
        batch, heads, capacity, dim = self.values[0].shape
        self.keys3 = [k.view(batch * heads, dim, capacity) for k in self.keys]
        self.values3 = [v.view(batch * heads, capacity, dim) for v in self.values]

    def write(self, layer: int, start: int, keys: Tensor, values: Tensor) -> None:
        """Store (B, T, H_kv, D) keys and values at positions [start, start + T) of ``layer``."""
        steps = keys.shape[1]
        self.keys[layer].narrow(3, start, steps).copy_(keys.permute(0, 2, 3, 1))
        self.values[layer].narrow(2, start, steps).copy_(values.transpose(1, 2))

    def select(self, rows: Tensor) -> None:
        """Keep only batch rows ``rows`` (compaction after some sequences finished)."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        self._refresh_views()
