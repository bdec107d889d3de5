"""rlft.data tokenisation: length limits and their report, completion-only labels, EOS, chat templates."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from rlft.data import (
    IGNORE_INDEX,
    ConversationRecord,
    DataError,
    LengthLimits,
    PreferenceRecord,
    PromptCompletionRecord,
    PromptRecord,
    RankedRecord,
    TextRecord,
    UnpairedRecord,
    encode_preference,
    encode_prompts,
    encode_ranked,
    encode_sft,
    encode_unpaired,
    load_records,
)
from rlft.run import ConfigError

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
CORPUS = ["a b c d e f g h", "hello world how are you", "the cat sat on the mat", "be brief and kind"]
# Each turn is "<|role|> content ", and an assistant turn ends with "</s> " (EOS is the end-of-turn token).
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} "
    "{% if m['role'] == 'assistant' %}</s> {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def make_tokenizer(chat_template: str | None = TEMPLATE) -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained on a few lines; it prepends BOS when asked for special tokens."""
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(CORPUS, trainer=trainers.WordLevelTrainer(special_tokens=SPECIALS))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    if chat_template:
        hf.chat_template = chat_template
    return hf


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


BOS, EOS = 2, 3


# --- SFT labels and EOS ----------------------------------------------------------------------------------


def test_completion_only_labels_and_eos(tok):
    (ex,) = encode_sft([PromptCompletionRecord("hello world", "how are you")], tok)
    prompt = [BOS, *ids(tok, "hello world")]
    completion = [*ids(tok, "how are you"), EOS]
    assert ex.input_ids == prompt + completion
    assert ex.labels == [IGNORE_INDEX] * len(prompt) + completion
    (full,) = encode_sft(
        [PromptCompletionRecord("hello world", "how are you")], tok, completion_only_loss=False
    )
    assert full.labels == full.input_ids


def test_plain_text_is_trained_everywhere_with_eos(tok):
    (ex,) = encode_sft([TextRecord("the cat sat")], tok)
    assert ex.input_ids == [BOS, *ids(tok, "the cat sat"), EOS]
    assert ex.labels == ex.input_ids


def test_eos_not_doubled(tok):
    (ex,) = encode_sft([PromptCompletionRecord("hello", "world </s>")], tok)
    assert ex.input_ids[-2:] == [ids(tok, "world")[0], EOS]


def test_sft_rejects_other_formats(tok):
    with pytest.raises(DataError) as err:
        encode_sft([PromptRecord("hello", where="f.jsonl:4")], tok)
    assert str(err.value) == (
        "f.jsonl:4: encode_sft needs prompt_completion, text or conversational records, got prompt_only data"
    )


# --- chat templates --------------------------------------------------------------------------------------


def test_conversation_loss_only_on_assistant_turns(tok):
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello world"},
        {"role": "assistant", "content": "how are you"},
        {"role": "user", "content": "the cat"},
        {"role": "assistant", "content": "sat on the mat"},
    ]
    (ex,) = encode_sft([ConversationRecord(messages)], tok)
    rendered = tok.apply_chat_template(messages, tokenize=False)
    # The pieces join to exactly the rendered conversation ...
    assert ex.input_ids == ids(tok, rendered)
    # ... and only the assistant turns, with their end-of-turn EOS, carry labels.
    trained = [t for t in ex.labels if t != IGNORE_INDEX]
    assert trained == ids(tok, "how are you </s> sat on the mat </s>")
    assert tok.decode([t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab == IGNORE_INDEX]) == (
        "<|system|> be brief <|user|> hello world <|assistant|> <|user|> the cat <|assistant|>"
    )
    (full,) = encode_sft([ConversationRecord(messages)], tok, completion_only_loss=False)
    assert full.labels == full.input_ids


def test_conversational_prompt_and_completion(tok):
    prompt = [{"role": "user", "content": "hello world"}]
    (ex,) = encode_sft([PromptCompletionRecord(prompt, "how are you")], tok)
    head = ids(tok, "<|user|> hello world <|assistant|>")
    # The template already ends the assistant turn with EOS, so none is added.
    assert ex.input_ids == head + ids(tok, "how are you </s>")
    assert ex.labels == [IGNORE_INDEX] * len(head) + ids(tok, "how are you </s>")
    (p,) = encode_prompts([PromptRecord(prompt, extra={"answer": "x"})], tok)
    assert p.prompt_ids == head and p.extra == {"answer": "x"}


def test_no_chat_template_is_named(tok):
    plain = make_tokenizer(chat_template=None)
    record = ConversationRecord([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    record.where = "chat.jsonl:2"
    with pytest.raises(DataError) as err:
        encode_sft([record], plain)
    assert str(err.value) == (
        "chat.jsonl:2: conversational data needs a chat template, but the tokenizer has none "
        "(set tokenizer.chat_template or use a chat model's tokenizer)"
    )


def test_non_incremental_template_is_refused():
    tok = make_tokenizer("{{ messages | length }} {% for m in messages %}{{ m['content'] }} {% endfor %}")
    record = ConversationRecord([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    with pytest.raises(DataError, match="does not render conversations incrementally"):
        encode_sft([record], tok)


# --- length limits -------------------------------------------------------------------------------------


def test_truncation_prompt_left_keeping_bos_completion_right(tok):
    record = PromptCompletionRecord("a b c d e", "f g h")
    limits = LengthLimits(max_prompt_tokens=3, max_completion_tokens=2)
    out = encode_sft([record], tok, limits)
    (ex,) = out
    # Prompt [<s> a b c d e] → BOS kept, then the END of the prompt; completion [f g h </s>] → [f g].
    assert ex.input_ids == [BOS, *ids(tok, "d e"), *ids(tok, "f g")]
    assert ex.labels[:3] == [IGNORE_INDEX] * 3
    assert (out.report.kept, out.report.truncated, out.report.dropped) == (1, 1, 0)
    assert out.report.reasons == {
        "prompt over max_prompt_tokens=3": 1,
        "completion over max_completion_tokens=2": 1,
    }


def test_total_limit_cuts_the_completion(tok):
    out = encode_sft([PromptCompletionRecord("a b", "c d e f")], tok, LengthLimits(max_total_tokens=5))
    assert out[0].input_ids == [BOS, *ids(tok, "a b c d")]
    assert (
        str(out.report)
        == "1 records: 1 kept (1 truncated), 0 dropped; 1 × prompt + completion over max_total_tokens=5"
    )


def test_drop_mode_counts(tok):
    records = [
        PromptCompletionRecord("a", "b"),
        PromptCompletionRecord("a b c d e f", "g"),
        TextRecord("a b c d e f g h"),
        PromptCompletionRecord("a b", "c"),
    ]
    out = encode_sft(records, tok, LengthLimits(max_prompt_tokens=4, max_total_tokens=6, overflow="drop"))
    assert [len(e) for e in out] == [4, 5]
    assert (out.report.kept, out.report.truncated, out.report.dropped, out.report.total) == (2, 0, 2, 4)
    assert str(out.report).startswith("4 records: 2 kept (0 truncated), 2 dropped; ")


def test_truncate_mode_counts(tok):
    records = [
        PromptCompletionRecord("a", "b"),
        TextRecord("a b c d e f g h"),
        PromptCompletionRecord("a b", "c"),
    ]
    out = encode_sft(records, tok, LengthLimits(max_total_tokens=6))
    assert [len(e) for e in out] == [4, 6, 5]
    assert (out.report.kept, out.report.truncated, out.report.dropped) == (3, 1, 0)


def test_error_mode_names_file_and_line(tmp_path, tok):
    path = tmp_path / "train.jsonl"
    rows = [{"prompt": "a b", "completion": "c"}, {"prompt": "a b c d e f g h", "completion": "c"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = load_records(path)
    with pytest.raises(DataError) as err:
        encode_sft(records, tok, LengthLimits(max_prompt_tokens=4, overflow="error"))
    assert str(err.value) == f"{path}:2: prompt has 9 tokens, over max_prompt_tokens=4"


def test_conversation_truncation_and_drop(tok):
    messages = [{"role": "user", "content": "a b c d e"}, {"role": "assistant", "content": "f g h"}]
    record = ConversationRecord(messages, where="c.jsonl:1")
    out = encode_sft([record], tok, LengthLimits(max_total_tokens=8))
    assert len(out[0]) == 8 and out[0].labels[-1] != IGNORE_INDEX
    # A window that ends before the first assistant token leaves nothing to train on: dropped, and said so.
    out = encode_sft([record], tok, LengthLimits(max_total_tokens=4))
    assert len(out) == 0 and out.report.dropped == 1
    assert out.report.reasons == {"conversation with no trainable tokens within max_total_tokens=4": 1}
    with pytest.raises(DataError, match=r"^c\.jsonl:1: conversation has 11 tokens, over max_total_tokens=4$"):
        encode_sft([record], tok, LengthLimits(max_total_tokens=4, overflow="error"))


def test_limits_are_checked():
    with pytest.raises(ConfigError, match="overflow: expected one of truncate, drop, error, got 'clip'"):
        LengthLimits(overflow="clip")
    with pytest.raises(ConfigError, match="max_prompt_tokens=8 leaves no room"):
        LengthLimits(max_prompt_tokens=8, max_total_tokens=8)
    with pytest.raises(ConfigError, match="max_total_tokens: expected a positive integer"):
        LengthLimits(max_total_tokens=0)


# --- the other encoders --------------------------------------------------------------------------------


def test_encode_prompts_keeps_extra_fields_and_limits(tok):
    records = [PromptRecord("a b c d e", extra={"answer": "4"}), PromptCompletionRecord("a", "b")]
    out = encode_prompts(records, tok, LengthLimits(max_prompt_tokens=3))
    assert out[0].prompt_ids == [BOS, *ids(tok, "d e")] and out[0].extra == {"answer": "4"}
    assert out[1].extra == {"completion": "b"}
    assert out.report.truncated == 1


def test_encode_preference_ranked_unpaired(tok):
    (pref,) = encode_preference([PreferenceRecord("hello", "how are you", "the cat", margin=1.0)], tok)
    assert pref.prompt_ids == [BOS, *ids(tok, "hello")]
    assert pref.chosen_ids == [*ids(tok, "how are you"), EOS]
    assert pref.rejected_ids == [*ids(tok, "the cat"), EOS]
    assert pref.margin == 1.0
    out = encode_preference(
        [PreferenceRecord("hello", "a b c d", "e")],
        tok,
        LengthLimits(max_completion_tokens=3, overflow="drop"),
    )
    assert len(out) == 0 and out.report.dropped == 1

    (ranked,) = encode_ranked([RankedRecord("hello", ["a", "b c", "d"], [1.0, 2.0, 0.0])], tok)
    assert ranked.response_ids == [[*ids(tok, "a"), EOS], [*ids(tok, "b c"), EOS], [*ids(tok, "d"), EOS]]
    assert ranked.scores == [1.0, 2.0, 0.0]

    (unpaired,) = encode_unpaired([UnpairedRecord("hello", "world", False)], tok)
    assert unpaired.completion_ids == [*ids(tok, "world"), EOS] and unpaired.label is False

    with pytest.raises(DataError, match="encode_preference needs preference records, got unpaired data"):
        encode_preference([UnpairedRecord("hello", "world", False)], tok)
