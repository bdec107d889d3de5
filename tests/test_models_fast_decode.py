"""The fused Llama decode path (with and without the C kernels): static KV cache, complex-number
RoPE, fallback on unknown rotaries."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from rlft.models import (
    SamplingParams,
    fast_path_blocker,
    response_logprobs,
    sample,
    train_tokenizer,
)
from rlft.models.fused import llama_decoder
from rlft.models.fused.llama_decoder import FastLlamaDecoder
from rlft.models.fused.rope import rope_pair_order
from rlft.models.kv_cache import StaticKVCache
from rlft.models.sampling import make_decoder

PROMPTS = ["12+34=", "the cat sees", "7+8=", "what is 5 plus 6? the answer is"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer()


def _config(cls, tokenizer, **kw):
    base = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return cls(**{**base, **kw})


@pytest.fixture(scope="module")
def models(tokenizer):
    torch.manual_seed(0)
    return {
        "llama_gqa": LlamaForCausalLM(_config(LlamaConfig, tokenizer)).eval(),
        "qwen2_bias": Qwen2ForCausalLM(_config(Qwen2Config, tokenizer, tie_word_embeddings=False)).eval(),
        # head size 32: the C attention kernel's vector path (8 above takes its scalar one)
        "llama_d32": LlamaForCausalLM(
            _config(LlamaConfig, tokenizer, hidden_size=64, num_attention_heads=2, num_key_value_heads=1)
        ).eval(),
    }


def test_static_kv_cache_write_views_and_select_rows():
    cache = StaticKVCache(layers=2, batch=3, kv_heads=2, capacity=5, head_dim=4, dtype=torch.float32)
    assert cache.capacity == 16  # rounded up to whole vectors of positions for the C kernel
    g = torch.Generator().manual_seed(0)
    keys, values = torch.randn(2, 3, 5, 2, 4, generator=g), torch.randn(2, 3, 5, 2, 4, generator=g)
    for layer in range(2):  # (B, T, H_kv, D) states, written in two pieces
        cache.write(layer, 0, keys[layer, :, :3], values[layer, :, :3])
        cache.write(layer, 3, keys[layer, :, 3:], values[layer, :, 3:])
    # keys are stored (B, H_kv, D, capacity), values (B, H_kv, capacity, D)
    torch.testing.assert_close(cache.keys[1][..., :5], keys[1].permute(0, 2, 3, 1))
    torch.testing.assert_close(cache.values[1][:, :, :5], values[1].transpose(1, 2))
    # keys3 / values3 are (B·H_kv, …) views of the same memory: writes through one show in the other
    cache.keys3[1][3, 2, 4] = 7.0
    assert cache.keys[1][1, 1, 2, 4] == 7.0
    before_k, before_v = [k.clone() for k in cache.keys], [v.clone() for v in cache.values]
    cache.select(torch.tensor([2, 0]))
    assert cache.keys[0].shape == (2, 2, 4, 16) and cache.values[0].shape == (2, 2, 16, 4)
    for layer in range(2):
        # unwritten positions hold garbage (possibly NaN): compare it as it is
        torch.testing.assert_close(
            cache.keys3[layer], before_k[layer][[2, 0]].reshape(4, 4, 16), equal_nan=True
        )
        torch.testing.assert_close(
            cache.values3[layer], before_v[layer][[2, 0]].reshape(4, 16, 4), equal_nan=True
        )


def test_complex_rope_on_pair_ordered_rows_equals_hf_rope():
    heads, dim, n = 3, 8, 5
    rotary = LlamaRotaryEmbedding(LlamaConfig(hidden_size=heads * dim, num_attention_heads=heads))
    positions = torch.tensor([[0, 1, 4, 9, 30]])
    cos, sin = rotary(torch.zeros(1, 1), positions)  # (1, n, D)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, heads, n, dim, generator=g), torch.randn(1, heads, n, dim, generator=g)
    q_hf, k_hf = apply_rotary_pos_emb(q, k, cos, sin)  # half-split layout
    order = rope_pair_order(heads, dim)
    flat = q.transpose(1, 2).reshape(n, heads * dim)[:, order]  # what the reordered W_q outputs
    cis = torch.complex(cos[0, :, : dim // 2], sin[0, :, : dim // 2])[:, None]  # (n, 1, D/2)
    rotated = torch.view_as_real(torch.view_as_complex(flat.view(n, heads, dim // 2, 2)) * cis)
    expected = q_hf.transpose(1, 2).reshape(n, heads * dim)[:, order]
    torch.testing.assert_close(rotated.reshape(n, heads * dim), expected, atol=1e-6, rtol=1e-5)
    # the same permutation of q and k leaves every attention score unchanged
    k_flat = k_hf.transpose(1, 2).reshape(n, heads * dim)
    torch.testing.assert_close(expected @ k_flat[:, order].T, q_hf.transpose(1, 2).reshape(n, -1) @ k_flat.T)


@pytest.mark.parametrize("name", ["llama_gqa", "qwen2_bias", "llama_d32"])
@pytest.mark.parametrize("compact_at", [0.0, 1.0])
@pytest.mark.parametrize("c_kernels", [True, False])
def test_static_cache_decoder_equals_hf_decoder(models, tokenizer, name, compact_at, c_kernels, monkeypatch):
    if c_kernels and llama_decoder.kernels() is None:
        pytest.skip("C kernels unavailable (no compiler); the torch path is the other case")
    if not c_kernels:  # the torch-ops path of a machine without a C compiler
        monkeypatch.setattr(llama_decoder, "kernels", lambda: None)
    model = models[name]
    assert isinstance(make_decoder(model, SamplingParams()), FastLlamaDecoder)
    params = SamplingParams(
        max_new_tokens=20, n=2, seed=7, temperature=0.8, eos_token_ids=tuple(range(40, 50))
    )
    fast = sample(model, tokenizer, PROMPTS, params, decoder="fast", compact_at=compact_at)
    slow = sample(model, tokenizer, PROMPTS, params, decoder="hf", compact_at=compact_at)
    assert fast.finished.any() and not fast.finished.all()  # compaction really happens at 0.0
    assert torch.equal(fast.response_ids, slow.response_ids)
    assert torch.equal(fast.response_mask, slow.response_mask)
    torch.testing.assert_close(fast.logprobs, slow.logprobs, atol=1e-5, rtol=0)
    with torch.no_grad():
        ref = response_logprobs(
            model, fast.prompt_ids, fast.prompt_mask, fast.response_ids, fast.response_mask, temperature=0.8
        )
    torch.testing.assert_close(fast.logprobs, ref, atol=1e-4, rtol=0)


def test_fast_decoder_refuses_a_rotary_layout_it_does_not_know(tokenizer):
    class SwappedHalves(nn.Module):
        def forward(self, x, position_ids):
            angles = position_ids[..., None].float() * torch.arange(1.0, 9.0)  # halves differ
            return angles.cos(), angles.sin()

    torch.manual_seed(0)
    model = LlamaForCausalLM(_config(LlamaConfig, tokenizer))
    assert fast_path_blocker(model) is None
    model.model.rotary_emb = SwappedHalves()
    assert "rotary" in fast_path_blocker(model)
