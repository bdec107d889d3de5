"""rlft.data formats and loading: every format from every file type, and the one-line errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from rlft.data import (
    ConversationRecord,
    DataError,
    PreferenceRecord,
    PromptCompletionRecord,
    PromptRecord,
    RankedRecord,
    TextRecord,
    UnpairedRecord,
    detect_format,
    load_records,
    save_records,
    validate_record,
)

CHAT = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"}]

# Two rows per format (the second differs, so row order is checked too) and the records they must become.
SAMPLES = {
    "prompt_only": (
        [{"prompt": "2+2=", "answer": "4"}, {"prompt": "3+3=", "answer": "6"}],
        [PromptRecord("2+2=", extra={"answer": "4"}), PromptRecord("3+3=", extra={"answer": "6"})],
    ),
    "prompt_only_chat": (
        [{"prompt": CHAT[:1]}, {"prompt": [{"role": "system", "content": "be brief"}, *CHAT[:1]]}],
        [PromptRecord(CHAT[:1]), PromptRecord([{"role": "system", "content": "be brief"}, *CHAT[:1]])],
    ),
    "prompt_completion": (
        [{"prompt": "2+2=", "completion": "4"}, {"prompt": "3+3=", "completion": "6"}],
        [PromptCompletionRecord("2+2=", "4"), PromptCompletionRecord("3+3=", "6")],
    ),
    "text": (
        [{"text": "hello world"}, {"text": "bye"}],
        [TextRecord("hello world"), TextRecord("bye")],
    ),
    "conversational": (
        [{"messages": CHAT}, {"messages": [*CHAT, {"role": "user", "content": "more"}, CHAT[1]]}],
        [ConversationRecord(CHAT), ConversationRecord([*CHAT, {"role": "user", "content": "more"}, CHAT[1]])],
    ),
    "preference": (
        [
            {"prompt": "p1", "chosen": "good", "rejected": "bad", "margin": 0.5},
            {"prompt": "p2", "chosen": "yes", "rejected": "no", "margin": 2.0},
        ],
        [PreferenceRecord("p1", "good", "bad", margin=0.5), PreferenceRecord("p2", "yes", "no", margin=2.0)],
    ),
    "ranked": (
        [
            {"prompt": "p1", "responses": ["a", "b", "c"], "scores": [1.0, 0.5, 0.0]},
            {"prompt": "p2", "responses": ["d", "e", "f"], "scores": [0.0, 2.0, 1.0]},
        ],
        [
            RankedRecord("p1", ["a", "b", "c"], [1.0, 0.5, 0.0]),
            RankedRecord("p2", ["d", "e", "f"], [0.0, 2.0, 1.0]),
        ],
    ),
    "unpaired": (
        [
            {"prompt": "p1", "completion": "c1", "label": True},
            {"prompt": "p2", "completion": "c2", "label": False},
        ],
        [UnpairedRecord("p1", "c1", True), UnpairedRecord("p2", "c2", False)],
    ),
}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_json(path, rows):
    path.write_text(json.dumps({"data": rows}))
    return path


def write_csv(path, rows):
    # Strings stay literal cells; lists, numbers and booleans are written as JSON, as the loader expects.
    fields = list(rows[0])
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: v if isinstance(v, str) else json.dumps(v) for k, v in row.items()})
    return path


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_hf(path, rows):
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


WRITERS = {
    "train.jsonl": write_jsonl,
    "train.json": write_json,
    "train.csv": write_csv,
    "train.parquet": write_parquet,
    "hf_dataset": write_hf,
}


@pytest.mark.parametrize("fmt", list(SAMPLES))
@pytest.mark.parametrize("filename", list(WRITERS))
def test_every_format_loads_from_every_file_type(tmp_path, fmt, filename):
    rows, expected = SAMPLES[fmt]
    path = WRITERS[filename](tmp_path / filename, rows)
    records = load_records(path)
    assert records == expected
    base_format = fmt.removesuffix("_chat")
    assert base_format == records[0].FORMAT
    # The location of each record is kept for later errors (encoding, length limits).
    assert records[1].where.startswith(str(path))
    # Given explicitly, the format gives the same records.
    assert load_records(path, fmt=expected[0].FORMAT) == expected


def test_locations_per_file_type(tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a", "rejected": ""}]
    cases = {
        "d.jsonl": (write_jsonl, ":2"),
        "d.json": (write_json, ":record 2"),
        "d.csv": (write_csv, ":row 2"),
        "d.parquet": (write_parquet, ":index 1"),
        "d_hf": (write_hf, ":index 1"),
    }
    for name, (writer, where) in cases.items():
        path = writer(tmp_path / name, rows)
        with pytest.raises(DataError) as err:
            load_records(path)
        assert str(err.value) == f"{path}{where}: field 'rejected': empty string"


def test_hf_dataset_dict_picks_the_split(tmp_path):
    import datasets

    rows, expected = SAMPLES["prompt_completion"]
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[1:])}
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    assert load_records(tmp_path / "dd") == expected
    assert load_records(tmp_path / "dd", split="test") == expected[1:]
    assert load_records(tmp_path / "dd", split="test")[0].where == f"{tmp_path / 'dd'}[test]:index 0"
    with pytest.raises(DataError) as err:
        load_records(tmp_path / "dd", split="eval")
    assert str(err.value) == f"{tmp_path / 'dd'}: no split 'eval' (available: train, test)"


def test_directory_of_split_files(tmp_path):
    rows, expected = SAMPLES["text"]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_csv(tmp_path / "eval.csv", rows[:1])
    assert load_records(tmp_path) == expected
    assert load_records(tmp_path, split="eval") == expected[:1]


def test_json_plain_list_and_limit(tmp_path):
    rows, expected = SAMPLES["unpaired"]
    path = tmp_path / "list.json"
    path.write_text(json.dumps(rows))
    assert load_records(path) == expected
    assert load_records(path, limit=1) == expected[:1]


def test_extra_fields_pass_through_and_null_cells_are_not_fields(tmp_path):
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b", "margin": None, "source": "x"},
        {"prompt": "q", "chosen": "c", "rejected": "d", "margin": 1.5, "source": "y"},
    ]
    records = load_records(write_parquet(tmp_path / "p.parquet", rows))
    assert records[0] == PreferenceRecord("p", "a", "b", margin=None, extra={"source": "x"})
    assert records[1].margin == 1.5
    assert records[1].to_row() == rows[1]


def test_csv_keeps_numeric_text_as_text_and_decodes_typed_fields(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text(
        'prompt,completion,label\n2+2=,4,True\n"[{""role"": ""user"", ""content"": ""hi""}]",7,false\n'
    )
    records = load_records(path)
    assert records[0] == UnpairedRecord("2+2=", "4", True)
    assert records[1] == UnpairedRecord([{"role": "user", "content": "hi"}], "7", False)


def test_trl_assistant_message_completion_is_accepted():
    row = {"prompt": CHAT[:1], "completion": [{"role": "assistant", "content": "hello"}]}
    assert validate_record(row, "prompt_completion", "x:1") == PromptCompletionRecord(CHAT[:1], "hello")


def test_save_and_reload_round_trip(tmp_path):
    for fmt, (_, expected) in SAMPLES.items():
        for suffix in (".jsonl", ".json"):
            save_records(expected, tmp_path / f"{fmt}{suffix}")
            assert load_records(tmp_path / f"{fmt}{suffix}") == expected


# --- errors: one line, naming the file, line, field and what was expected --------------------------------


def test_malformed_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b",\n')
    with pytest.raises(DataError) as err:
        load_records(path)
    assert str(err.value).startswith(
        f"{path}:3: invalid JSON: Expecting property name enclosed in double quotes"
    )
    assert "\n" not in str(err.value)


def test_missing_field_names_file_line_and_expectation(tmp_path):
    rows = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(6)]
    rows.append({"prompt": "p6", "chosen": "a"})
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_records(path)
    assert str(err.value) == f"{path}:7: field 'rejected': missing (expected a string for preference data)"


def test_empty_string_field(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "p", "chosen": "", "rejected": "b"}])
    with pytest.raises(DataError) as err:
        load_records(path)
    assert str(err.value) == f"{path}:1: field 'chosen': empty string"


def test_wrong_scores_length(tmp_path):
    rows = [
        {"prompt": "p", "responses": ["a", "b", "c"], "scores": [1, 2, 3]},
        {"prompt": "p", "responses": ["a", "b", "c"], "scores": [1, 2]},
    ]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_records(path)
    assert (
        str(err.value) == f"{path}:2: field 'scores': expected a list of 3 numbers (one per response), got 2"
    )


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("e.jsonl", "\n\n", "JSON object, one per line"),
        ("e.json", "[]", 'object in the list or in {"data": [...]}'),
        ("e.csv", "prompt,completion\n", "data row below the header"),
    ],
)
def test_empty_dataset(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError) as err:
        load_records(path)
    assert str(err.value) == f"{path}: no records (expected at least one {expected})"


def test_missing_file_and_unsupported_type(tmp_path):
    with pytest.raises(DataError) as err:
        load_records(tmp_path / "nope.jsonl")
    assert str(err.value) == f"{tmp_path / 'nope.jsonl'}: file not found"
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match=r"x\.txt: unsupported file type '\.txt'"):
        load_records(tmp_path / "x.txt")


@pytest.mark.parametrize(
    ("row", "fmt", "message"),
    [
        ({"prompt": 5}, "prompt_only", "field 'prompt': expected a string or a list of messages, got int 5"),
        (
            {"text": "t"},
            "prompt_only",
            "field 'prompt': missing (expected a string or a list of messages for ",
        ),
        (
            {"messages": [{"role": "bot", "content": "x"}]},
            "conversational",
            "field 'messages[0].role': expected one",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}]},
            "conversational",
            "field 'messages': no assistant message",
        ),
        (
            {"messages": [CHAT[0], {"role": "assistant"}]},
            "conversational",
            "field 'messages[1].content': missing",
        ),
        (
            {"prompt": "p", "responses": ["a"], "scores": [1]},
            "ranked",
            "field 'responses': expected a list of at least 2",
        ),
        (
            {"prompt": "p", "responses": ["a", "b"], "scores": [1, "x"]},
            "ranked",
            "field 'scores[1]': expected a",
        ),
        (
            {"prompt": "p", "completion": "c", "label": "yes"},
            "unpaired",
            "field 'label': expected true or false",
        ),
        (
            {"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"},
            "preference",
            "field 'margin': expected",
        ),
        (
            {"prompt": "p", "chosen": CHAT, "rejected": "b"},
            "preference",
            "field 'chosen': expected a string or one assistant",
        ),
        ([1, 2], "text", "expected an object of named fields, got list [1, 2]"),
    ],
)
def test_validation_messages(row, fmt, message):
    with pytest.raises(DataError) as err:
        validate_record(row, fmt, "f.jsonl:3")
    assert str(err.value).startswith(f"f.jsonl:3: {message}")


def test_detect_format_and_unknown_shape():
    for fmt, (rows, _) in SAMPLES.items():
        assert detect_format(rows[0]) == fmt.removesuffix("_chat")
    with pytest.raises(DataError) as err:
        detect_format({"question": "q"}, "f.jsonl:1")
    assert str(err.value).startswith("f.jsonl:1: cannot tell the data format from the fields ['question']; ")
    assert "prompt_completion {prompt, completion}" in str(err.value)
    with pytest.raises(DataError, match="unknown data format 'pairs'; expected one of: prompt_only"):
        validate_record({}, "pairs", "x")


def test_mixed_formats_are_rejected(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "p"}, {"prompt": "p", "completion": "c"}])
    with pytest.raises(DataError) as err:
        load_records(path)
    assert str(err.value).startswith(
        f"{path}:2: record has the fields of prompt_completion data, but the first record is prompt_only data"
    )
    # An explicit, simpler format reads both rows, keeping the completion as an extra field.
    assert load_records(path, fmt="prompt_only")[1] == PromptRecord("p", extra={"completion": "c"})


def test_data_layer_imports_stay_light():
    """rlft.data must not import models, trainers or control, nor load datasets/transformers eagerly."""
    code = (
        "import sys, rlft.data; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('transformers', 'datasets', 'pyarrow', 'gymnasium')"
        " or m.startswith(('rlft.models', 'rlft.train', 'rlft.control'))]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
