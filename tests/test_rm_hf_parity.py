"""A reward model trained and saved by rlft scores the same in plain ``transformers``, for every architecture
of the zoo — including those whose pad token is the EOS that ends every scored sequence (Phi-3, Qwen2, and
GPT-2 / Mistral / Llama 3, which have no pad token and are padded with EOS).

``AutoModelForSequenceClassification`` pools the rightmost token that is not ``config.pad_token_id``
(``GenericForSequenceClassification.forward``); rlft must pool that same token in training, in the saved
normalisation statistics, in ``rlft score`` and in PPO's reward-model source (``score_texts``).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from arch_zoo import ARCHITECTURES, build_family
from transformers import AutoModelForSequenceClassification

from rlft.data import PromptCompletionRecord, encode_sft, load_records, pad_sequences
from rlft.models import load_reward_model, sequence_scores
from rlft.models.logprobs import position_ids_from_mask
from rlft.rewards import score_texts
from rlft.run import RunDir
from rlft.train import RMConfig, train_rm
from rlft.train.reward.data import encode_groups

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = "task:preference?n=16&label_noise=0"
ATOL = 1e-5
ABSOLUTE_POSITIONS = {"gpt2"}  # learned position embeddings: left padding needs the mask's position_ids


def padded(seqs: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    ids = pad_sequences(seqs, pad_id, side=side)
    lengths = torch.tensor([len(s) for s in seqs])
    cols = torch.arange(ids.shape[1])[None, :]
    mask = cols < lengths[:, None] if side == "right" else cols >= (ids.shape[1] - lengths)[:, None]
    return ids, mask.long()


@pytest.fixture(scope="module", params=ARCHITECTURES)
def trained(request, tmp_path_factory):
    """(family, rlft's saved reward model dir, the RMConfig) after two real training steps."""
    name = request.param
    root = tmp_path_factory.mktemp(f"rm-{name}")
    base = build_family(name, root / "lm")
    cfg = RMConfig(
        model=str(base),
        data=DATA,
        batch_size=4,
        lr=5e-2,  # large, so two steps move the head and the body well away from their initial values
        max_steps=2,
        epochs=None,
        eval_samples=4,
        norm_samples=32,
        torch_threads=1,
    )
    result = train_rm(cfg, RunDir.create(root / "run"), show_progress=False, log=lambda _: None)
    assert result.steps == 2
    return name, result.model_dir, cfg, result.norm


def scored_sequences(model_dir, tokenizer) -> list[list[int]]:
    """Sequences of different lengths that end in EOS: training responses, and a chat-templated one."""
    groups = encode_groups(load_records(DATA, fmt="preference"), tokenizer)
    seqs = [s for g in groups[:3] for s in g.seqs]
    chat = [{"role": "user", "content": "what is 2 plus 3?"}, {"role": "assistant", "content": "5"}]
    rendered = tokenizer.apply_chat_template(chat, tokenize=False)
    seqs.append(tokenizer(rendered, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
    seqs.append(tokenizer("a")["input_ids"] + [tokenizer.eos_token_id])
    assert all(s[-1] == tokenizer.eos_token_id for s in seqs)
    assert len({len(s) for s in seqs}) > 2  # real padding in the batch
    return seqs


def test_saved_config_loads_as_a_one_label_classifier_without_missing_weights(trained) -> None:
    _, model_dir, _, _ = trained
    config = json.loads((model_dir / "config.json").read_text())
    assert len(config["architectures"]) == 1 and config["architectures"][0].endswith(
        "ForSequenceClassification"
    )
    assert config.get("num_labels", len(config.get("id2label", {}))) == 1
    _, tokenizer, _ = load_reward_model(model_dir)
    assert config["pad_token_id"] == tokenizer.pad_token_id  # the id HF users pad with is the one HF skips
    hf, info = AutoModelForSequenceClassification.from_pretrained(str(model_dir), output_loading_info=True)
    assert hf.num_labels == 1
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info


def test_scores_match_transformers_unpadded_right_and_left_padded(trained) -> None:
    name, model_dir, _, _ = trained
    ours_model, tokenizer, _ = load_reward_model(model_dir)
    hf = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    seqs = scored_sequences(model_dir, tokenizer)
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        alone_hf = torch.cat([hf(input_ids=torch.tensor([s])).logits[:, 0] for s in seqs])
        alone_ours = torch.cat(
            [
                sequence_scores(ours_model, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))
                for s in seqs
            ]
        )
        torch.testing.assert_close(alone_ours, alone_hf, atol=ATOL, rtol=0, msg=f"{name}: unpadded")
        ids, mask = padded(seqs, pad, "right")
        right_hf = hf(input_ids=ids, attention_mask=mask).logits[:, 0]
        torch.testing.assert_close(sequence_scores(ours_model, ids, mask), right_hf, atol=ATOL, rtol=0)
        torch.testing.assert_close(right_hf, alone_hf, atol=ATOL, rtol=0, msg=f"{name}: HF right-padded")
        ids, mask = padded(seqs, pad, "left")
        # transformers numbers positions 0..T−1 whatever the mask; the mask's positions make a left-padded
        # row the same as unpadded (GPT-2's learned positions need them; the rotary families do not).
        left_hf = hf(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits[
            :, 0
        ]
        torch.testing.assert_close(sequence_scores(ours_model, ids, mask), left_hf, atol=ATOL, rtol=0)
        torch.testing.assert_close(left_hf, alone_hf, atol=ATOL, rtol=0, msg=f"{name}: HF left-padded")
        if name not in ABSOLUTE_POSITIONS:  # rotary: a shift of every position changes nothing
            plain = hf(input_ids=ids, attention_mask=mask).logits[:, 0]
            torch.testing.assert_close(
                plain, alone_hf, atol=ATOL, rtol=0, msg=f"{name}: HF left, no positions"
            )


def test_training_pooled_the_token_transformers_pools(trained) -> None:
    """The saved mean/std were computed by the in-training model on the training responses: HF's scores of
    the same responses give the same mean/std only if training pooled the same token."""
    name, model_dir, cfg, norm = trained
    _, tokenizer, _ = load_reward_model(model_dir)
    hf = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    groups = encode_groups(load_records(cfg.data, fmt="preference"), tokenizer)
    seqs = [s for g in groups for s in g.seqs][: cfg.norm_samples]
    ids, mask = padded(seqs, tokenizer.pad_token_id, "right")
    with torch.no_grad():
        scores = hf(input_ids=ids, attention_mask=mask).logits[:, 0]
    assert norm["mean"] == pytest.approx(float(scores.mean()), abs=1e-4), name
    assert norm["std"] == pytest.approx(float(scores.std()), abs=1e-4), name


def test_score_texts_matches_transformers(trained) -> None:
    """``rlft score`` and PPO's reward-model source (``score_texts``) against HF on the same tokens."""
    name, model_dir, _, _ = trained
    model, tokenizer, _ = load_reward_model(model_dir)
    hf = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    prompts = ["Describe the salad vividly:", "a", [{"role": "user", "content": "what is 2 plus 3?"}]]
    completions = [" warm busy loud", " b c", "5"]
    ours = score_texts(model, tokenizer, prompts, completions, batch_size=2)
    records = [
        PromptCompletionRecord(prompt=p, completion=c, where=str(i))
        for i, (p, c) in enumerate(zip(prompts, completions, strict=True))
    ]
    seqs = [e.input_ids for e in encode_sft(records, tokenizer)]
    assert seqs[0][-1] == tokenizer.eos_token_id
    ids, mask = padded(seqs, tokenizer.pad_token_id, "right")
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask).logits[:, 0]
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0, msg=name)


def test_pooling_skips_a_final_eos_only_where_it_is_the_pad_token(trained) -> None:
    """Where EOS is the pad token, the score is read at the token before it (HF's rule): appending more
    EOS does not change it. Where a distinct pad exists (Gemma, Qwen3), the EOS itself is scored."""
    name, model_dir, _, _ = trained
    model, tokenizer, _ = load_reward_model(model_dir)
    body = tokenizer("the cat sees the sun")["input_ids"]
    eos = tokenizer.eos_token_id
    with torch.no_grad():
        one, two, none = (
            sequence_scores(model, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))
            for s in ([*body, eos], [*body, eos, eos], body)
        )
    if tokenizer.pad_token_id == eos:
        torch.testing.assert_close(one, none, atol=ATOL, rtol=0, msg=name)
        torch.testing.assert_close(two, none, atol=ATOL, rtol=0, msg=name)
    else:
        assert not torch.allclose(one, none, atol=ATOL), name


def test_a_model_trained_from_a_saved_config_keeps_its_pad(trained, tmp_path) -> None:
    """Continuing a saved reward model (``model:`` a reward-model dir) trains and saves with the same pad id."""
    name, model_dir, cfg, _ = trained
    again = dataclasses.replace(cfg, model=str(model_dir), max_steps=1)
    result = train_rm(again, RunDir.create(tmp_path / "run"), show_progress=False, log=lambda _: None)
    first = json.loads((model_dir / "config.json").read_text())["pad_token_id"]
    assert json.loads((result.model_dir / "config.json").read_text())["pad_token_id"] == first, name


def test_pooled_positions_is_transformers_rule_on_either_padding_side() -> None:
    """``pooled_positions`` against ``GenericForSequenceClassification``'s own expression, pad id 0."""
    from rlft.models.scalar_head import pooled_positions

    seqs = [[5, 6, 0], [7, 0, 0, 8, 0, 0], [9], [0, 0]]  # trailing and inner pad ids; one row all pad ids
    for side in ("right", "left"):
        ids, mask = padded(seqs, 0, side)
        hf_rule = (torch.arange(ids.shape[1]) * (ids != 0)).argmax(-1)
        ours = pooled_positions(ids, mask, 0)
        torch.testing.assert_close(ours[:3], hf_rule[:3], atol=0, rtol=0)
        assert int(ours[3]) == int(mask[3].argmax())  # all pad ids: the first attended token
    ids, mask = padded(seqs, 0, "right")
    assert pooled_positions(ids, mask, 0)[3] == 0  # right padding: where transformers' argmax lands too
    torch.testing.assert_close(pooled_positions(ids, mask, None), mask.sum(-1) - 1, atol=0, rtol=0)
