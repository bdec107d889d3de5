"""Fully offline tiny models: a byte-level BPE tokenizer trained on the spot and a small Llama.

Nothing here downloads anything, so tests, examples and benchmarks run on a machine with no hub access.
The tokenizer splits every digit into its own token so arithmetic tasks are learnable digit by digit.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .errors import ModelError
from .hf import save_pretrained_atomic

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)

# Zephyr-style plain-text chat markup: role markers are ordinary text (no extra special tokens), every
# message ends with EOS so a model trained on it learns to stop after its answer.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TinySize:
    """Shape of a tiny Llama; intermediate size is 4·hidden, head dim is hidden / heads."""

    hidden: int
    layers: int
    heads: int

    @property
    def intermediate(self) -> int:
        return 4 * self.hidden


# Parameter counts with the default 512-token vocabulary and tied embeddings (embeddings included):
# 1m ≈ 1.1M, 4m ≈ 4.3M, 15m ≈ 14.4M, 50m ≈ 50.6M.
TINY_SIZES: dict[str, TinySize] = {
    "1m": TinySize(hidden=128, layers=4, heads=4),
    "4m": TinySize(hidden=256, layers=4, heads=4),
    "15m": TinySize(hidden=384, layers=6, heads=6),
    "50m": TinySize(hidden=512, layers=12, heads=8),
}


_WORDS = (
    "the a cat dog sun moon tree bird fish red blue green big small old new one two three is was "
    "and or not yes no run sees likes has eats answer question number sum add plus equals what"
)


def default_corpus(n_lines: int = 400, seed: int = 0) -> list[str]:
    """A few hundred generated lines of simple English words, numbers and arithmetic like ``12+34=46``."""
    rng = random.Random(seed)
    words = _WORDS.split()
    lines: list[str] = []
    for i in range(n_lines):
        kind = i % 4
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        if kind == 0:
            lines.append(f"{a}+{b}={a + b}")
        elif kind == 1:
            lines.append(f"what is {a} plus {b}? the answer is {a + b}.")
        elif kind == 2:
            lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(4, 10))) + ".")
        else:
            lines.append(f"{max(a, b)}-{min(a, b)}={max(a, b) - min(a, b)} and {a}*{b % 10}={a * (b % 10)}")
    return lines


def train_tokenizer(
    corpus: Iterable[str] | None = None,
    vocab_size: int = 512,
    min_frequency: int = 2,
    model_max_length: int = 512,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``corpus`` (the built-in :func:`default_corpus` if None).

    Pre-tokenisation first isolates every digit (``Digits(individual_digits=True)``), then applies the
    GPT-2 byte-level split, so no merge can ever span two digits or a space and a digit: "123" is always
    the three tokens "1", "2", "3". The 256 byte symbols are all in the alphabet, so any text encodes
    (``<unk>`` exists for tokenizer APIs that expect one but is never produced). Special tokens get ids
    0..3 in the order ``<pad>``, ``<s>``, ``</s>`` (EOS), ``<unk>``. No BOS is prepended automatically:
    prompt and completion token ids then concatenate to exactly the ids of the concatenated text.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ModelError(
            f"vocab_size={vocab_size} is too small (expected at least 260: 256 bytes + 4 specials)"
        )
    lines = list(default_corpus() if corpus is None else corpus)
    if not all(isinstance(line, str) for line in lines):
        raise ModelError("tokenizer corpus must be an iterable of strings")
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_config(
    size: str, tokenizer: PreTrainedTokenizerBase, max_position_embeddings: int = 512
) -> LlamaConfig:
    """The ``LlamaConfig`` of tiny size ``size`` for ``tokenizer``'s vocabulary (tied embeddings)."""
    if size not in TINY_SIZES:
        raise ModelError(f"unknown tiny model size {size!r} (expected one of {', '.join(TINY_SIZES)})")
    shape = TINY_SIZES[size]
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        dtype="float32",
    )


def init_tiny_model(
    size: str, tokenizer: PreTrainedTokenizerBase, seed: int = 0, max_position_embeddings: int = 512
) -> LlamaForCausalLM:
    """A freshly initialised float32 tiny Llama (see ``TINY_SIZES``), deterministic in ``seed``.

    The global torch RNG is forked, so building a model does not disturb the caller's random stream.
    """
    config = tiny_config(size, tokenizer, max_position_embeddings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    # In place, as Module.to always is. transformers declares `to` through functools.wraps(Module.to), which
    # mypy binds without `self`.
    model.to(torch.float32)  # type: ignore[arg-type]
    model.eval()
    return model


def build_tiny_model(
    out_dir: str | Path,
    size: str = "1m",
    corpus: Iterable[str] | None = None,
    vocab_size: int = 512,
    seed: int = 0,
    max_position_embeddings: int = 512,
) -> Path:
    """Train a tokenizer on ``corpus`` (built-in default if None), init a tiny Llama, save both to ``out_dir``."""
    if size not in TINY_SIZES:  # check before spending time on the tokenizer
        raise ModelError(f"unknown tiny model size {size!r} (expected one of {', '.join(TINY_SIZES)})")
    tokenizer = train_tokenizer(corpus, vocab_size=vocab_size, model_max_length=max_position_embeddings)
    model = init_tiny_model(size, tokenizer, seed=seed, max_position_embeddings=max_position_embeddings)
    return save_pretrained_atomic(model, tokenizer, out_dir)
