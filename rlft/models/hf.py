"""Loading and saving Hugging Face causal language models and their tokenizers.

Everything else in rlft gets its model through here, so a model is always a plain
``transformers.PreTrainedModel`` and a checkpoint is always a directory that
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` can read.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .errors import ModelError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map a config string such as ``"bfloat16"`` to a ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except (KeyError, TypeError):
        raise ModelError(f"unknown dtype {dtype!r} (expected one of {', '.join(DTYPES)})") from None


def _check_source(name_or_path: str) -> None:
    """Fail early, with a readable message, on a local path that does not exist.

    Anything that looks like a filesystem path (absolute, ``./``, ``~``, or existing as a file) must be a
    directory; a bare ``owner/name`` that is not a local directory is passed to the hub as an id.
    """
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path):
        raise ModelError(f"model name or path must be a non-empty string, got {name_or_path!r}")
    text = str(name_or_path)
    path = Path(text).expanduser()
    looks_local = path.is_absolute() or text.startswith((".", "~")) or path.exists() or text.count("/") > 1
    if looks_local and not path.is_dir():
        raise ModelError(f"no model at {text} (expected a Hugging Face model directory or hub id)")


def load_causal_lm(
    name_or_path: str, dtype: str = "float32", trust_remote_code: bool = False
) -> PreTrainedModel:
    """Load a causal LM from a local directory or hub id, in ``dtype``, in eval mode.

    ``trust_remote_code`` is passed to transformers only when True, so models that ship no custom code
    never see the argument.
    """
    _check_source(name_or_path)
    kwargs: dict[str, Any] = {"dtype": parse_dtype(dtype)}
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    try:
        model = AutoModelForCausalLM.from_pretrained(str(Path(name_or_path).expanduser()), **kwargs)
    except OSError as err:  # transformers raises OSError for "not a model repo / no config"
        raise ModelError(
            f"no model at {name_or_path} (expected a Hugging Face model directory or hub id): "
            f"{str(err).splitlines()[0]}"
        ) from err
    return model.eval()


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load a tokenizer, guarantee it has a pad token, and pad on the left.

    Left padding is what batched generation needs (every prompt ends at the same column, so the next
    token is appended at one position for the whole batch); rlft tokenises prompts with it everywhere.
    A tokenizer without a pad token reuses EOS: padded positions are always masked out, so the id only
    has to exist.
    """
    _check_source(name_or_path)
    kwargs: dict[str, Any] = {}
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(Path(name_or_path).expanduser()), **kwargs)
    except OSError as err:
        raise ModelError(
            f"no tokenizer at {name_or_path} (expected a Hugging Face model directory or hub id): "
            f"{str(err).splitlines()[0]}"
        ) from err
    return ensure_padding(tokenizer)


def training_mode(model: torch.nn.Module, keep_dropout: bool = False) -> torch.nn.Module:
    """``model.train()``, with every dropout probability set to 0 unless ``keep_dropout``.

    Dropout makes the trained policy a different function from the one that is sampled, scored by a
    frozen reference or evaluated (all in eval mode): a DPO run with GPT-2's p = 0.1 would not start at
    loss log 2. TRL disables it by default for the same reason (``disable_dropout``). Both the
    ``nn.Dropout`` modules and the attention-probability dropout that attention layers apply
    functionally from a float ``attention_dropout`` attribute are zeroed; the saved config is untouched.
    """
    model.train()
    if not keep_dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
            if isinstance(getattr(module, "attention_dropout", None), float):
                module.attention_dropout = 0.0
    return model


def ensure_padding(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give ``tokenizer`` a pad token (EOS if it has none) and ``padding_side="left"``; returns it."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ModelError("tokenizer has neither a pad token nor an eos token (expected at least one)")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def save_pretrained_atomic(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, out_dir: str | Path
) -> Path:
    """Save ``model`` (safetensors + config) and ``tokenizer`` so that ``out_dir`` is never half-written.

    Everything is written into a fresh temp directory beside ``out_dir`` (same filesystem, so the
    rename is atomic); then an existing ``out_dir`` is first renamed aside, the new one renamed into
    place, and only then the old one deleted. A crash therefore leaves either the old checkpoint or the
    new one under ``out_dir`` (plus, at worst, a stray ``.name.tmp-*`` / ``.name.old-*`` sibling).
    """
    target = Path(out_dir).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = secrets.token_hex(4)
    tmp = target.with_name(f".{target.name}.tmp-{tag}")
    old = target.with_name(f".{target.name}.old-{tag}")
    try:
        tmp.mkdir()
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _fsync_tree(tmp)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not target.exists():
            os.replace(old, target)  # put the previous checkpoint back
        raise
    shutil.rmtree(old, ignore_errors=True)
    return target


def _fsync_tree(root: Path) -> None:
    """fsync every file under ``root`` so the rename never exposes data still only in the page cache."""
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
