"""rlft.data collation: padding, and packing without cross-example contamination."""

from __future__ import annotations

import pytest
import torch

from rlft.data import (
    IGNORE_INDEX,
    DataError,
    Example,
    PreferenceExample,
    PromptExample,
    collate_preference,
    collate_prompts,
    collate_sft,
    packed_attention_mask,
)

PAD = 0


def example(tokens, n_prompt=0):
    tokens = list(tokens)
    return Example(tokens, [IGNORE_INDEX] * n_prompt + tokens[n_prompt:])


EXAMPLES = [example([11, 12, 13], 1), example([21, 22, 23, 24], 2), example([31, 32])]


def test_padded_batch():
    batch = collate_sft(EXAMPLES, PAD)
    assert batch["input_ids"].tolist() == [[11, 12, 13, 0], [21, 22, 23, 24], [31, 32, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 12, 13, -100], [-100, -100, 23, 24], [31, 32, -100, -100]]
    assert collate_sft(EXAMPLES, PAD, max_len=6)["input_ids"].shape == (3, 6)
    with pytest.raises(DataError, match="4 tokens, longer than max_len=3"):
        collate_sft(EXAMPLES, PAD, max_len=3)


def test_packing_layout_positions_and_labels():
    batch = collate_sft(EXAMPLES, PAD, pack=True, max_len=8)
    # 3 + 4 tokens fill row 0 (the 2-token example does not fit in the last slot), row 1 holds the rest.
    assert batch["seq_lens"] == [[3, 4], [2]]
    assert batch["input_ids"].tolist() == [[11, 12, 13, 21, 22, 23, 24, 0], [31, 32, 0, 0, 0, 0, 0, 0]]
    # Positions restart at 0 for every example (and for the padding tail).
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 0, 1, 2, 3, 4, 5]]
    # The first token of each example is never a target, so no example predicts across a boundary.
    assert batch["labels"].tolist() == [
        [-100, 12, 13, -100, -100, 23, 24, -100],
        [-100, 32, -100, -100, -100, -100, -100, -100],
    ]
    assert batch["cu_seqlens"].tolist() == [0, 3, 7, 8, 10, 16]
    assert batch["cu_seqlens"].dtype == torch.int32 and batch["max_seqlen"] == 6
    with pytest.raises(DataError, match="needs max_len"):
        collate_sft(EXAMPLES, PAD, pack=True)


def test_block_diagonal_mask_has_no_cross_example_entries():
    mask = packed_attention_mask([[3, 4], [2]], 8)
    assert mask.shape == (2, 1, 8, 8) and mask.dtype == torch.bool
    segments = [[0, 0, 0, 1, 1, 1, 1, -1], [0, 0, -1, -2, -3, -4, -5, -6]]
    for r, seg in enumerate(segments):
        for i in range(8):
            for j in range(8):
                same = seg[i] == seg[j] and (seg[i] >= 0 or i == j)
                assert bool(mask[r, 0, i, j]) == (same and j <= i), (r, i, j)
    # Every query attends to at least itself, so softmax never sees an all-masked row.
    assert mask.diagonal(dim1=-2, dim2=-1).all()
    additive = packed_attention_mask([[3, 4], [2]], 8, dtype=torch.float32)
    assert (additive[mask] == 0).all() and (additive[~mask] == torch.finfo(torch.float32).min).all()
    assert torch.equal(collate_sft(EXAMPLES, PAD, pack=True, max_len=8)["attention_mask"], mask)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_forward_equals_separate_forwards(attn):
    """A real HF causal LM given the packed batch computes, per example, what it computes alone: same logits
    on every example token and the same mean loss as the padded batch."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        attn_implementation=attn,
    )
    model = LlamaForCausalLM(config).eval()
    packed = collate_sft(EXAMPLES, PAD, pack=True, max_len=8)
    mask = packed["attention_mask"]
    if attn == "eager":  # eager attention adds the mask to the scores: it needs the additive form
        mask = packed_attention_mask(packed["seq_lens"], 8, dtype=torch.float32)
    with torch.no_grad():
        out = model(
            input_ids=packed["input_ids"],
            attention_mask=mask,
            position_ids=packed["position_ids"],
            labels=packed["labels"],
        )
        starts = [(0, 0), (0, 3), (1, 0)]
        for ex, (row, start) in zip(EXAMPLES, starts, strict=True):
            alone = model(input_ids=torch.tensor([ex.input_ids])).logits[0]
            got = out.logits[row, start : start + len(ex.input_ids)]
            torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-4)
        padded = collate_sft(EXAMPLES, PAD)
        reference = model(**padded).loss
    torch.testing.assert_close(out.loss, reference, atol=1e-5, rtol=1e-4)


def test_prompt_and_preference_collation():
    prompts = [PromptExample([5, 6, 7], "a"), PromptExample([8], "b")]
    batch = collate_prompts(prompts, PAD)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]

    pairs = [PreferenceExample([1, 2], [3, 4], [5], margin=0.5), PreferenceExample([1], [6], [7, 8, 9])]
    batch = collate_preference(pairs, PAD)
    assert batch["chosen_input_ids"].tolist() == [[1, 2, 3, 4], [1, 6, 0, 0]]
    assert batch["chosen_labels"].tolist() == [[-100, -100, 3, 4], [-100, 6, -100, -100]]
    assert batch["rejected_input_ids"].tolist() == [[1, 2, 5, 0], [1, 7, 8, 9]]
    assert batch["rejected_attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["margin"][0] == 0.5 and batch["margin"][1].isnan()
