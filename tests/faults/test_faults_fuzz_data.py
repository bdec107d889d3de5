"""Hostile data files: seeded random mutations of valid files of every trainer's format, loaded and encoded
through the trainers' path (``load_records`` with the format, then the ``encode_*`` step under the length
limits a model's context sets). Only a one-line DataError naming the file (and the line, for a bad row)
may come out, and whatever is accepted is a well-formed record."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, PreTrainedTokenizerFast

from rlft.data import (
    ConversationRecord,
    DataError,
    LengthLimits,
    PreferenceRecord,
    PromptCompletionRecord,
    PromptRecord,
    context_length,
    encode_preference,
    encode_prompts,
    encode_sft,
    load_records,
    load_text_prompts,
)
from rlft.data.lengths import prompt_budget
from rlft.run import ConfigError
from rlft.train import SFTConfig
from rlft.train.common.epochs import length_limits

CONTEXT = 64  # the model context the trainers cap the total length to
LIMITS = LengthLimits(max_total_tokens=CONTEXT)
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>"]
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} "
    "{% if m['role'] == 'assistant' %}</s> {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)

VALID: dict[str, list[dict]] = {
    "prompt_completion": [
        {"prompt": "what is two plus two", "completion": "four"},
        {"prompt": "say hello", "completion": "hello world", "answer": "4"},
        {"prompt": [{"role": "user", "content": "be brief"}], "completion": "ok"},
    ],
    "conversational": [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "user", "content": "a b"}, {"role": "assistant", "content": "c d"}]},
    ],
    "preference": [
        {"prompt": "pick one", "chosen": "good answer", "rejected": "bad answer"},
        {"prompt": "another", "chosen": "yes", "rejected": "no", "margin": 0.5},
        {"prompt": "third", "chosen": "kind", "rejected": "rude"},
    ],
    "prompt_only": [{"prompt": "what is one plus one", "answer": "2"}, {"prompt": "count to three"}],
}
ENCODERS = {
    "prompt_completion": encode_sft,
    "conversational": encode_sft,
    "preference": encode_preference,
    "prompt_only": encode_prompts,
}
RECORD_TYPES = {
    "prompt_completion": PromptCompletionRecord,
    "conversational": ConversationRecord,
    "preference": PreferenceRecord,
    "prompt_only": PromptRecord,
}
# Errors about a whole source rather than one of its rows.
FILE_LEVEL = ("no records", "chosen identical to rejected", "not a list", "expected a list of records")


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    corpus = ["what is two plus two four say hello world be brief ok", "pick one good bad answer yes no"]
    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    raw.train_from_iterator(corpus, trainer=trainers.WordLevelTrainer(special_tokens=SPECIALS))
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    hf.chat_template = TEMPLATE
    return hf


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


# --- mutations: each takes the file's bytes and returns hostile bytes -----------------------------------


def _string_starts(data: bytes) -> list[int]:
    """Offsets just inside every string value (after the opening quote that follows ': ')."""
    return [m.end() for m in re.finditer(rb'": "', data)]


def _insert(data: bytes, at: int, piece: bytes) -> bytes:
    return data[:at] + piece + data[at:]


def _edit_row(rng: random.Random, data: bytes, change) -> bytes:
    """Apply ``change`` to a random line that is still a JSON object (an earlier mutation may have broken
    some); ``change`` returns the new line."""
    lines = data.split(b"\n")
    for i in rng.sample(range(len(lines)), len(lines)):
        try:
            row = json.loads(lines[i])
        except ValueError:
            continue
        if isinstance(row, dict) and row:
            lines[i] = change(row, lines[i])
            return b"\n".join(lines)
    return data


def flip_byte(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(len(data))
    return data[:i] + bytes([rng.randrange(256)]) + data[i + 1 :]


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data))]


def surrogate(rng: random.Random, data: bytes) -> bytes:
    return _insert(data, rng.choice(_string_starts(data)), rng.choice([rb"\ud800", rb"\udfff", rb"\ud83d x"]))


def surrogate_pair(rng: random.Random, data: bytes) -> bytes:
    return _insert(data, rng.choice(_string_starts(data)), rb"\ud83d\ude00 ")  # valid: an emoji


def deep_nesting(rng: random.Random, data: bytes) -> bytes:
    depth = rng.choice([70, 1000, 100_000])
    nested = b"[" * depth + b"]" * depth
    lines = data.split(b"\n")
    i = rng.randrange(len(lines) - 1)
    if rng.random() < 0.5:
        lines[i] = nested
    else:
        lines[i] = lines[i][:-1] + b', "deep": ' + nested + b"}"
    return b"\n".join(lines)


def invalid_utf8(rng: random.Random, data: bytes) -> bytes:
    return _insert(data, rng.randrange(len(data)), rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80"]))


def duplicate_key(rng: random.Random, data: bytes) -> bytes:
    def change(row: dict, line: bytes) -> bytes:
        return b"{" + json.dumps(rng.choice(list(row))).encode() + b': "dup", ' + line.lstrip()[1:]

    return _edit_row(rng, data, change)


def nested_duplicate_key(rng: random.Random, data: bytes) -> bytes:
    lines = data.split(b"\n")
    i = rng.randrange(len(lines) - 1)
    lines[i] = lines[i][:-1] + b', "meta": {"a": 1, "a": 2}}'
    return b"\n".join(lines)


def wrong_type(rng: random.Random, data: bytes) -> bytes:
    def change(row: dict, line: bytes) -> bytes:
        bad = rng.choice([5, None, [], {}, True, 1.5, [1, 2], {"role": "user"}, ""])
        return json.dumps({**row, rng.choice(list(row)): bad}).encode()

    return _edit_row(rng, data, change)


def huge_number(rng: random.Random, data: bytes) -> bytes:
    lines = data.split(b"\n")
    i = rng.randrange(len(lines) - 1)
    number = rng.choice([b"1e999", b"-1e999", b"9" * 5000, b"NaN", b"Infinity", b"1" * 300])
    key = rng.choice([b"margin", b"prompt", b"extra", b"completion"])
    lines[i] = b'{"' + key + b'": ' + number + b", " + lines[i][1:]
    return b"\n".join(lines)


def empty_lines(rng: random.Random, data: bytes) -> bytes:
    return _insert(data, rng.choice([0, len(data)]), rng.choice([b"\n\n", b"   \n", b"\t\n"]))


def bom(rng: random.Random, data: bytes) -> bytes:
    return b"\xef\xbb\xbf" + data


def crlf(rng: random.Random, data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")


def nul_byte(rng: random.Random, data: bytes) -> bytes:
    return _insert(data, rng.randrange(len(data)), b"\x00")


def megabyte_string(rng: random.Random, data: bytes) -> bytes:
    return _insert(data, rng.choice(_string_starts(data)), rng.choice([b"x " * 500_000, b"y" * 1_000_000]))


def drop_key(rng: random.Random, data: bytes) -> bytes:
    def change(row: dict, line: bytes) -> bytes:
        row.pop(rng.choice(list(row)))
        return json.dumps(row).encode()

    return _edit_row(rng, data, change)


def identical_pair(rng: random.Random, data: bytes) -> bytes:
    def change(row: dict, line: bytes) -> bytes:
        if "chosen" in row:
            row["rejected"] = row["chosen"]
        return json.dumps(row).encode()

    return _edit_row(rng, data, change)


def not_an_object(rng: random.Random, data: bytes) -> bytes:
    lines = data.split(b"\n")
    lines[rng.randrange(len(lines) - 1)] = rng.choice([b"[]", b"42", b'"text"', b"null", b"{}"])
    return b"\n".join(lines)


MUTATIONS = [
    flip_byte,
    truncate,
    surrogate,
    surrogate_pair,
    deep_nesting,
    invalid_utf8,
    duplicate_key,
    nested_duplicate_key,
    wrong_type,
    huge_number,
    empty_lines,
    bom,
    crlf,
    nul_byte,
    megabyte_string,
    drop_key,
    identical_pair,
    not_an_object,
]
CASES = [(fmt, seed) for fmt in VALID for seed in range(80)]


def check_error(err: DataError, path: Path) -> None:
    """One line, starting with the file, then the line (or row/record) of the row unless it is file-level."""
    message = str(err)
    assert "\n" not in message, message
    assert message.startswith(f"{path}"), message
    rest = message[len(str(path)) :]
    names_line = re.match(r":(\d+|record \d+|row \d+|header): ", rest)
    assert names_line or any(kind in message for kind in FILE_LEVEL), message


def check_accepted(fmt: str, records: list, encoded: list) -> None:
    for r in records:
        assert isinstance(r, RECORD_TYPES[fmt])
        for value in r.to_row().values():
            json.dumps(value, ensure_ascii=False).encode("utf-8")  # text every later writer can store
    for ex in encoded:
        ids = getattr(ex, "input_ids", None) or getattr(ex, "prompt_ids", None)
        assert ids and all(isinstance(t, int) for t in ids)
        assert len(ids) <= CONTEXT
    if fmt == "preference":
        identical = sum(r.chosen == r.rejected for r in records)
        assert len(encoded) + identical <= len(records) and encoded.report.dropped >= identical


def load_and_encode(path: Path, fmt: str, tok) -> tuple[list, list]:
    records = load_records(path, fmt=fmt)
    return records, ENCODERS[fmt](records, tok, LIMITS)


@pytest.mark.parametrize("fmt", list(VALID))
def test_the_valid_files_load(fmt, tok, tmp_path) -> None:
    path = tmp_path / f"{fmt}.jsonl"
    path.write_bytes(jsonl(VALID[fmt]))
    records, encoded = load_and_encode(path, fmt, tok)
    assert len(records) == len(encoded) == len(VALID[fmt])


def test_random_mutations_give_a_located_data_error_or_well_formed_records(tok, tmp_path) -> None:
    outcomes = {"accepted": 0, "error": 0}
    for fmt, seed in CASES:
        rng = random.Random(f"{fmt}-{seed}")
        data = jsonl(VALID[fmt])
        for mutate in rng.sample(MUTATIONS, rng.choice([1, 1, 2, 3])):
            if data.count(b"\n") < 1 or not _string_starts(data):
                break
            data = mutate(rng, data)
        path = tmp_path / f"{fmt}-{seed}.jsonl"
        path.write_bytes(data)
        try:
            records, encoded = load_and_encode(path, fmt, tok)
        except DataError as err:
            check_error(err, path)
            outcomes["error"] += 1
        else:
            check_accepted(fmt, records, encoded)
            outcomes["accepted"] += 1
    assert outcomes["error"] > 100 and outcomes["accepted"] > 20, outcomes


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_random_byte_mutations_of_json_and_csv_files(suffix, tok, tmp_path) -> None:
    rows = VALID["preference"]
    if suffix == ".json":
        text = json.dumps(rows, indent=1).encode()
    else:
        text = b"prompt,chosen,rejected,margin\n" + b"".join(
            f"{r['prompt']},{r['chosen']},{r['rejected']},{r.get('margin', '')}\n".encode() for r in rows
        )
    mutations = [flip_byte, truncate, invalid_utf8, bom, crlf, nul_byte, empty_lines]
    for seed in range(40):
        rng = random.Random(f"{suffix}-{seed}")
        data = rng.choice(mutations)(rng, text)
        path = tmp_path / f"{seed}{suffix}"
        path.write_bytes(data)
        try:
            records, encoded = load_and_encode(path, "preference", tok)
        except DataError as err:
            check_error(err, path)
        else:
            check_accepted("preference", records, encoded)


# --- the specific faults -----------------------------------------------------------------------------------


def write(tmp_path: Path, data: bytes, name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def data_error(path: Path, fmt: str, tok=None) -> str:
    with pytest.raises(DataError) as info:
        records = load_records(path, fmt=fmt)
        if tok is not None:
            ENCODERS[fmt](records, tok, LIMITS)
    check_error(info.value, path)
    return str(info.value)


def test_a_lone_surrogate_is_a_data_error_naming_line_and_field(tok, tmp_path) -> None:
    path = write(
        tmp_path, jsonl(VALID["prompt_completion"][:1]) + rb'{"prompt": "a\ud800", "completion": "b"}'
    )
    message = data_error(path, "prompt_completion", tok)
    assert message.startswith(f"{path}:2: ") and "'prompt'" in message and "surrogate" in message


def test_json_nested_100k_deep_is_a_data_error_naming_the_line(tmp_path) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    path = write(tmp_path, b'{"prompt": "a", "x": ' + deep + b"}\n")
    assert data_error(path, "prompt_only").startswith(f"{path}:1: ")
    listed = write(tmp_path, b'[{"prompt": "a", "x": ' + deep + b"}]", "data.json")
    assert "nested" in data_error(listed, "prompt_only")


def test_invalid_utf8_names_its_line(tmp_path) -> None:
    path = write(tmp_path, jsonl(VALID["prompt_only"]) + b'{"prompt": "caf\xe9"}\n')
    assert data_error(path, "prompt_only").startswith(f"{path}:3: not UTF-8")
    csv = write(tmp_path, b"prompt\nfine\ncaf\xe9\n", "data.csv")
    assert data_error(csv, "prompt_only").startswith(f"{csv}:3: not UTF-8")


def test_duplicate_keys_are_an_error_naming_the_key(tmp_path) -> None:
    path = write(tmp_path, b'{"prompt": "a", "completion": "b", "prompt": "c"}\n')
    message = data_error(path, "prompt_completion")
    assert message.startswith(f"{path}:1: ") and "duplicate key 'prompt'" in message
    listed = write(tmp_path, b'[{"prompt": "a"}, {"prompt": "a", "answer": 1, "answer": 2}]', "data.json")
    assert data_error(listed, "prompt_only").startswith(f"{listed}:record 2: ")
    csv = write(tmp_path, b"prompt,prompt\na,b\n", "data.csv")
    assert "'prompt'" in data_error(csv, "prompt_only")


def test_huge_integers_are_a_data_error(tmp_path) -> None:
    path = write(tmp_path, b'{"prompt": "a", "completion": "b", "margin": ' + b"9" * 5000 + b"}\n")
    assert data_error(path, "prompt_completion").startswith(f"{path}:1: ")


def test_pairs_with_chosen_equal_to_rejected_are_dropped_and_counted(tok, tmp_path) -> None:
    same = {"prompt": "pick one", "chosen": "good answer", "rejected": "good answer"}
    path = write(tmp_path, jsonl([*VALID["preference"], same]))
    encoded = encode_preference(load_records(path, fmt="preference"), tok, LIMITS)
    assert len(encoded) == 3
    assert encoded.report.dropped == 1 and "1 × chosen identical to rejected" in str(encoded.report)
    only_same = write(tmp_path, jsonl([same, same]), "same.jsonl")
    message = data_error(only_same, "preference", tok)
    assert message.startswith(f"{only_same}: all 2 preference pairs have chosen identical to rejected")


def test_a_megabyte_prompt_is_cut_before_tokenizing(tok) -> None:
    record = PromptCompletionRecord("x " * 500_000 + "say hello", "hello world", where="big.jsonl:1")
    (example,) = encode_sft([record], tok, LIMITS)
    assert len(example.input_ids) == CONTEXT
    assert "prompt over 64 characters per token" in str(encode_sft([record], tok, LIMITS).report)
    dropped = encode_sft([record], tok, LengthLimits(max_total_tokens=CONTEXT, overflow="drop"))
    assert len(dropped) == 0 and dropped.report.dropped == 1
    with pytest.raises(DataError, match=r"^big.jsonl:1: prompt has 1000009 characters"):
        encode_sft([record], tok, LengthLimits(max_total_tokens=CONTEXT, overflow="error"))


def test_rows_within_the_character_bound_encode_exactly_as_before(tok) -> None:
    text = "hello world " * 40  # 80 tokens, 480 characters: over the token limit, within the character bound
    record = PromptCompletionRecord(text, "four", where="f:1")
    limited = encode_sft([record], tok, LengthLimits(max_total_tokens=CONTEXT))
    bos, *prompt, four, _eos = encode_sft([record], tok)[0].input_ids
    # The prompt keeps BOS and its last 62 tokens, the completion the one token left of the 64.
    assert limited[0].input_ids == [bos, *prompt[-(CONTEXT - 2) :], four]
    assert "characters" not in str(limited.report)


def test_context_length_caps_the_total_of_a_config_without_max_len(tmp_path) -> None:
    LlamaConfig(max_position_embeddings=48).save_pretrained(tmp_path)
    assert context_length(tmp_path) == 48
    assert context_length(tmp_path / "missing") is None
    cfg = SFTConfig(model=str(tmp_path), data="d")
    assert length_limits(cfg).max_total_tokens is None
    assert length_limits(cfg, context_length(cfg.model)).max_total_tokens == 48
    assert length_limits(SFTConfig(model="m", data="d", max_len=32), 48).max_total_tokens == 32
    with pytest.raises(ConfigError, match="'max_prompt_tokens'"):
        length_limits(SFTConfig(model="m", data="d", max_prompt_tokens=48), 48)
    assert (
        prompt_budget(None, 48, 16) == 32
        and prompt_budget(20, 48, 16) == 20
        and prompt_budget(8, None, 99) == 8
    )
    with pytest.raises(ConfigError, match="'max_new_tokens'"):
        prompt_budget(None, 48, 48)


def test_text_prompt_files_name_the_line(tmp_path) -> None:
    path = write(tmp_path, b"first prompt\r\n\nsecond \xff prompt\n", "prompts.txt")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:3: not UTF-8"):
        load_text_prompts(path)
    good = write(tmp_path, b"\xef\xbb\xbffirst prompt\r\n\nsecond prompt\n", "good.txt")
    assert [(r.prompt, r.where) for r in load_text_prompts(good)] == [
        ("first prompt", f"{good}:1"),
        ("second prompt", f"{good}:3"),
    ]
