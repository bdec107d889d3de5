"""Batched KV-cache sampling (rlft.models.sampling): log-prob agreement, stopping, padding, seeding, layout."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from rlft.models import (
    HFSampler,
    ModelError,
    Sampler,
    SamplingParams,
    encode_prompts,
    fast_path_blocker,
    filter_logits,
    init_tiny_model,
    make_decoder,
    pick_tokens,
    response_logprobs,
    sample,
    train_tokenizer,
)
from rlft.models.decoders import HFDecoder
from rlft.models.fused.llama_decoder import FastLlamaDecoder

PROMPTS = ["12+34=", "the cat sees", "7+8=", "what is 5 plus 6? the answer is"]
DECODERS = ["hf", "fast"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return init_tiny_model("1m", tokenizer, seed=0)


def _small_config(cls, tokenizer, **kw):
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
def other_models(tokenizer):
    """Architectures exercising the generic path (GPT-2, a sliding window) and the fast path's GQA."""
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tokenizer), n_layer=2, n_embd=32, n_head=2, n_positions=128, eos_token_id=2)
    )
    mistral = MistralForCausalLM(_small_config(MistralConfig, tokenizer, sliding_window=5))
    gqa = LlamaForCausalLM(
        _small_config(LlamaConfig, tokenizer, num_key_value_heads=1, attn_implementation="eager")
    )
    qwen2 = Qwen2ForCausalLM(_small_config(Qwen2Config, tokenizer, tie_word_embeddings=False))  # q/k/v biases
    return {"gpt2": gpt2, "mistral_sliding": mistral, "llama_gqa_eager": gqa, "qwen2_bias": qwen2}


def _recomputed(model, rollout, temperature):
    with torch.no_grad():
        return response_logprobs(
            model,
            rollout.prompt_ids,
            rollout.prompt_mask,
            rollout.response_ids,
            rollout.response_mask,
            temperature=temperature,
        )


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_match_token_logprobs(model, tokenizer, decoder, temperature):
    params = SamplingParams(max_new_tokens=24, temperature=temperature, n=2, seed=3)
    rollout = sample(model, tokenizer, PROMPTS, params, decoder=decoder)
    torch.testing.assert_close(rollout.logprobs, _recomputed(model, rollout, temperature), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["gpt2", "mistral_sliding", "llama_gqa_eager", "qwen2_bias"])
def test_other_architectures_match_token_logprobs(other_models, tokenizer, name):
    model = other_models[name].eval()
    fast = name in ("llama_gqa_eager", "qwen2_bias")
    assert isinstance(make_decoder(model, SamplingParams()), FastLlamaDecoder) == fast
    rollout = sample(model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=12, temperature=0.7, seed=0))
    torch.testing.assert_close(rollout.logprobs, _recomputed(model, rollout, 0.7), atol=1e-4, rtol=0)


def test_fast_path_refuses_other_architectures(other_models):
    assert "gpt2" in fast_path_blocker(other_models["gpt2"])
    assert "sliding" in fast_path_blocker(other_models["mistral_sliding"])
    with pytest.raises(ModelError, match="decoder='fast' is not available"):
        make_decoder(other_models["gpt2"], SamplingParams(), "fast")
    with pytest.raises(ModelError, match="unknown decoder 'vllm'"):
        make_decoder(other_models["gpt2"], SamplingParams(), "vllm")
    assert type(make_decoder(other_models["gpt2"], SamplingParams(), "auto")) is HFDecoder


@pytest.mark.parametrize("decoder", DECODERS)
def test_greedy_equals_hf_generate(model, tokenizer, decoder):
    ids, mask = encode_prompts(tokenizer, PROMPTS, tokenizer.pad_token_id)
    with torch.no_grad():
        expected = model.generate(
            ids, attention_mask=mask, do_sample=False, max_new_tokens=16, pad_token_id=0, eos_token_id=2
        )[:, ids.shape[1] :]
    rollout = sample(
        model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=16, greedy=True), decoder=decoder
    )
    assert torch.equal(rollout.response_ids, expected)


@pytest.mark.parametrize("decoder", DECODERS)
def test_left_padding_does_not_change_greedy_result(model, tokenizer, decoder):
    params = SamplingParams(max_new_tokens=12, greedy=True, temperature=0.8)
    alone = sample(model, tokenizer, ["7+8="], params, decoder=decoder)
    batched = sample(
        model, tokenizer, ["7+8=", "a much longer prompt with 12 tokens or more"], params, decoder=decoder
    )
    assert batched.prompt_mask[0].sum() < batched.prompt_mask.shape[1]  # really padded
    assert torch.equal(batched.response_ids[0], alone.response_ids[0])
    torch.testing.assert_close(batched.logprobs[0], alone.logprobs[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("decoder", DECODERS)
def test_same_seed_same_rollout(model, tokenizer, decoder):
    params = SamplingParams(max_new_tokens=10, n=3, seed=11, eos_token_ids=tuple(range(40, 60)))
    a = sample(model, tokenizer, PROMPTS, params, decoder=decoder)
    b = sample(model, tokenizer, PROMPTS, params, decoder=decoder)
    c = sample(model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=10, n=3, seed=12), decoder=decoder)
    for name in ("response_ids", "response_mask", "logprobs", "finished"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.texts == b.texts
    assert not torch.equal(a.response_ids, c.response_ids[:, : a.response_ids.shape[1]])


def test_fast_and_hf_decoders_agree(model, tokenizer):
    params = SamplingParams(max_new_tokens=16, n=2, seed=5, eos_token_ids=tuple(range(40, 70)))
    fast = sample(model, tokenizer, PROMPTS, params, decoder="fast")
    slow = sample(model, tokenizer, PROMPTS, params, decoder="hf")
    assert torch.equal(fast.response_ids, slow.response_ids)
    torch.testing.assert_close(fast.logprobs, slow.logprobs, atol=1e-5, rtol=0)


def test_n_samples_layout(model, tokenizer):
    rollout = sample(model, tokenizer, PROMPTS[:2], SamplingParams(max_new_tokens=5, n=3, seed=0))
    assert rollout.group_ids.tolist() == [0, 0, 0, 1, 1, 1]
    assert len(rollout) == 6 and len(rollout.texts) == 6
    ids, mask = encode_prompts(tokenizer, PROMPTS[:2], tokenizer.pad_token_id)
    assert torch.equal(rollout.prompt_ids, ids.repeat_interleave(3, dim=0))
    assert torch.equal(rollout.prompt_mask, mask.repeat_interleave(3, dim=0))
    short = rollout.prompt_mask[3].argmax()  # first real column of the shorter prompt
    assert short > 0 and (rollout.prompt_ids[3, :short] == tokenizer.pad_token_id).all()  # left padded
    # different samples of the same prompt differ
    assert not torch.equal(rollout.response_ids[0], rollout.response_ids[1])


@pytest.mark.parametrize("compact_at", [0.0, 1.0])
def test_eos_ends_mask_inclusively_and_pads_after(model, tokenizer, compact_at):
    eos = tuple(range(40, 50))  # a frequent "EOS" so many rows stop early
    params = SamplingParams(max_new_tokens=20, n=4, seed=2, eos_token_ids=eos)
    rollout = sample(model, tokenizer, PROMPTS, params, compact_at=compact_at)
    ids, mask = rollout.response_ids, rollout.response_mask
    is_eos = torch.isin(ids, torch.tensor(eos)) & mask.bool()
    assert rollout.finished.any() and not rollout.finished.all()
    for i in range(len(rollout)):
        n = int(mask[i].sum())
        assert mask[i, :n].all() and not mask[i, n:].any()  # contiguous ones, then zeros
        assert (ids[i, n:] == tokenizer.pad_token_id).all() and (rollout.logprobs[i, n:] == 0).all()
        if rollout.finished[i]:
            assert ids[i, n - 1].item() in eos and is_eos[i].sum() == 1  # ends at its first EOS, inclusive
        else:
            assert n == 20 and not is_eos[i].any()
    torch.testing.assert_close(rollout.logprobs, _recomputed(model, rollout, 1.0), atol=1e-4, rtol=0)


def test_compaction_does_not_change_greedy_results(model, tokenizer):
    prompts = [*PROMPTS, "1+1=", "the dog", "99+1=", "blue"]
    free = sample(model, tokenizer, prompts, SamplingParams(max_new_tokens=20, greedy=True, ignore_eos=True))
    eos = (int(free.response_ids[0, 3]), int(free.response_ids[5, 12]))  # tokens some rows produce
    params = SamplingParams(max_new_tokens=20, greedy=True, eos_token_ids=eos)
    a = sample(model, tokenizer, prompts, params, compact_at=0.0)
    b = sample(model, tokenizer, prompts, params, compact_at=1.0)
    assert 0 < int(a.finished.sum()) < len(prompts)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.response_mask, b.response_mask)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=0)


def test_ignore_eos_runs_full_length(model, tokenizer):
    params = SamplingParams(max_new_tokens=15, seed=2, eos_token_ids=tuple(range(40, 90)), ignore_eos=True)
    rollout = sample(model, tokenizer, PROMPTS, params)
    assert rollout.response_mask.all() and not rollout.finished.any()


@pytest.mark.parametrize("decoder", DECODERS)
def test_stop_string_masks_through_completing_token(model, tokenizer, decoder):
    base = SamplingParams(max_new_tokens=24, greedy=True)
    free = sample(model, tokenizer, PROMPTS, base, decoder=decoder)
    ids = free.response_ids[0].tolist()
    # pick as stop string the text of a clean single token in the middle of row 0's response
    stop = next(
        text
        for text in (tokenizer.decode([i]) for i in ids[6:])
        if text.strip() and text.isascii() and text.isprintable()
    )
    full_text = tokenizer.decode(ids)
    cut = next(k for k in range(1, len(ids) + 1) if stop in tokenizer.decode(ids[:k]))
    stopped = sample(
        model,
        tokenizer,
        PROMPTS,
        SamplingParams(max_new_tokens=24, greedy=True, stop_strings=(stop,)),
        decoder=decoder,
    )
    assert stopped.finished[0] and int(stopped.response_mask[0].sum()) == cut
    assert stopped.response_ids[0, :cut].tolist() == ids[:cut]
    assert (stopped.response_ids[0, cut:] == tokenizer.pad_token_id).all()
    assert stopped.texts[0] == full_text[: full_text.find(stop)]
    for i in range(len(PROMPTS)):  # other rows: stop exactly when their text first contains it
        n = int(stopped.response_mask[i].sum())
        row = free.response_ids[i].tolist()
        assert (stop in tokenizer.decode(row[:n])) == bool(stopped.finished[i])
        assert stop not in tokenizer.decode(row[: n - 1])


def test_top_k_one_and_tiny_top_p_are_greedy(model, tokenizer):
    greedy = sample(model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=8, greedy=True, temperature=0.9))
    top1 = sample(
        model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=8, top_k=1, temperature=0.9, seed=4)
    )
    nucleus = sample(model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=8, top_p=1e-6, temperature=0.9))
    assert torch.equal(top1.response_ids, greedy.response_ids)
    assert torch.equal(nucleus.response_ids, greedy.response_ids)
    # log-probs stay those of the unfiltered tempered distribution
    torch.testing.assert_close(top1.logprobs, greedy.logprobs, atol=1e-5, rtol=0)


def test_filter_logits():
    logp = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logp, 2, 1.0)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logp, 0, 0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logp, 0, 0.85)).tolist() == [[False, False, False, True]]
    assert torch.isinf(filter_logits(logp, 0, 1.0)).tolist() == [[False, False, False, False]]


def test_bf16_autocast_runs_and_stays_close(model, tokenizer):
    params = SamplingParams(max_new_tokens=8, greedy=True, bf16=True)
    rollout = sample(model, tokenizer, PROMPTS, params)
    assert rollout.logprobs.dtype == torch.float32
    assert (rollout.logprobs - _recomputed(model, rollout, 1.0)).abs().max() < 0.1


def test_sampler_protocol_and_token_id_prompts(model, tokenizer):
    sampler = HFSampler(model, tokenizer)
    assert isinstance(sampler, Sampler)
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    params = SamplingParams(max_new_tokens=6, seed=9, stop_strings=("e",))
    a = sampler.sample(ids, params)
    b = sample(model, tokenizer, PROMPTS, params)
    assert torch.equal(a.response_ids, b.response_ids) and a.texts == b.texts


def test_bad_params_and_prompts_are_named(model, tokenizer):
    with pytest.raises(ModelError, match=r"SamplingParams.temperature=0 is invalid \(expected > 0\)"):
        SamplingParams(temperature=0)
    with pytest.raises(ModelError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ModelError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)
    with pytest.raises(ModelError, match="prompt 1 is empty"):
        sample(model, tokenizer, [[5, 6], []])
    with pytest.raises(ModelError, match="non-empty list"):
        sample(model, tokenizer, [])
    with pytest.raises(ModelError, match="not a mix"):
        sample(model, tokenizer, ["a", [5]])
    assert SamplingParams(stop_strings="\n").stop_strings == ("\n",)


def test_pick_tokens_draws_from_tempered_distribution():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])).repeat(40_000, 1)
    generator = torch.Generator().manual_seed(0)
    for temperature in (1.0, 0.5):
        tokens, logp = pick_tokens(logits, SamplingParams(temperature=temperature), generator)
        expected = torch.softmax(logits[0] / temperature, -1)
        freq = torch.bincount(tokens, minlength=4).float() / len(tokens)
        torch.testing.assert_close(freq, expected, atol=0.01, rtol=0)
        torch.testing.assert_close(logp, expected.log()[tokens], atol=1e-6, rtol=0)
    # filtered-out tokens are never drawn
    tokens, _ = pick_tokens(logits, SamplingParams(top_k=2), generator)
    assert set(tokens.tolist()) == {0, 1}


def test_weights_changed_in_place_are_picked_up(tokenizer):
    model = init_tiny_model("1m", tokenizer, seed=1)
    params = SamplingParams(max_new_tokens=8, greedy=True)
    before = sample(model, tokenizer, PROMPTS, params, decoder="fast")
    with torch.no_grad():
        for p in model.parameters():
            p.data.add_(torch.randn_like(p) * 0.05)  # .data: no version bump, the classic stale-cache trap
    after_fast = sample(model, tokenizer, PROMPTS, params, decoder="fast")
    after_hf = sample(model, tokenizer, PROMPTS, params, decoder="hf")
    assert not torch.equal(before.response_ids, after_fast.response_ids)
    assert torch.equal(after_fast.response_ids, after_hf.response_ids)


@pytest.mark.parametrize("decoder", DECODERS)
def test_long_generation_grows_the_cache(other_models, tokenizer, decoder):
    model = other_models["llama_gqa_eager"]  # tiny: 150 steps stay cheap
    params = SamplingParams(max_new_tokens=150, ignore_eos=True, seed=0, temperature=0.9)
    rollout = sample(model, tokenizer, PROMPTS[:2], params, decoder=decoder)
    assert rollout.response_ids.shape == (2, 150)
    torch.testing.assert_close(rollout.logprobs, _recomputed(model, rollout, 0.9), atol=1e-4, rtol=0)


def test_rollout_tensors_are_usable_in_autograd(model, tokenizer):
    rollout = sample(model, tokenizer, PROMPTS[:2], SamplingParams(max_new_tokens=4, seed=0))
    for name in ("prompt_ids", "response_ids", "response_mask", "logprobs", "finished", "group_ids"):
        assert not getattr(rollout, name).is_inference(), name
    weight = torch.ones(1, requires_grad=True)
    (weight * rollout.logprobs).sum().backward()  # saving rollout tensors for backward must work
    assert weight.grad is not None
