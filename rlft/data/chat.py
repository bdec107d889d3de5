"""Rendering conversations with the tokenizer's chat template, and finding the assistant's text in them.

Which tokens belong to assistant turns is found without knowing anything about the template: render the
conversation up to turn i with the generation prompt (everything the model sees before it starts talking)
and up to turn i inclusive (everything once it has finished); the text between the two renderings is the
assistant's turn, including any end-of-turn marker the template writes, which the model must learn to
produce. Each piece is then tokenized on its own, so token boundaries coincide with turn boundaries and
generation (which starts right after the rendered prompt) sees exactly the tokens training saw.

That needs a template that renders incrementally: every shorter rendering a prefix of the whole. Some do
not — Qwen3 drops ``<think>`` blocks from assistant turns before the last user message, Phi-3 writes EOS
after the last message — and for those each assistant turn becomes its own sequence (``conversation_sequences``):
the context is exactly what generation sees before that turn, so training still matches inference. A
template that marks assistant text with ``{% generation %}`` says itself what to train on, and transformers'
assistant-token mask is used instead (``assistant_token_mask``).

Chat-format options (``chat_template_kwargs``, e.g. Qwen3's ``enable_thinking``) ride on the tokenizer
(``set_chat_template_kwargs``), so every rendering in rlft — training data, RL prompts, evaluation — sees
the same options without an extra argument threaded through every encoder and trainer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

from .errors import DataError, one_line, show
from .formats import Message

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

KWARGS_ATTR = "rlft_chat_template_kwargs"

# apply_chat_template's own parameters and the template's fixed variables: rlft sets these for each
# rendering, and passing them again would fail inside transformers with a confusing TypeError.
_RESERVED_KWARGS = frozenset(
    {
        "conversation",
        "messages",
        "add_generation_prompt",
        "continue_final_message",
        "tokenize",
        "return_dict",
        "return_assistant_tokens_mask",
        "return_tensors",
        "padding",
        "truncation",
        "max_length",
        "tokenizer_kwargs",
    }
)

_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


class _RenderOptions(TypedDict, total=False):
    """The ``apply_chat_template`` options rlft sets for a rendering (see ``_RESERVED_KWARGS``)."""

    tokenize: bool
    add_generation_prompt: bool
    return_dict: bool
    return_assistant_tokens_mask: bool


class NotIncremental(DataError):
    """The template's rendering of a shorter conversation is not a prefix of the whole one. A subclass so
    that ``conversation_sequences`` can fall back to one sequence per turn while other callers still see
    a plain ``DataError``."""


def set_chat_template_kwargs(tokenizer: PreTrainedTokenizerBase, kwargs: Mapping[str, Any] | None) -> None:
    """Store ``kwargs`` (a copy) on ``tokenizer`` for every chat-template rendering in rlft; None clears.

    An attribute rather than a parameter: the tokenizer already reaches every place that renders chat
    data, so one call where it is loaded covers SFT, preference and RL data, evaluation and sampling.
    It is not saved with the tokenizer (``save_pretrained`` writes only its own settings)."""
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, Mapping):
        raise DataError(f"chat_template_kwargs: expected a mapping of names to values, got {show(kwargs)}")
    for key in kwargs:
        if not isinstance(key, str):
            raise DataError(f"chat_template_kwargs: expected string keys, got {show(key)}")
        if key in _RESERVED_KWARGS:
            raise DataError(
                f"chat_template_kwargs: {key!r} is set by rlft for each rendering and cannot be given here"
            )
    setattr(tokenizer, KWARGS_ATTR, dict(kwargs))


def chat_template_kwargs(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """The options stored by ``set_chat_template_kwargs`` (a copy; empty when none were set)."""
    return dict(getattr(tokenizer, KWARGS_ATTR, None) or {})


def _apply_chat_template(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], **options: Unpack[_RenderOptions]
) -> object:
    """``tokenizer.apply_chat_template(messages, **options)`` with the stored ``chat_template_kwargs``: the
    one call that renders chat data, so every rendering sees the same options."""
    return tokenizer.apply_chat_template(messages, **options, **chat_template_kwargs(tokenizer))


def require_chat_template(tokenizer: PreTrainedTokenizerBase, where: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"{where}: conversational data needs a chat template, but the tokenizer has none "
            f"(set tokenizer.chat_template or use a chat model's tokenizer)"
        )


def render(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], add_generation_prompt: bool, where: str
) -> str:
    """The template's text for ``messages`` (no tokenization, so special tokens appear as text), with the
    tokenizer's ``chat_template_kwargs``."""
    require_chat_template(tokenizer, where)
    try:
        text = _apply_chat_template(
            tokenizer, messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as e:  # jinja2 errors, or the template's own raise_exception(...)
        raise DataError(f"{where}: the chat template failed on this record ({one_line(e)})") from None
    if not isinstance(text, str):
        raise DataError(
            f"{where}: apply_chat_template(tokenize=False) returned {type(text).__name__}, not text"
        )
    return text


def _prefix_check(full: str, prefix: str, where: str, what: str) -> None:
    if not full.startswith(prefix):
        raise NotIncremental(
            f"{where}: the chat template does not render conversations incrementally ({what} is not a prefix "
            f"of the whole conversation), so the assistant's tokens cannot be located"
        )


def completion_after_prompt(
    tokenizer: PreTrainedTokenizerBase, prompt: list[Message], completion: str, where: str
) -> str:
    """The text the template adds after a conversational ``prompt`` when the assistant answers ``completion``."""
    head = render(tokenizer, prompt, True, where)
    full = render(tokenizer, [*prompt, {"role": "assistant", "content": completion}], False, where)
    _prefix_check(full, head, where, "the rendered prompt")
    return full[len(head) :]


def _turn_renders(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], where: str
) -> list[tuple[int, str, str]]:
    """(i, before, through) for each assistant message i: the rendering of messages[:i] with the generation
    prompt, and of messages[:i+1] without."""
    out = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        try:
            before = render(tokenizer, messages[:i], True, where)
        except DataError:
            if i:
                raise
            before = ""  # many templates cannot render an empty conversation; nothing precedes turn 0
        out.append((i, before, render(tokenizer, messages[: i + 1], False, where)))
    return out


def _pieces(full: str, turns: list[tuple[int, str, str]], where: str) -> list[tuple[str, bool]]:
    pieces: list[tuple[str, bool]] = []
    pos = 0
    for i, before, through in turns:
        _prefix_check(full, before, where, f"the text before messages[{i}]")
        _prefix_check(full, through, where, f"the text through messages[{i}]")
        if len(before) < pos or len(through) < len(before):
            raise DataError(f"{where}: the chat template renders messages[{i}] out of order")
        pieces.append((full[pos : len(before)], False))
        pieces.append((full[len(before) : len(through)], True))
        pos = len(through)
    pieces.append((full[pos:], False))
    return [(text, is_assistant) for text, is_assistant in pieces if text]


def conversation_pieces(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], where: str
) -> list[tuple[str, bool]]:
    """Split the rendered conversation into consecutive (text, is_assistant) pieces that join to the whole.
    Raises ``NotIncremental`` (a ``DataError``) when the template does not render incrementally."""
    full = render(tokenizer, messages, False, where)
    return _pieces(full, _turn_renders(tokenizer, messages, where), where)


def turn_where(where: str, n: int) -> str:
    """The location of the ``n``-th (1-based) assistant turn of the record at ``where``."""
    return f"{where} turn {n}" if where else f"turn {n}"


def conversation_sequences(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], where: str
) -> list[tuple[str, list[tuple[str, bool]]]]:
    """The training sequences of a conversation, each as (where, [(text, is_assistant), ...]).

    A template that renders incrementally gives one sequence, the whole conversation, trained on every
    assistant turn (the cheapest: each token is seen once). Otherwise each assistant turn k (``n``-th
    turn, ``where`` 'file.jsonl:3 turn n') is its own sequence: the context is
    render(messages[:k], add_generation_prompt=True) — exactly the text generation starts from — and the
    target what the template adds for turn k, render(messages[:k+1])[len(context):], end-of-turn marker
    included. Later turns still see earlier ones as the template renders them at that point (e.g. Qwen3
    without their thinking), which is what the model sees at inference."""
    full = render(tokenizer, messages, False, where)
    turns = _turn_renders(tokenizer, messages, where)
    try:
        return [(where, _pieces(full, turns, where))]
    except NotIncremental:
        pass
    out = []
    for n, (i, before, through) in enumerate(turns, start=1):
        at = turn_where(where, n)
        if not through.startswith(before):
            raise NotIncremental(
                f"{at}: the chat template does not render conversations incrementally, not even turn by "
                f"turn (the text before messages[{i}] with the generation prompt is not a prefix of the text "
                f"through messages[{i}]), so the assistant's tokens cannot be located"
            )
        pieces = [(before, False), (through[len(before) :], True)]
        out.append((at, [(text, is_assistant) for text, is_assistant in pieces if text]))
    return out


def has_generation_markers(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when the template marks assistant text with ``{% generation %}`` and transformers can turn the
    marks into a token mask (that needs a fast tokenizer's offsets)."""
    if not getattr(tokenizer, "chat_template", None) or not getattr(tokenizer, "is_fast", False):
        return False
    try:
        template = tokenizer.get_chat_template()
    except Exception:  # e.g. several named templates and no default: render() reports it in context
        return False
    return isinstance(template, str) and bool(_GENERATION_TAG.search(template))


def assistant_token_mask(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], where: str
) -> tuple[list[int], list[bool]]:
    """Token ids of the whole conversation and, per token, whether the template's ``{% generation %}``
    markers put it in assistant text (transformers' ``return_assistant_tokens_mask``).

    The template's author decides what the assistant learns, including whether the end-of-turn marker is
    inside the markers. The conversation is tokenized in one piece, so a token straddling a marker counts
    as assistant text."""
    require_chat_template(tokenizer, where)
    try:
        out = _apply_chat_template(
            tokenizer,
            messages,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            add_generation_prompt=False,
        )
        if not isinstance(out, Mapping):  # return_dict=True gives a BatchEncoding, which is a mapping
            raise TypeError(f"apply_chat_template returned {type(out).__name__}, not a mapping")
        ids, mask = list(out["input_ids"]), [bool(m) for m in out["assistant_masks"]]
    except Exception as e:
        raise DataError(
            f"{where}: the chat template failed on this record with return_assistant_tokens_mask=True "
            f"({one_line(e)})"
        ) from None
    if len(ids) != len(mask):
        raise DataError(f"{where}: the assistant-token mask has {len(mask)} entries for {len(ids)} tokens")
    return ids, mask


# A marker that no template rewrites and that stands out in the rendering.
_PROBE = "XyZq7RlftProbe"


def end_of_turn_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids that end an assistant turn: the template's end-of-turn token (when it is a special token,
    like ``<|im_end|>``, ``<end_of_turn>``, ``<|eot_id|>``, ``<|end|>``), then ``eos_token_id``.

    Found by rendering a one-exchange conversation and tokenizing what the template writes right after
    the assistant's text, so it works for any template without a table of families. Empty when there is
    no chat template or it cannot render that conversation: then nothing is known about turns."""
    if not getattr(tokenizer, "chat_template", None):
        return []
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}]
    try:
        text = render(tokenizer, messages, False, "end_of_turn_token_ids")
        pos = text.rfind(_PROBE)
        after = text[pos + len(_PROBE) :] if pos >= 0 else ""
        first = tokenizer(after, add_special_tokens=False)["input_ids"][:1] if after else []
    except Exception:
        return []
    ids: list[int] = []
    if first and _is_special(tokenizer, first[0]):
        ids.append(int(first[0]))
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None and eos not in ids:
        ids.append(int(eos))
    return ids


def _is_special(tokenizer: PreTrainedTokenizerBase, token_id: int) -> bool:
    # Plain text after the turn (e.g. a newline) is not a stop signal: stopping on it would cut answers.
    if token_id in (getattr(tokenizer, "all_special_ids", None) or []):
        return True
    added = (getattr(tokenizer, "added_tokens_decoder", None) or {}).get(token_id)
    return bool(getattr(added, "special", False))
