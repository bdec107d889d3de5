"""Rendering conversations with the tokenizer's chat template, and finding the assistant's text in them.

Which tokens belong to assistant turns is found without knowing anything about the template: render the
conversation up to turn i with the generation prompt (everything the model sees before it starts talking)
and up to turn i inclusive (everything once it has finished); the text between the two renderings is the
assistant's turn, including any end-of-turn marker the template writes, which the model must learn to
produce. Each piece is then tokenized on its own, so token boundaries coincide with turn boundaries and
generation (which starts right after the rendered prompt) sees exactly the tokens training saw.
"""

from __future__ import annotations

from typing import Any

from .errors import DataError, one_line
from .formats import Message


def require_chat_template(tokenizer: Any, where: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"{where}: conversational data needs a chat template, but the tokenizer has none "
            f"(set tokenizer.chat_template or use a chat model's tokenizer)"
        )


def render(tokenizer: Any, messages: list[Message], add_generation_prompt: bool, where: str) -> str:
    """The template's text for ``messages`` (no tokenization, so special tokens appear as text)."""
    require_chat_template(tokenizer, where)
    try:
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
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
        raise DataError(
            f"{where}: the chat template does not render conversations incrementally ({what} is not a prefix "
            f"of the whole conversation), so the assistant's tokens cannot be located"
        )


def completion_after_prompt(tokenizer: Any, prompt: list[Message], completion: str, where: str) -> str:
    """The text the template adds after a conversational ``prompt`` when the assistant answers ``completion``."""
    head = render(tokenizer, prompt, True, where)
    full = render(tokenizer, [*prompt, {"role": "assistant", "content": completion}], False, where)
    _prefix_check(full, head, where, "the rendered prompt")
    return full[len(head) :]


def conversation_pieces(tokenizer: Any, messages: list[Message], where: str) -> list[tuple[str, bool]]:
    """Split the rendered conversation into consecutive (text, is_assistant) pieces that join to the whole."""
    full = render(tokenizer, messages, False, where)
    pieces: list[tuple[str, bool]] = []
    pos = 0
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        try:
            before = render(tokenizer, messages[:i], True, where)
        except DataError:
            if i:
                raise
            before = ""  # many templates cannot render an empty conversation; nothing precedes turn 0
        through = render(tokenizer, messages[: i + 1], False, where)
        _prefix_check(full, before, where, f"the text before messages[{i}]")
        _prefix_check(full, through, where, f"the text through messages[{i}]")
        if len(before) < pos or len(through) < len(before):
            raise DataError(f"{where}: the chat template renders messages[{i}] out of order")
        pieces.append((full[pos : len(before)], False))
        pieces.append((full[len(before) : len(through)], True))
        pos = len(through)
    pieces.append((full[pos:], False))
    return [(text, is_assistant) for text, is_assistant in pieces if text]
