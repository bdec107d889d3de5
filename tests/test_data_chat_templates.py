"""rlft.data with the chat templates of real model families (tests/arch_zoo.py): multi-turn SFT with templates
that do not render incrementally, generation-marker templates, chat_template_kwargs, end-of-turn ids."""

from __future__ import annotations

import pytest
from arch_zoo import FAMILIES, QWEN2_TEMPLATE, family_tokenizer

import rlft.data.tokenize as tokenize_module
from rlft.data import (
    IGNORE_INDEX,
    ConversationRecord,
    DataError,
    LengthLimits,
    PromptRecord,
    chat_template_kwargs,
    encode_prompts,
    encode_sft,
    set_chat_template_kwargs,
)
from rlft.data.chat import end_of_turn_token_ids, has_generation_markers

# Three assistant turns after a system message; the first and last think aloud.
MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "what is 1 plus 2?"},
    {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n3"},
    {"role": "user", "content": "and 2 plus 2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "the cat?"},
    {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nsat on the mat"},
]
ASSISTANT = [i for i, m in enumerate(MESSAGES) if m["role"] == "assistant"]


@pytest.fixture(scope="module")
def toks():
    return {name: family_tokenizer(family) for name, family in FAMILIES.items()}


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def render(tok, messages, add_generation_prompt):
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def trained(ex):
    return [t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE_INDEX]


def context(ex):
    return ex.input_ids[: next(i for i, lab in enumerate(ex.labels) if lab != IGNORE_INDEX)]


# --- templates that do not render incrementally: one example per assistant turn ----------------------------


@pytest.mark.parametrize("family", ["qwen3", "phi3"])
def test_non_incremental_templates_give_one_example_per_turn(toks, family):
    tok = toks[family]
    out = encode_sft([ConversationRecord(MESSAGES, where="chat.jsonl:3")], tok)
    assert [ex.where for ex in out] == ["chat.jsonl:3 turn 1", "chat.jsonl:3 turn 2", "chat.jsonl:3 turn 3"]
    for ex, k in zip(out, ASSISTANT, strict=True):
        head = render(tok, MESSAGES[:k], True)
        turn = render(tok, MESSAGES[: k + 1], False)[len(head) :]
        # The context is exactly what generation starts from, and the labels exactly this turn's text.
        assert context(ex) == ids(tok, head)
        assert trained(ex) == ids(tok, turn)
        assert tok.decode(trained(ex)) == turn
        assert ex.input_ids == ids(tok, head) + ids(tok, turn)
        assert ex.labels == [IGNORE_INDEX] * len(context(ex)) + ids(tok, turn)
    end = FAMILIES[family].end_of_turn or FAMILIES[family].eos
    assert all(end in tok.decode(trained(ex)) for ex in out)
    assert out.report.kept == 3 and out.report.dropped == 0


def test_qwen3_turns_think_where_generation_would(toks):
    tok = toks["qwen3"]
    first, second, third = encode_sft([ConversationRecord(MESSAGES)], tok)
    assert tok.decode(trained(first)) == "<think>\nadd them\n</think>\n\n3<|im_end|>\n"
    assert tok.decode(trained(second)) == "<think>\n\n</think>\n\n4<|im_end|>\n"
    assert tok.decode(trained(third)) == "<think>\nhmm\n</think>\n\nsat on the mat<|im_end|>\n"
    # Later turns see the earlier ones as the template shows them at that point: without their thinking.
    assert "add them" not in tok.decode(context(second))
    assert tok.decode(context(second)).endswith(
        "<|im_start|>assistant\n3<|im_end|>\n<|im_start|>user\nand 2 plus 2?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tok.decode(context(first)).startswith("<|im_start|>system\nbe brief<|im_end|>\n")


def test_phi3_turns_end_like_the_template(toks):
    tok = toks["phi3"]
    out = encode_sft([ConversationRecord(MESSAGES)], tok)
    assert tok.decode(trained(out[1])) == "4<|end|>\n<|endoftext|>"
    assert tok.decode(context(out[1])).endswith("<|user|>\nand 2 plus 2?<|end|>\n<|assistant|>\n")


def test_per_turn_examples_without_completion_only_loss_train_everything(toks):
    out = encode_sft([ConversationRecord(MESSAGES)], toks["qwen3"], completion_only_loss=False)
    assert len(out) == 3 and all(ex.labels == ex.input_ids for ex in out)


def test_per_turn_examples_are_fitted_one_by_one(toks):
    tok = toks["phi3"]
    record = ConversationRecord(MESSAGES, where="chat.jsonl:3")
    first = encode_sft([record], tok)[0]
    limit = len(first)
    # Turn 1 fits; the contexts of turns 2 and 3 alone fill the budget, so nothing of them is trainable.
    out = encode_sft([record], tok, LengthLimits(max_total_tokens=limit))
    assert [ex.where for ex in out] == ["chat.jsonl:3 turn 1"] and out[0].input_ids == first.input_ids
    assert (out.report.kept, out.report.truncated, out.report.dropped) == (1, 0, 2)
    assert out.report.reasons == {f"conversation with no trainable tokens within max_total_tokens={limit}": 2}
    with pytest.raises(
        DataError,
        match=rf"^chat\.jsonl:3 turn 2: conversation has \d+ tokens, over max_total_tokens={limit}$",
    ):
        encode_sft([record], tok, LengthLimits(max_total_tokens=limit, overflow="error"))


def test_a_template_that_fails_even_turn_by_turn_is_named(toks):
    tok = family_tokenizer(FAMILIES["qwen2"])
    tok.chat_template = "{{ messages | length }} {% for m in messages %}{{ m['content'] }} {% endfor %}"
    record = ConversationRecord(MESSAGES[1:3], where="chat.jsonl:7")
    with pytest.raises(DataError) as err:
        encode_sft([record], tok)
    message = str(err.value)
    assert message.startswith(
        "chat.jsonl:7 turn 1: the chat template does not render conversations incrementally"
    )
    assert "messages[1]" in message and "\n" not in message


@pytest.mark.parametrize("family", ["qwen2", "llama3", "gemma2"])
def test_incremental_templates_keep_one_example_per_conversation(toks, family):
    tok = toks[family]
    messages = MESSAGES  # gemma folds the system text into the first user turn, still incrementally
    (ex,) = encode_sft([ConversationRecord(messages, where="chat.jsonl:3")], tok)
    assert ex.where == "chat.jsonl:3"
    assert ex.input_ids == ids(tok, render(tok, messages, False))
    turns = [render(tok, messages[: k + 1], False)[len(render(tok, messages[:k], True)) :] for k in ASSISTANT]
    assert tok.decode(trained(ex)) == "".join(turns)


# --- templates with {% generation %} markers: transformers' assistant mask --------------------------------

MARKED_CHATML = QWEN2_TEMPLATE.replace(
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}",
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ m['content'] + '<|im_end|>\\n' }}{% endgeneration %}"
    "{% else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}",
)


def test_generation_markers_use_the_assistant_token_mask(toks, monkeypatch):
    assert MARKED_CHATML != QWEN2_TEMPLATE
    marked = family_tokenizer(FAMILIES["qwen2"])
    marked.chat_template = MARKED_CHATML
    assert has_generation_markers(marked) and not has_generation_markers(toks["qwen2"])
    record = ConversationRecord(MESSAGES, where="chat.jsonl:3")
    (expected,) = encode_sft([record], toks["qwen2"])  # the same text, located by prefix rendering

    def not_called(*args, **kwargs):
        raise AssertionError("the prefix-rendering path was used")

    monkeypatch.setattr(tokenize_module, "conversation_sequences", not_called)
    (ex,) = encode_sft([record], marked)
    assert ex.where == "chat.jsonl:3"
    assert ex.input_ids == expected.input_ids and ex.labels == expected.labels
    (full,) = encode_sft([record], marked, completion_only_loss=False)
    assert full.labels == full.input_ids


def test_generation_markers_give_one_sequence_for_a_non_incremental_template():
    tok = family_tokenizer(FAMILIES["phi3"])
    tok.chat_template = (
        "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' }}"
        "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + '<|end|>\\n' }}{% endgeneration %}"
        "{% else %}{{ m['content'] + '<|end|>\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
        "{% if note is defined %}{{ note }}{% endif %}"
    )
    set_chat_template_kwargs(tok, {"note": "the end"})
    (ex,) = encode_sft([ConversationRecord(MESSAGES)], tok)
    assert ex.input_ids == ids(tok, render(tok, MESSAGES, False) + "the end")
    assert tok.decode(trained(ex)) == (
        "<think>\nadd them\n</think>\n\n3<|end|>\n4<|end|>\n<think>\nhmm\n</think>\n\nsat on the mat<|end|>\n"
    )


# --- chat_template_kwargs ----------------------------------------------------------------------------------


def test_chat_template_kwargs_reach_every_rendering():
    tok = family_tokenizer(FAMILIES["qwen3"])
    record = PromptRecord([{"role": "user", "content": "what is 1 plus 2?"}])
    (plain,) = encode_prompts([record], tok)
    assert tok.decode(plain.prompt_ids).endswith("<|im_start|>assistant\n")
    assert not tok.decode(plain.prompt_ids).endswith("<think>\n\n</think>\n\n")
    options = {"enable_thinking": False}
    set_chat_template_kwargs(tok, options)
    options["enable_thinking"] = True  # a copy is stored
    assert chat_template_kwargs(tok) == {"enable_thinking": False}
    (off,) = encode_prompts([record], tok)
    assert tok.decode(off.prompt_ids).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    set_chat_template_kwargs(tok, None)
    assert chat_template_kwargs(tok) == {}
    assert encode_prompts([record], tok)[0].prompt_ids == plain.prompt_ids


def test_chat_template_kwargs_are_checked(toks):
    tok = family_tokenizer(FAMILIES["qwen3"])
    assert chat_template_kwargs(tok) == {}
    with pytest.raises(
        DataError, match=r"^chat_template_kwargs: expected a mapping of names to values, got list"
    ):
        set_chat_template_kwargs(tok, [("enable_thinking", False)])
    with pytest.raises(DataError, match=r"^chat_template_kwargs: expected string keys, got int 1$"):
        set_chat_template_kwargs(tok, {1: False})
    with pytest.raises(DataError, match=r"^chat_template_kwargs: 'add_generation_prompt' is set by rlft"):
        set_chat_template_kwargs(tok, {"add_generation_prompt": True})
    assert chat_template_kwargs(tok) == {}


# --- end of turn ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_end_of_turn_token_ids(toks, family):
    tok = toks[family]
    f = FAMILIES[family]
    expected = [f.end_of_turn, f.eos] if f.end_of_turn else [f.eos]
    assert end_of_turn_token_ids(tok) == tok.convert_tokens_to_ids(expected)
    named = {
        "qwen2": ["<|im_end|>", "<|endoftext|>"],
        "qwen3": ["<|im_end|>"],  # its EOS is <|im_end|>
        "gemma2": ["<end_of_turn>", "<eos>"],
        "gemma3": ["<end_of_turn>", "<eos>"],
        "llama3": ["<|eot_id|>", "<|end_of_text|>"],
        "phi3": ["<|end|>", "<|endoftext|>"],
        "mistral": ["</s>"],
        "gpt2": ["<|endoftext|>"],
    }
    assert tok.convert_ids_to_tokens(end_of_turn_token_ids(tok)) == named[family]


def test_end_of_turn_token_ids_without_a_usable_template():
    tok = family_tokenizer(FAMILIES["qwen2"])
    tok.chat_template = None
    assert end_of_turn_token_ids(tok) == []
    tok.chat_template = "{{ raise_exception('no') }}"
    assert end_of_turn_token_ids(tok) == []
    # Plain text after the turn is no stop signal: only EOS.
    tok.chat_template = "{% for m in messages %}{{ m['content'] + '\\n\\n' }}{% endfor %}"
    assert end_of_turn_token_ids(tok) == [tok.eos_token_id]
