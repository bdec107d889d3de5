"""Data for training: record formats, loading and validation, tokenisation, collation, built-in tasks.

    records = load_records("data/train.jsonl")       # or .json/.parquet/.csv, a saved dataset, "task:arithmetic"
    examples = encode_sft(records, tokenizer, LengthLimits(max_total_tokens=512))
    print(examples.report)                           # what the limits truncated or dropped
    batch = collate_sft(examples[:8], tokenizer.pad_token_id)

Every problem with the data raises ``DataError`` with a one-line message that names the file and line
(or row/record/index), the field, and what was expected. Layering: this package imports the registry of
``rlft.algos`` and the atomic writes, ``ConfigError`` and UTF-8 check of ``rlft.run``; never models,
trainers or control. Heavy libraries (datasets, pyarrow) are imported only when a source needs them.
"""

from .chat import chat_template_kwargs, set_chat_template_kwargs
from .collate import collate_preference, collate_prompts, collate_sft, packed_attention_mask, pad_sequences
from .errors import DataError
from .formats import (
    FORMATS,
    ROLES,
    Completion,
    ConversationRecord,
    Message,
    PreferenceRecord,
    Prompt,
    PromptCompletionRecord,
    PromptRecord,
    RankedRecord,
    Record,
    TextRecord,
    UnpairedRecord,
    detect_format,
    validate_record,
)
from .lengths import LengthLimits, LengthReport, context_length
from .loading import load_records, load_text_prompts, save_records
from .tasks import (
    TASKS,
    ArithmeticTask,
    PreferenceTask,
    Task,
    accuracy,
    exact_match_reward,
    get_task,
)
from .tokenize import (
    IGNORE_INDEX,
    Encoded,
    Example,
    PreferenceExample,
    PromptExample,
    RankedExample,
    UnpairedExample,
    encode_preference,
    encode_prompts,
    encode_ranked,
    encode_sft,
    encode_unpaired,
)

__all__ = [
    "FORMATS",
    "IGNORE_INDEX",
    "ROLES",
    "TASKS",
    "ArithmeticTask",
    "Completion",
    "ConversationRecord",
    "DataError",
    "Encoded",
    "Example",
    "LengthLimits",
    "LengthReport",
    "Message",
    "PreferenceExample",
    "PreferenceRecord",
    "PreferenceTask",
    "Prompt",
    "PromptCompletionRecord",
    "PromptExample",
    "PromptRecord",
    "RankedExample",
    "RankedRecord",
    "Record",
    "Task",
    "TextRecord",
    "UnpairedExample",
    "UnpairedRecord",
    "accuracy",
    "chat_template_kwargs",
    "collate_preference",
    "collate_prompts",
    "collate_sft",
    "context_length",
    "detect_format",
    "encode_preference",
    "encode_prompts",
    "encode_ranked",
    "encode_sft",
    "encode_unpaired",
    "exact_match_reward",
    "get_task",
    "load_records",
    "load_text_prompts",
    "packed_attention_mask",
    "pad_sequences",
    "save_records",
    "set_chat_template_kwargs",
    "validate_record",
]
