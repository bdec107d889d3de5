"""Loading and saving Hugging Face causal language models and their tokenizers.

Everything else in rlft gets its model through here, so a model is always a plain
``transformers.PreTrainedModel`` and a checkpoint is always a directory that
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` can read.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from rlft.run.skips import first_nonfinite_tensor

from .errors import CustomCodeError, ModelError, NonFiniteWeightsError

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


MODEL_FILES = ("config.json",)
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "config.json")


def _check_source(name_or_path: str, needs: tuple[str, ...] = MODEL_FILES) -> None:
    """Fail early, with a one-line message, on a local source that cannot be a model directory.

    Anything that looks like a filesystem path (absolute, ``./``, ``~``, or existing) must be a
    directory holding one of ``needs`` and asking for no custom code; a bare ``owner/name`` that is not a
    local directory is passed to the hub as an id.
    """
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path):
        raise ModelError(f"model name or path must be a non-empty string, got {name_or_path!r}")
    text = str(name_or_path)
    path = Path(text).expanduser()
    looks_local = path.is_absolute() or text.startswith((".", "~")) or path.exists() or text.count("/") > 1
    if not looks_local:
        return
    if not path.exists():
        raise ModelError(f"no model at {text} (expected a Hugging Face model directory or hub id)")
    expected = f"expected a Hugging Face model directory with {' or '.join(needs)}"
    if not path.is_dir():
        raise ModelError(f"no model at {text}: it is a file ({expected})")
    if not any(path.iterdir()):
        raise ModelError(f"no model at {text}: the directory is empty ({expected})")
    if not any((path / name).is_file() for name in needs):
        raise ModelError(f"no model at {text}: no {' or '.join(needs)} in the directory ({expected})")
    if (path / "config.json").is_file():
        _refuse_custom_code(text, path / "config.json")


def _refuse_custom_code(source: str, config_file: Path) -> None:
    """Raise :class:`CustomCodeError` if ``config_file`` names an architecture transformers lacks.

    Such a model loads only by importing Python files from its directory (``auto_map``), which would run
    whatever a downloaded or planted checkpoint contains; rlft never does.
    """
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelError(f"{config_file}: not a readable JSON config ({str(err).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{config_file}: expected a JSON object, got {type(config).__name__}")
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type in CONFIG_MAPPING:
        return  # transformers' own (or a user-registered) class: auto_map is never consulted
    if "auto_map" in config:
        what = f"auto_map, model_type {model_type!r} unknown to transformers"
        raise CustomCodeError(_custom_code_message(source, what))
    if model_type is not None:
        raise ModelError(
            f"{source}: model_type {model_type!r} is unknown to transformers {transformers.__version__} "
            "(expected an architecture it ships, or one registered with AutoConfig.register in your own code)"
        )


def _custom_code_message(source: str, what: str) -> str:
    return (
        f"{source}: its config asks for custom code ({what}); rlft never runs code from a model "
        "directory — convert the model to an architecture transformers ships, or register its classes in "
        "your own code (AutoConfig.register, AutoModelForCausalLM.register, AutoTokenizer.register) first"
    )


def load_error(source: str, what: str, err: Exception) -> ModelError:
    """The one-line :class:`ModelError` for transformers' ``err`` while loading ``what`` from ``source``."""
    text = str(err)
    if "trust_remote_code" in text:
        return CustomCodeError(_custom_code_message(source, "auto_map with code transformers lacks"))
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    if isinstance(err, OSError):
        return ModelError(
            f"no {what} at {source} (expected a Hugging Face model directory or hub id): {first}"
        )
    return ModelError(f"cannot load {what} from {source}: {first}")


def load_causal_lm(name_or_path: str, dtype: str = "float32") -> PreTrainedModel:
    """Load a causal LM from a local directory or hub id, in ``dtype``, in eval mode.

    Models whose loading would import Python from the model directory (``trust_remote_code``) are
    refused with :class:`CustomCodeError`; transformers is told so explicitly, which also keeps it from
    prompting on stdin.
    """
    _check_source(name_or_path)
    try:
        model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
            str(Path(name_or_path).expanduser()), dtype=parse_dtype(dtype), trust_remote_code=False
        )
    except (OSError, ValueError) as err:  # OSError: "not a model repo / no config"
        if isinstance(err, ModelError):
            raise
        raise load_error(str(name_or_path), "model", err) from err
    model.eval()
    return model


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """Load a tokenizer, guarantee it has a pad token, and pad on the left.

    Left padding is what batched generation needs (every prompt ends at the same column, so the next
    token is appended at one position for the whole batch); rlft tokenises prompts with it everywhere.
    A tokenizer without a pad token reuses EOS: padded positions are always masked out, so the id only
    has to exist. A tokenizer that needs code from its directory is refused, as in :func:`load_causal_lm`.
    """
    _check_source(name_or_path, TOKENIZER_FILES)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(Path(name_or_path).expanduser()), trust_remote_code=False
        )
    except (OSError, ValueError) as err:
        if isinstance(err, ModelError):
            raise
        raise load_error(str(name_or_path), "tokenizer", err) from err
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
                # a float attribute, where nn.Module's attribute types allow only tensors and modules
                module.attention_dropout = 0.0  # type: ignore[assignment]
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
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    out_dir: str | Path,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save ``model`` (safetensors + config) and ``tokenizer`` so that ``out_dir`` is never half-written.

    Everything is written into a fresh temp directory beside ``out_dir`` (same filesystem, so the
    rename is atomic); then an existing ``out_dir`` is first renamed aside, the new one renamed into
    place, and only then the old one deleted. A crash therefore leaves either the old checkpoint or the
    new one under ``out_dir`` (plus, at worst, a stray ``.name.tmp-*`` / ``.name.old-*`` sibling).

    A model with a NaN or infinite weight is refused (:class:`NonFiniteWeightsError`) before anything
    is written: such a checkpoint would replace a good one and poison every run started from it.

    ``state_dict``: the weights to write instead of the model's own (the whole of a sharded model).
    """
    target = Path(out_dir).expanduser()
    check_finite_weights(model, target, state_dict)
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = secrets.token_hex(4)
    tmp = target.with_name(f".{target.name}.tmp-{tag}")
    old = target.with_name(f".{target.name}.old-{tag}")
    try:
        tmp.mkdir()
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
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


def check_finite_weights(
    model: torch.nn.Module, target: str | Path, state_dict: dict[str, torch.Tensor] | None = None
) -> None:
    """Raise :class:`NonFiniteWeightsError` naming the first floating tensor of ``model``'s state dict
    (or of ``state_dict``) that holds a NaN or an infinity (and how many), ``target`` being where it was
    to be saved."""
    found = first_nonfinite_tensor(model.state_dict() if state_dict is None else state_dict)
    if found is not None:
        name, bad, total = found
        raise NonFiniteWeightsError(
            f"not saving the model to {target}: {name} holds {bad} non-finite values (NaN or ±inf) "
            f"of {total}; training diverged (expected finite weights)"
        )


def _fsync_tree(root: Path) -> None:
    """fsync every file under ``root`` so the rename never exposes data still only in the page cache."""
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
