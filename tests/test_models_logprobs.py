"""Per-token log-probs (rlft.models.logprobs): chunking, alignment, left padding, entropy, errors."""

from __future__ import annotations

import pytest
import torch

from rlft.algos import entropy_from_logits
from rlft.models import (
    ModelError,
    init_tiny_model,
    position_ids_from_mask,
    response_logprobs,
    token_logprobs,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def model():
    return init_tiny_model("1m", train_tokenizer(), seed=0)


def _reference(model, ids, mask, temperature=1.0):
    """Unchunked: full (B, T, V) logits from the model's own forward, then log_softmax and gather."""
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1), logits[:, :-1] / temperature


def _batch(seed=0, batch=3, width=11, vocab=300):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (batch, width), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding
    mask[2, :1] = 0
    ids[mask == 0] = 0
    return ids, mask


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
def test_chunked_equals_full_logits_reference(model, temperature, chunk_size):
    ids, mask = _batch()
    expected, _ = _reference(model, ids, mask, temperature)
    with torch.no_grad():
        got = token_logprobs(model, ids, mask, temperature=temperature, chunk_size=chunk_size)
    assert got.shape == (3, 10)
    real = mask[:, 1:].bool()  # scores of padded targets are meaningless
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=0)


def test_alignment_and_logits_to_keep_from(model):
    ids, mask = _batch()
    with torch.no_grad():
        full = token_logprobs(model, ids, mask)
        tail = token_logprobs(model, ids, mask, logits_to_keep_from=6)
    assert tail.shape == (3, 4)  # scores input_ids[:, 7:]
    torch.testing.assert_close(tail, full[:, 6:], atol=1e-6, rtol=0)


def test_left_padding_does_not_change_logprobs(model):
    ids = torch.randint(4, 300, (1, 8), generator=torch.Generator().manual_seed(2))
    alone = token_logprobs(model, ids, torch.ones_like(ids)).detach()
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), ids], dim=1)
    pmask = torch.cat([torch.zeros(1, 5, dtype=torch.long), torch.ones_like(ids)], dim=1)
    with torch.no_grad():
        shifted = token_logprobs(model, padded, pmask)[:, 5:]
    torch.testing.assert_close(shifted, alone, atol=1e-5, rtol=0)


def test_entropy_matches_algos(model):
    ids, mask = _batch()
    _, scaled_logits = _reference(model, ids, mask, temperature=0.7)
    with torch.no_grad():
        logp, ent = token_logprobs(model, ids, mask, temperature=0.7, chunk_size=5, return_entropy=True)
    torch.testing.assert_close(ent, entropy_from_logits(scaled_logits), atol=1e-4, rtol=0)
    assert logp.shape == ent.shape


def test_gradients_flow(model):
    ids, mask = _batch()
    logp = token_logprobs(model, ids, mask, chunk_size=4)
    logp[mask[:, 1:].bool()].sum().backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_response_logprobs_layout(model):
    ids, mask = _batch(width=9)
    prompt_ids, prompt_mask = ids[:, :5], mask[:, :5]
    response_ids = torch.randint(4, 300, (3, 4), generator=torch.Generator().manual_seed(1))
    response_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    with torch.no_grad():
        got = response_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask)
        full = token_logprobs(
            model, torch.cat([prompt_ids, response_ids], 1), torch.cat([prompt_mask, response_mask], 1)
        )
    assert got.shape == (3, 4)
    torch.testing.assert_close(got, full[:, 4:] * response_mask, atol=1e-6, rtol=0)


def test_bad_inputs_are_named(model):
    ids, mask = _batch()
    with pytest.raises(ModelError, match="attention_mask shape"):
        token_logprobs(model, ids, mask[:, 1:])
    with pytest.raises(ModelError, match="temperature must be > 0"):
        token_logprobs(model, ids, mask, temperature=0.0)
    with pytest.raises(ModelError, match=r"logits_to_keep_from=10 is out of range \(expected 0..9\)"):
        token_logprobs(model, ids, mask, logits_to_keep_from=10)
    with pytest.raises(ModelError, match="input_ids must be 2-D"):
        token_logprobs(model, ids[0], mask[0])
