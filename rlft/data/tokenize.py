"""Records → token ids, with a Hugging Face tokenizer passed in by the caller.

Conventions, chosen to match what generation sees at train and sample time:
- a string prompt is tokenized with the tokenizer's special tokens (e.g. BOS); a conversational prompt is
  rendered by the chat template, which writes its own special tokens, with the generation prompt appended;
- a completion is tokenized on its own and appended to the prompt ids (TRL does the same), and EOS is
  appended unless the completion already ends with it (or, for a chat-rendered completion, contains it:
  the template's end-of-turn marker already is the stop signal);
- a conversation (``messages``) is split into assistant and non-assistant pieces (see ``chat.py``) and
  trained on the assistant pieces only; its ending is whatever the template writes. A template that does
  not render incrementally gives one example per assistant turn, whose context is what generation sees.

Every ``encode_*`` returns an ``Encoded`` list: the examples, plus ``.report``, the ``LengthReport`` of what
the limits truncated or dropped, for the caller to print.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .chat import (
    assistant_token_mask,
    completion_after_prompt,
    conversation_sequences,
    has_generation_markers,
    render,
)
from .errors import DataError
from .formats import (
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
)
from .lengths import LengthFitter, LengthLimits, LengthReport

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100  # the label value PyTorch's cross-entropy (and every HF model) skips

T = TypeVar("T")
# The records that have a prompt, which the prompt-based encoders take.
PromptedRecord = PromptRecord | PromptCompletionRecord | PreferenceRecord | RankedRecord | UnpairedRecord
R = TypeVar("R", bound=PromptedRecord)


class Encoded(list[T], Generic[T]):
    """A list of encoded examples that also carries ``report``, the ``LengthReport`` of the encoding."""

    def __init__(self, items: Sequence[T] = (), report: LengthReport | None = None):
        super().__init__(items)
        self.report = report if report is not None else LengthReport()


@dataclass
class Example:
    """One SFT sequence: ``labels`` equal ``input_ids`` where the loss applies and IGNORE_INDEX elsewhere."""

    input_ids: list[int]
    labels: list[int]
    where: str = field(default="", compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class PromptExample:
    """A prompt for online RL; ``extra`` carries the record's other fields (e.g. ``answer``) to the rewards."""

    prompt_ids: list[int]
    prompt: Prompt
    extra: dict[str, Any] = field(default_factory=dict)
    where: str = field(default="", compare=False, repr=False)


@dataclass
class PreferenceExample:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    margin: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    where: str = field(default="", compare=False, repr=False)


@dataclass
class RankedExample:
    prompt_ids: list[int]
    response_ids: list[list[int]]
    scores: list[float]
    extra: dict[str, Any] = field(default_factory=dict)
    where: str = field(default="", compare=False, repr=False)


@dataclass
class UnpairedExample:
    prompt_ids: list[int]
    completion_ids: list[int]
    label: bool
    extra: dict[str, Any] = field(default_factory=dict)
    where: str = field(default="", compare=False, repr=False)


# --- tokenizing pieces -----------------------------------------------------------------------------------

Piece = tuple[str, bool]  # (text, add_special_tokens)


def _tokenize(tokenizer: PreTrainedTokenizerBase, pieces: Sequence[Piece]) -> list[list[int]]:
    """Tokenize many pieces with one batched call per special-token setting (fast tokenizers batch in Rust)."""
    out: list[list[int]] = [[] for _ in pieces]
    for special in (True, False):
        idx = [i for i, (_, s) in enumerate(pieces) if s == special]
        if idx:
            encoded = tokenizer([pieces[i][0] for i in idx], add_special_tokens=special)["input_ids"]
            for i, ids in zip(idx, encoded, strict=True):
                out[i] = list(ids)
    return out


def _eos_id(tokenizer: PreTrainedTokenizerBase, add_eos: bool) -> int | None:
    eos = getattr(tokenizer, "eos_token_id", None)
    if add_eos and eos is None:
        raise DataError("the tokenizer has no eos_token; set tokenizer.eos_token so completions can end")
    return eos if add_eos else None


def _with_eos(ids: list[int], eos: int | None, chat: bool) -> list[int]:
    if eos is None or (ids and ids[-1] == eos) or (chat and eos in ids):
        return ids
    return [*ids, eos]


def _prompt_piece(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, where: str) -> Piece:
    if isinstance(prompt, str):
        return prompt, True
    return render(tokenizer, prompt, True, where), False


def _completion_piece(
    tokenizer: PreTrainedTokenizerBase, prompt: Prompt, completion: str, where: str
) -> Piece:
    if isinstance(prompt, str):
        return completion, False
    return completion_after_prompt(tokenizer, prompt, completion, where), False


def _encode_prompted(
    records: Sequence[Record],
    tokenizer: PreTrainedTokenizerBase,
    limits: LengthLimits | None,
    want: type[R] | tuple[type[R], ...],
    what: str,
    completions_of: Callable[[R], list[tuple[str, str]]],
    add_eos: bool,
) -> tuple[list[tuple[R, list[int], list[list[int]]]], LengthReport]:
    """Shared path of the prompt-based encoders: tokenize each record's prompt and its named completions,
    fit them to ``limits``; return (record, prompt_ids, completion_ids) for the kept records."""
    eos = _eos_id(tokenizer, add_eos)
    fitter = LengthFitter(limits, getattr(tokenizer, "bos_token_id", None))
    pieces: list[Piece] = []
    layout: list[tuple[R, list[str]]] = []
    for r in records:
        if not isinstance(r, want):
            raise DataError(
                f"{r.where or 'record'}: {what} needs {_names(want)} records, got {r.FORMAT} data"
            )
        named = completions_of(r)
        record_pieces = [_prompt_piece(tokenizer, r.prompt, r.where)]
        record_pieces += [_completion_piece(tokenizer, r.prompt, text, r.where) for _, text in named]
        roles = [("prompt", "prompt")] + [(name, "completion") for name, _ in named]
        bounded = _bound(fitter, r.where, roles, record_pieces)
        if bounded is None:
            continue
        pieces += bounded
        layout.append((r, [name for name, _ in named]))
    ids = _tokenize(tokenizer, pieces)
    out: list[tuple[R, list[int], list[list[int]]]] = []
    pos = 0
    for r, names in layout:
        prompt_ids, comp_ids = ids[pos], ids[pos + 1 : pos + 1 + len(names)]
        pos += 1 + len(names)
        chat = not isinstance(r.prompt, str)
        comp_ids = [_with_eos(c, eos, chat) for c in comp_ids]
        fitted = fitter.fit(r.where, prompt_ids, list(zip(names, comp_ids, strict=True)))
        if fitted is not None:
            out.append((r, *fitted))
    return out, fitter.report


def _bound(
    fitter: LengthFitter, where: str, roles: Sequence[tuple[str, str]], pieces: Sequence[Piece]
) -> list[Piece] | None:
    """``pieces`` held to the character bound of ``LengthFitter.bound_text``; None when dropped."""
    named = [(name, role, text) for (name, role), (text, _) in zip(roles, pieces, strict=True)]
    texts = fitter.bound_text(where, named)
    if texts is None:
        return None
    return [(text, special) for text, (_, special) in zip(texts, pieces, strict=True)]


def _bound_messages(fitter: LengthFitter, r: ConversationRecord) -> list[Message] | None:
    """The messages of ``r`` with each content held to the character bound; None when dropped."""
    texts = [(f"messages[{i}].content", "sequence", m["content"]) for i, m in enumerate(r.messages)]
    bounded = fitter.bound_text(r.where, texts)
    if bounded is None:
        return None
    return [{**m, "content": text} for m, text in zip(r.messages, bounded, strict=True)]


def _names(want: type[R] | tuple[type[R], ...]) -> str:
    types = want if isinstance(want, tuple) else (want,)
    return " or ".join(t.FORMAT for t in types)


# --- the encoders ----------------------------------------------------------------------------------------


def encode_sft(
    records: Sequence[Record],
    tokenizer: PreTrainedTokenizerBase,
    limits: LengthLimits | None = None,
    completion_only_loss: bool = True,
    add_eos: bool = True,
) -> Encoded[Example]:
    """SFT examples from prompt-completion, plain-text and conversational records.

    Labels: prompt tokens are IGNORE_INDEX when ``completion_only_loss`` (the default), plain text is
    trained on every token, a conversation on its assistant turns only (on everything when
    ``completion_only_loss=False``). EOS is appended after completions and texts.

    A conversation gives one example, except with a template that does not render incrementally (Qwen3,
    Phi-3), where each assistant turn is its own example (``where`` 'file.jsonl:3 turn 2') whose context is
    what generation sees before that turn; see ``chat.conversation_sequences``. A template with
    ``{% generation %}`` markers is masked by transformers instead. Every example is fitted to ``limits``
    on its own, a conversation or a turn by ``max_total_tokens``, so the report counts examples.
    """
    eos = _eos_id(tokenizer, add_eos)
    markers = has_generation_markers(tokenizer)
    fitter = LengthFitter(limits, getattr(tokenizer, "bos_token_id", None))
    pieces: list[Piece] = []
    # Per example: its record, location, and which of its pieces carry the loss; or, for a template with
    # generation markers, the ids and assistant mask that transformers already produced.
    layout: list[tuple[Record, str, list[bool] | tuple[list[int], list[bool]]]] = []
    for r in records:
        if isinstance(r, PromptCompletionRecord):
            record_pieces = [
                _prompt_piece(tokenizer, r.prompt, r.where),
                _completion_piece(tokenizer, r.prompt, r.completion, r.where),
            ]
            bounded = _bound(
                fitter, r.where, [("prompt", "prompt"), ("completion", "completion")], record_pieces
            )
            if bounded is not None:
                pieces += bounded
                layout.append((r, r.where, [False, True]))
        elif isinstance(r, TextRecord):
            bounded = _bound(fitter, r.where, [("text", "completion")], [(r.text, True)])
            if bounded is not None:
                pieces += bounded
                layout.append((r, r.where, [True]))
        elif isinstance(r, ConversationRecord) and markers:
            messages = _bound_messages(fitter, r)
            if messages is not None:
                layout.append((r, r.where, assistant_token_mask(tokenizer, messages, r.where)))
        elif isinstance(r, ConversationRecord):
            for where, split in conversation_sequences(tokenizer, r.messages, r.where):
                roles = [(f"conversation piece {i}", "sequence") for i in range(len(split))]
                bounded = _bound(fitter, where, roles, [(text, False) for text, _ in split])
                if bounded is not None:
                    pieces += bounded
                    layout.append((r, where, [is_assistant for _, is_assistant in split]))
        else:
            raise DataError(
                f"{r.where or 'record'}: encode_sft needs prompt_completion, text or conversational records, "
                f"got {r.FORMAT} data"
            )
    ids = _tokenize(tokenizer, pieces)
    out: list[Example] = []
    pos = 0
    for r, where, spec in layout:
        parts: list[list[int]] = []
        if not isinstance(spec, tuple):
            parts = ids[pos : pos + len(spec)]
            pos += len(spec)
        if isinstance(r, PromptCompletionRecord):
            completion = _with_eos(parts[1], eos, chat=not isinstance(r.prompt, str))
            fitted = fitter.fit(where, parts[0], [("completion", completion)])
            if fitted is None:
                continue
            prompt_ids, (completion_ids,) = fitted
            input_ids = prompt_ids + completion_ids
            prompt_labels = [IGNORE_INDEX] * len(prompt_ids) if completion_only_loss else list(prompt_ids)
            labels = prompt_labels + completion_ids
        elif isinstance(r, TextRecord):
            fitted = fitter.fit(where, None, [("text", _with_eos(parts[0], eos, chat=False))])
            if fitted is None:
                continue
            input_ids = fitted[1][0]
            labels = list(input_ids)
        else:
            if isinstance(spec, tuple):
                input_ids, mask = spec
            else:
                input_ids = [t for part in parts for t in part]
                mask = [flag for part, flag in zip(parts, spec, strict=True) for _ in part]
            if not any(mask):
                raise DataError(f"{where or 'record'}: the chat template rendered no assistant tokens")
            if not completion_only_loss:
                mask = [True] * len(mask)
            fitted_ids = fitter.fit_sequence(where, "conversation", input_ids, must_keep=mask.index(True) + 1)
            if fitted_ids is None:
                continue
            input_ids = fitted_ids
            labels = [t if m else IGNORE_INDEX for t, m in zip(input_ids, mask, strict=False)]
        out.append(Example(input_ids=input_ids, labels=labels, where=where))
    return Encoded(out, fitter.report)


def encode_prompts(
    records: Sequence[Record], tokenizer: PreTrainedTokenizerBase, limits: LengthLimits | None = None
) -> Encoded[PromptExample]:
    """Prompt ids for online RL. Any record with a prompt works; its other fields (``answer``, or a
    reference ``completion``) travel in ``extra`` for the reward functions."""
    want = (PromptRecord, PromptCompletionRecord, PreferenceRecord, RankedRecord, UnpairedRecord)
    fitted, report = _encode_prompted(records, tokenizer, limits, want, "encode_prompts", lambda r: [], False)
    out = [
        PromptExample(
            prompt_ids=p,
            prompt=r.prompt,
            extra={k: v for k, v in r.to_row().items() if k != "prompt"},
            where=r.where,
        )
        for r, p, _ in fitted
    ]
    return Encoded(out, report)


def encode_preference(
    records: Sequence[Record],
    tokenizer: PreTrainedTokenizerBase,
    limits: LengthLimits | None = None,
    add_eos: bool = True,
) -> Encoded[PreferenceExample]:
    """Prompt, chosen and rejected ids of preference pairs; a pair is dropped or truncated as a whole.

    A pair whose chosen text equals its rejected text teaches nothing (its loss gradient is zero, or worse
    for losses with a margin), so it is dropped and counted in the report; data made only of such pairs
    raises a DataError naming its source."""
    records, identical = _without_identical_pairs(records)
    fitted, report = _encode_prompted(
        records,
        tokenizer,
        limits,
        PreferenceRecord,
        "encode_preference",
        lambda r: [("chosen", r.chosen), ("rejected", r.rejected)],
        add_eos,
    )
    out = [
        PreferenceExample(p, c[0], c[1], margin=r.margin, extra=dict(r.extra), where=r.where)
        for r, p, c in fitted
    ]
    if identical:
        report.dropped += identical
        report.reasons["chosen identical to rejected"] += identical
    return Encoded(out, report)


def _without_identical_pairs(records: Sequence[Record]) -> tuple[list[Record], int]:
    """The records whose chosen and rejected differ, and how many did not."""
    kept = [r for r in records if not (isinstance(r, PreferenceRecord) and r.chosen == r.rejected)]
    if records and not kept:
        raise DataError(
            f"{source_of(records[0].where) or 'preference data'}: all {len(records)} preference pairs have "
            f"chosen identical to rejected (no pair says which response is preferred)"
        )
    return kept, len(records) - len(kept)


def source_of(where: str) -> str:
    """The file or dataset part of a record location: 'data/train.jsonl' of 'data/train.jsonl:7'."""
    return where.rpartition(":")[0]


def encode_ranked(
    records: Sequence[Record],
    tokenizer: PreTrainedTokenizerBase,
    limits: LengthLimits | None = None,
    add_eos: bool = True,
) -> Encoded[RankedExample]:
    """Prompt ids and the ids of every ranked response, with their scores."""
    fitted, report = _encode_prompted(
        records,
        tokenizer,
        limits,
        RankedRecord,
        "encode_ranked",
        lambda r: [(f"responses[{i}]", text) for i, text in enumerate(r.responses)],
        add_eos,
    )
    out = [RankedExample(p, c, list(r.scores), extra=dict(r.extra), where=r.where) for r, p, c in fitted]
    return Encoded(out, report)


def encode_unpaired(
    records: Sequence[Record],
    tokenizer: PreTrainedTokenizerBase,
    limits: LengthLimits | None = None,
    add_eos: bool = True,
) -> Encoded[UnpairedExample]:
    """Prompt and completion ids with the desirable/undesirable label (KTO)."""
    fitted, report = _encode_prompted(
        records,
        tokenizer,
        limits,
        UnpairedRecord,
        "encode_unpaired",
        lambda r: [("completion", r.completion)],
        add_eos,
    )
    out = [UnpairedExample(p, c[0], r.label, extra=dict(r.extra), where=r.where) for r, p, c in fitted]
    return Encoded(out, report)
