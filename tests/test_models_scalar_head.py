"""Scalar-head models: a reward model from a causal LM, last-token scores under any padding, per-token
values, and a saved reward model that reloads through plain ``transformers`` and scores identically."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from rlft.data import pad_sequences
from rlft.models import (
    ModelError,
    init_tiny_model,
    load_reward_model,
    reward_model_from_causal_lm,
    save_pretrained_atomic,
    save_reward_model,
    sequence_scores,
    token_values,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("scalar")
    tokenizer = train_tokenizer(vocab_size=280)
    lm = init_tiny_model("1m", tokenizer, seed=0, max_position_embeddings=64)
    save_pretrained_atomic(lm, tokenizer, root / "lm")
    return root, tokenizer, lm


def batch(tokenizer, texts, side):
    seqs = [tokenizer(t)["input_ids"] for t in texts]
    ids = pad_sequences(seqs, tokenizer.pad_token_id, side=side)
    lengths = torch.tensor([len(s) for s in seqs])
    width = ids.shape[1]
    cols = torch.arange(width)[None, :]
    mask = cols < lengths[:, None] if side == "right" else cols >= (width - lengths)[:, None]
    return ids, mask.long()


TEXTS = ["the cat sees the sun", "a", "one two three is"]


def test_reward_model_keeps_the_body_and_adds_a_seeded_head(parts) -> None:
    root, _, lm = parts
    rm = reward_model_from_causal_lm(lm, seed=1)
    assert rm.config.num_labels == 1 and rm.score.weight.shape == (1, lm.config.hidden_size)
    for name, value in lm.model.state_dict().items():
        torch.testing.assert_close(rm.model.state_dict()[name], value, rtol=0, atol=0)
    again = reward_model_from_causal_lm(str(root / "lm"), seed=1)
    torch.testing.assert_close(again.score.weight, rm.score.weight, rtol=0, atol=0)
    other = reward_model_from_causal_lm(lm, seed=2)
    assert not torch.equal(other.score.weight, rm.score.weight)


def test_scores_read_the_last_real_token_under_left_and_right_padding(parts) -> None:
    _, tokenizer, lm = parts
    rm = reward_model_from_causal_lm(lm, seed=1)
    with torch.no_grad():
        alone = torch.cat([sequence_scores(rm, *batch(tokenizer, [t], "right")) for t in TEXTS])
        right = sequence_scores(rm, *batch(tokenizer, TEXTS, "right"))
        left = sequence_scores(rm, *batch(tokenizer, TEXTS, "left"))
        values = token_values(rm, *batch(tokenizer, TEXTS, "right"))
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=0)
    assert values.shape == (3, batch(tokenizer, TEXTS, "right")[0].shape[1]) and values.dtype == torch.float32
    n0 = len(tokenizer(TEXTS[0])["input_ids"])
    torch.testing.assert_close(values[0, n0 - 1], alone[0], atol=1e-5, rtol=0)
    # a causal body: the value at t depends on tokens ≤ t only, so it equals the score of the prefix
    prefix = tokenizer(TEXTS[0])["input_ids"][:3]
    ids = torch.tensor([prefix])
    with torch.no_grad():
        torch.testing.assert_close(
            values[0, 2], sequence_scores(rm, ids, torch.ones_like(ids))[0], atol=1e-5, rtol=0
        )


def test_saved_reward_model_reloads_through_transformers_and_scores_identically(parts, tmp_path) -> None:
    _, tokenizer, lm = parts
    rm = reward_model_from_causal_lm(lm, seed=1)
    out = save_reward_model(rm, tokenizer, tmp_path / "rm", norm={"mean": 0.5, "std": 2.0})
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert config["rlft_reward_norm"] == {"mean": 0.5, "std": 2.0}
    assert (out / "model.safetensors").is_file()
    ids, mask = batch(tokenizer, TEXTS, "right")
    hf = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    loaded, tok2, norm = load_reward_model(out)
    assert norm == {"mean": 0.5, "std": 2.0}
    assert tok2(TEXTS[0])["input_ids"] == tokenizer(TEXTS[0])["input_ids"]
    with torch.no_grad():
        ours = sequence_scores(rm, ids, mask)
        assert hf.num_labels == 1
        torch.testing.assert_close(
            hf(input_ids=ids, attention_mask=mask).logits[:, 0], ours, atol=1e-5, rtol=0
        )
        torch.testing.assert_close(sequence_scores(loaded, ids, mask), ours, atol=0, rtol=0)


def test_load_reward_model_errors(parts, tmp_path) -> None:
    root, tokenizer, lm = parts
    with pytest.raises(ModelError, match="not a reward model"):
        load_reward_model(root / "lm")
    with pytest.raises(ModelError, match="no model at"):
        load_reward_model(tmp_path / "missing")
    rm = reward_model_from_causal_lm(lm)
    with pytest.raises(ModelError, match="std > 0"):
        save_reward_model(rm, tokenizer, tmp_path / "bad", norm={"mean": 0.0, "std": 0.0})
    with pytest.raises(ModelError, match="attention_mask all zero"):
        sequence_scores(rm, torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long))
