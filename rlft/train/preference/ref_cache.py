"""Reference log-probs computed once and cached on disk.

DPO-style losses compare the policy with a frozen reference model on fixed data, so the reference's
summed log-prob of every scored sequence is a constant of the run. Computing it once before training
removes a forward pass per step (and the reference model from memory); caching it on disk makes the
next run on the same data and reference free.

The cache key is a SHA-256 over everything the numbers depend on:
- the token ids of every scored sequence, in order, with the prompt/completion split (so the dataset
  content, its order, the tokenizer and every truncation setting are in it);
- the reference model's weights (every tensor's name, dtype, shape and bytes) and its config (minus
  bookkeeping fields such as the path it was loaded from);
- the compute setting that changes the numbers (bfloat16 or float32) and the cache format version.
A different model or dataset therefore gets a different file; the key is also stored inside the file
and checked on load, so a renamed or corrupted file is recomputed rather than trusted.

A cache file is a safetensors file (one float32 tensor ``logps``, the key and version in its JSON
metadata): reading it runs no code, unlike a pickle. A file that cannot be read, is not in this format
or holds other data is reported in one line, recomputed and overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file
from torch import Tensor

from rlft.models.logprobs import grouped_logprob_sums
from rlft.run import atomic_path
from rlft.run.distributed import is_main

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = [
    "CACHE_VERSION",
    "cache_key",
    "compute_logprob_sums",
    "default_cache_dir",
    "model_fingerprint",
    "reference_logprob_sums",
    "sequences_fingerprint",
]

CACHE_VERSION = 2
Sequence_ = tuple[Sequence[int], Sequence[int]]  # (prompt ids, completion ids)
_CONFIG_SKIP = ("_name_or_path", "transformers_version", "_commit_hash", "architectures")


def default_cache_dir() -> Path:
    """``$RLFT_CACHE/ref_logps``, else ``~/.cache/rlft/ref_logps``."""
    root = os.environ.get("RLFT_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "rlft") / "ref_logps"


def model_fingerprint(model: PreTrainedModel) -> str:
    """SHA-256 of a model's config (bookkeeping keys dropped) and of every tensor of its state dict."""
    h = hashlib.sha256()
    config = {k: v for k, v in model.config.to_dict().items() if k not in _CONFIG_SKIP}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


def sequences_fingerprint(sequences: Sequence[Sequence_]) -> str:
    """SHA-256 of the scored sequences: each one's prompt and completion ids, lengths included."""
    h = hashlib.sha256()
    for prompt, completion in sequences:
        h.update(struct.pack("<II", len(prompt), len(completion)))
        h.update(struct.pack(f"<{len(prompt)}q", *prompt))
        h.update(struct.pack(f"<{len(completion)}q", *completion))
    return h.hexdigest()


def cache_key(model_fp: str, data_fp: str, bf16: bool) -> str:
    text = json.dumps({"v": CACHE_VERSION, "model": model_fp, "data": data_fp, "bf16": bool(bf16)})
    return hashlib.sha256(text.encode()).hexdigest()


@torch.no_grad()
def compute_logprob_sums(
    model: PreTrainedModel,
    sequences: Sequence[Sequence_],
    pad_id: int,
    bf16: bool = False,
    forward: str = "auto",
    batch_size: int = 64,
) -> Tensor:
    """Σ log π(completion | prompt) of every sequence (float32, (N,)).

    Consecutive sequences with the same prompt (a pair's chosen and rejected) form one group, so the
    fused forward computes their prompt once; groups are scored in length-sorted batches of about
    ``batch_size`` sequences.
    """
    was_training = model.training
    model.eval()
    groups: list[tuple[Sequence[int], list[int]]] = []
    for i, (prompt, _) in enumerate(sequences):
        if groups and list(groups[-1][0]) == list(prompt):
            groups[-1][1].append(i)
        else:
            groups.append((prompt, [i]))
    groups.sort(key=lambda g: len(g[0]) + max(len(sequences[i][1]) for i in g[1]))
    out = torch.zeros(len(sequences), dtype=torch.float32)
    batch: list[tuple[Sequence[int], list[int]]] = []
    for n, group in enumerate(groups):
        batch.append(group)
        if sum(len(g[1]) for g in batch) >= batch_size or n == len(groups) - 1:
            scored = [(p, [sequences[i][1] for i in idx]) for p, idx in batch]
            sums, _ = grouped_logprob_sums(model, scored, pad_id, bf16=bf16, forward=forward)
            out[torch.tensor([i for _, idx in batch for i in idx])] = sums.float().cpu()  # the table: CPU
            batch = []
    model.train(was_training)
    return out


def reference_logprob_sums(
    model: PreTrainedModel,
    sequences: Sequence[Sequence_],
    pad_id: int,
    cache_dir: str | Path | None = None,
    bf16: bool = False,
    forward: str = "auto",
    log: Callable[[str], None] | None = None,
    model_fp: str | None = None,
) -> Tensor:
    """The reference's Σ log-probs of ``sequences``, from the cache when a matching entry exists, else
    computed and written there (atomically). ``cache_dir`` None: :func:`default_cache_dir`.
    ``model_fp`` may pass a fingerprint computed earlier (it is the slow part of the key)."""
    say = log or (lambda msg: print(msg, file=sys.stderr))
    key = cache_key(model_fp or model_fingerprint(model), sequences_fingerprint(sequences), bf16)
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    file = path / f"{key}.safetensors"
    if file.exists():
        try:
            values = _read_entry(file, key, len(sequences))
            say(f"reference log-probs: {len(sequences)} sequences from cache {file}")
            return values
        except _Unusable as why:
            say(f"reference log-probs: cache at {file} ignored ({why}); recomputing")
    start = time.monotonic()
    values = compute_logprob_sums(model, sequences, pad_id, bf16=bf16, forward=forward)
    if not is_main():  # every rank computes the same table; rank 0 writes it
        return values
    path.mkdir(parents=True, exist_ok=True)
    with atomic_path(file) as tmp:
        save_file({"logps": values.contiguous()}, str(tmp), metadata=_metadata(key, len(values)))
    say(
        f"reference log-probs: {len(sequences)} sequences computed in {time.monotonic() - start:.1f}s, "
        f"cached at {file}"
    )
    return values


class _Unusable(Exception):
    """A cache file that is not a valid entry for the wanted key (the message says why)."""


def _metadata(key: str, count: int) -> dict[str, str]:
    return {"format": "rlft.ref_logps", "version": str(CACHE_VERSION), "key": key, "count": str(count)}


def _read_entry(file: Path, key: str, count: int) -> Tensor:
    """The ``count`` log-probs stored in ``file`` under ``key``; :class:`_Unusable` if it holds anything else."""
    try:
        data = file.read_bytes()
        metadata = _header_metadata(data)
        tensors = load_safetensors(data)
    except (OSError, ValueError, SafetensorError) as err:
        raise _Unusable(f"not a readable safetensors file: {_first_line(err)}") from None
    expected = _metadata(key, count)
    if metadata != expected:
        fields = metadata if isinstance(metadata, dict) else {}
        differ = [name for name, value in expected.items() if fields.get(name) != value] or ["metadata"]
        raise _Unusable(f"holds other data: its {', '.join(differ)} differ from this run's")
    values = tensors.get("logps")
    if (
        values is None
        or set(tensors) != {"logps"}
        or values.dtype != torch.float32
        or tuple(values.shape) != (count,)
    ):
        shapes = {name: (str(t.dtype), tuple(t.shape)) for name, t in tensors.items()}
        raise _Unusable(f"holds tensors {_short(shapes)}, expected logps float32 ({count},)")
    return values


def _header_metadata(data: bytes) -> dict[str, Any] | None:
    """The ``__metadata__`` of a safetensors file's JSON header (None when it has none)."""
    if len(data) < 8:
        raise ValueError(f"{len(data)} bytes, shorter than a safetensors header")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise ValueError(f"header of {size} bytes in a file of {len(data)}")
    header = json.loads(data[8 : 8 + size].decode("utf-8"))  # UnicodeDecodeError is a ValueError
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return header.get("__metadata__")


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
