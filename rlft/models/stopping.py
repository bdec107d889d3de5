"""Stop strings for batched decoding, with per-step work proportional to the rows that *could* stop.

A stop string can only be completed by a token whose text contains the string's last character.
A (V,) table of such "candidate" tokens is built once per tokenizer and set of stop strings; each step
looks up the sampled tokens in it (one vectorised index) and decodes the recent tokens of only the
few candidate rows to check for the strings. Tokens whose lone decoding is not clean text (partial
UTF-8 bytes, ``\\ufffd``) are always candidates, and a stop string ending in whitespace makes every
token a candidate (tokenizers may drop leading spaces when decoding a single token), so the filter
never misses a stop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase


def candidate_table(
    tokenizer: PreTrainedTokenizerBase, stop_strings: Sequence[str], vocab_size: int
) -> Tensor:
    """(vocab_size,) bool: True for tokens that may complete one of ``stop_strings``."""
    if any(s[-1].isspace() for s in stop_strings):
        return torch.ones(vocab_size, dtype=torch.bool)
    last_chars = {s[-1] for s in stop_strings}
    n = min(vocab_size, len(tokenizer))
    texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False)
    flags = [("\ufffd" in t) or any(c in t for c in last_chars) for t in texts]
    table = torch.ones(
        vocab_size, dtype=torch.bool
    )  # ids beyond the tokenizer (padded vocab) stay candidates
    table[:n] = torch.tensor(flags, dtype=torch.bool)
    return table


class StopStrings:
    """Detects the first completion of any stop string in each row's generated text."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, stop_strings: Sequence[str], vocab_size: int
    ) -> None:
        self.tokenizer = tokenizer
        self.stop_strings = tuple(stop_strings)
        self.table = candidate_table(tokenizer, self.stop_strings, vocab_size)
        # Enough recent tokens to contain any stop string, assuming ≥ 1 character per token, plus
        # slack for tokens that decode to nothing on their own (special or partial-byte tokens).
        self.window = max(len(s) for s in self.stop_strings) + 8

    def check(self, tokens: Tensor, rows: Tensor, alive: Tensor, generated: Tensor, step: int) -> Tensor:
        """Which rows finished a stop string with this step's token.

        ``tokens`` (b,) are the tokens just sampled for the active batch, ``rows`` (b,) their row in
        ``generated`` (N, R), which already holds them at column ``step``; ``alive`` (b,) masks rows
        still generating. Returns a (b,) bool tensor.
        """
        hit = torch.zeros_like(alive)
        if self.table.device != tokens.device:
            self.table = self.table.to(tokens.device)  # once per sampler: the table follows the model
        candidates = (self.table[tokens] & alive).nonzero().flatten().tolist()
        start = max(0, step + 1 - self.window)
        for i in candidates:  # usually a handful of rows, not the batch
            text = self.tokenizer.decode(
                generated[rows[i], start : step + 1].tolist(), skip_special_tokens=False
            )
            if any(s in text for s in self.stop_strings):
                hit[i] = True
        return hit


def truncate_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """``text`` cut just before the earliest occurrence of any stop string (unchanged if none occurs)."""
    cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]
