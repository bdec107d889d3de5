"""Fast batched sampling with a KV cache for any HF causal LM: the rollout step of online RL.

One prefill over the left-padded prompts (each repeated ``n`` times), then one token per step for the
whole batch. Each step draws from the temperature-scaled distribution by inverse CDF with a seeded
``torch.Generator`` and records the sampled token's log-prob under that distribution. Rows that
finish (EOS or a stop string) stop being computed: once at least ``compact_at`` of the batch has
finished, the batch and its KV cache are index-selected down to the live rows. All per-step
bookkeeping is vectorised; the only Python loop over rows is the stop-string check, and it visits
only rows whose new token could complete a stop string.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .decoders import HFDecoder
from .device import model_device
from .errors import ModelError
from .forward_path import decoder_choice
from .fused.llama_decoder import FastLlamaDecoder
from .logprobs import Responses
from .precision import bf16_autocast
from .stopping import StopStrings, truncate_at_stop

Prompts = Sequence[str] | Sequence[Sequence[int]]
COMPACT_AT = 0.25  # drop finished rows once ≥ 25% of the batch is done (measured: benchmarks/sampling_*.py)


@dataclass
class SamplingParams:
    """How to sample.

    ``temperature`` scales logits (z/τ) for both sampling and the reported log-probs. ``top_k`` (0 = off)
    and ``top_p`` (1.0 = off) restrict the set sampled from, but the reported log-probs stay those of
    the full temperature-scaled distribution, i.e. what ``token_logprobs(..., temperature=τ)``
    recomputes (the convention of TRL and verl; with filtering on, the sampler is then slightly off
    the policy the log-probs describe). ``greedy`` takes the argmax instead (evaluation, ReMax
    baselines); its log-probs are still reported at τ. ``eos_token_ids`` None means the tokenizer's EOS
    plus any EOS ids in ``model.generation_config`` (as ``generate`` does). ``ignore_eos`` keeps
    generating past EOS (fixed-length runs for benchmarks); stop strings still apply.
    ``bf16`` runs the model under CPU bfloat16 autocast (LM head kept in float32).
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    n: int = 1
    stop_strings: tuple[str, ...] = ()
    eos_token_ids: tuple[int, ...] | None = None
    greedy: bool = False
    seed: int | None = None
    ignore_eos: bool = False
    bf16: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop_strings, str):
            self.stop_strings = (self.stop_strings,)
        self.stop_strings = tuple(self.stop_strings)
        if isinstance(self.eos_token_ids, int):
            self.eos_token_ids = (self.eos_token_ids,)
        elif self.eos_token_ids is not None:
            self.eos_token_ids = tuple(int(i) for i in self.eos_token_ids)
        checks = [
            (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1, "max_new_tokens", ">= 1"),
            (self.temperature > 0, "temperature", "> 0"),
            (isinstance(self.top_k, int) and self.top_k >= 0, "top_k", "an int >= 0 (0 = off)"),
            (0 < self.top_p <= 1, "top_p", "in (0, 1] (1 = off)"),
            (isinstance(self.n, int) and self.n >= 1, "n", ">= 1"),
            (all(isinstance(s, str) and s for s in self.stop_strings), "stop_strings", "non-empty strings"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ModelError(
                    f"SamplingParams.{name}={getattr(self, name)!r} is invalid (expected {expected})"
                )


@dataclass
class Rollout:
    """A batch of sampled responses; row i is sample ``i % n`` of prompt ``group_ids[i]``.

    - ``prompt_ids`` / ``prompt_mask`` (B, P): left-padded prompts (repeated n times, adjacent).
    - ``response_ids`` (B, R): sampled tokens, right-padded with the pad id.
    - ``response_mask`` (B, R): 1 up to and including the EOS token or the token that completed a stop
      string, 0 after; R = longest response in the batch.
    - ``logprobs`` (B, R): log π(token) under the temperature-scaled, unfiltered distribution, 0 where
      masked — equal to ``token_logprobs(..., temperature=τ)`` up to float rounding.
    - ``finished`` (B,): True if ended by EOS or a stop string, False if cut at max_new_tokens.
    - ``group_ids`` (B,): index of the source prompt.
    - ``texts``: decoded responses without special tokens (so without EOS) and cut just before the
      stop string (the stop string and anything after it are excluded from the text, though the
      token that completed it is in ``response_ids``).
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    logprobs: Tensor
    finished: Tensor
    group_ids: Tensor
    texts: list[str] = field(default_factory=list)

    @property
    def response_lengths(self) -> Tensor:
        """(B,) number of response tokens per row."""
        return self.response_mask.sum(-1)

    @property
    def responses(self) -> Responses:
        """The model inputs of these rows, for :mod:`rlft.models.logprobs`."""
        return Responses(
            self.prompt_ids, self.prompt_mask, self.response_ids, self.response_mask, self.group_ids
        )

    def __len__(self) -> int:
        return self.response_ids.shape[0]


@runtime_checkable
class Sampler(Protocol):
    """The one interface the trainers use to generate; a vLLM engine can implement it later."""

    def sample(self, prompts: Prompts, params: SamplingParams) -> Rollout: ...


class HFSampler:
    """:class:`Sampler` over an in-process HF model (``decoder``: "auto", "fast" or "hf", see :func:`sample`)."""

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, decoder: str = "auto"
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.decoder = decoder
        self._stop_cache: dict[tuple[str, ...], StopStrings] = {}

    def sample(self, prompts: Prompts, params: SamplingParams) -> Rollout:
        stops = None
        if params.stop_strings:
            stops = self._stop_cache.get(params.stop_strings)
            if stops is None:
                stops = StopStrings(self.tokenizer, params.stop_strings, _vocab_size(self.model))
                self._stop_cache[params.stop_strings] = stops
        return sample(self.model, self.tokenizer, prompts, params, decoder=self.decoder, _stops=stops)


def _vocab_size(model: PreTrainedModel) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Prompts, pad_id: int
) -> tuple[Tensor, Tensor]:
    """Token ids (B, P) and mask (B, P) of ``prompts``, left-padded with ``pad_id``.

    Strings are tokenised with the tokenizer's defaults (``add_special_tokens=True``, so a BOS is added
    where the tokenizer adds one); pass token-id lists for exact control.
    """
    if isinstance(prompts, str) or len(prompts) == 0:
        raise ModelError("prompts must be a non-empty list of strings or of token-id lists")
    if all(isinstance(p, str) for p in prompts):
        id_lists = tokenizer(list(prompts), padding=False)["input_ids"]
    elif all(isinstance(p, (list, tuple, Tensor)) for p in prompts):
        id_lists = [p.tolist() if isinstance(p, Tensor) else list(p) for p in prompts]
    else:
        raise ModelError("prompts must be all strings or all token-id lists, not a mix")
    for i, ids in enumerate(id_lists):
        if len(ids) == 0:
            raise ModelError(f"prompt {i} is empty (expected at least one token)")
    width = max(len(ids) for ids in id_lists)
    input_ids = torch.full((len(id_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(id_lists), width), dtype=torch.long)
    for i, ids in enumerate(id_lists):
        input_ids[i, width - len(ids) :] = torch.as_tensor(ids, dtype=torch.long)
        mask[i, width - len(ids) :] = 1
    return input_ids, mask


def filter_logits(logits: Tensor, top_k: int, top_p: float) -> Tensor:
    """Set logits outside the top-k / nucleus (top-p) set to −inf (Holtzman et al. 2019).

    Nucleus: keep the most likely tokens until their cumulative probability reaches p, i.e. drop a
    token when the mass of the tokens ranked above it already is ≥ p (the top token is always kept).
    """
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_above = probs.cumsum(-1) - probs
        drop = torch.zeros_like(mass_above, dtype=torch.bool).scatter_(-1, order, mass_above >= top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def pick_tokens(logits: Tensor, params: SamplingParams, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Next tokens (b,) and their log-probs (b,) under softmax(z/τ), from float32 logits z (b, V).

    Sampling is by inverse CDF: one uniform u per row, the token is the first index where the
    cumulative probability exceeds u·total (zero-probability tokens have empty intervals and are never
    drawn). One random number per row instead of one per vocabulary entry (Gumbel-max) matters on a
    CPU, where the generator costs ~4 ns per number. With top-k/top-p the CDF is built from the
    filtered distribution; the returned log-probs are always those of the unfiltered softmax(z/τ).
    """
    scaled = logits if params.temperature == 1.0 else logits / params.temperature
    filtered = params.top_k > 0 or params.top_p < 1.0
    if not params.greedy and not filtered:
        # The default path, once per token: one softmax pass instead of log_softmax + exp; log p of the
        # drawn token is then log(softmax) of one entry per row, equal to log_softmax to float rounding
        # for any probability above float32's underflow (~1e-38; such a token is never drawn).
        probs = torch.softmax(scaled, dim=-1)
        tokens = _inverse_cdf(probs.cumsum(-1), generator)
        return tokens, probs.gather(-1, tokens[:, None]).squeeze(-1).log_()
    logp = torch.log_softmax(scaled, dim=-1)
    if params.greedy:
        tokens = scaled.argmax(-1)
    else:
        probs = torch.softmax(filter_logits(scaled, params.top_k, params.top_p), -1)
        tokens = _inverse_cdf(probs.cumsum_(-1), generator)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


def _inverse_cdf(cdf: Tensor, generator: torch.Generator) -> Tensor:
    """(b,) first index where the (b, V) cumulative probabilities exceed u·total, u ~ U[0, 1)."""
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device).mul_(cdf[:, -1:])
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, params: SamplingParams) -> list[int]:
    if params.eos_token_ids is not None:
        return list(params.eos_token_ids)
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if gen_eos is not None:
        ids.update([int(gen_eos)] if isinstance(gen_eos, int) else [int(i) for i in gen_eos])
    return sorted(ids)


def context_length(model: PreTrainedModel) -> int | None:
    """The positions the model was built for (``max_position_embeddings``, GPT-2's ``n_positions``)."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_context(model: PreTrainedModel, prompt_tokens: int, max_new_tokens: int) -> None:
    """Refuse, before any buffer is allocated, a generation longer than the model's context: past it,
    learned position tables index out of range and rotary models run on positions never trained."""
    context = context_length(model)
    if context is not None and prompt_tokens + max_new_tokens > context:
        raise ModelError(
            f"max_new_tokens={max_new_tokens}: a prompt of {prompt_tokens} tokens plus {max_new_tokens} new "
            f"tokens exceeds the model's context of {context} positions; lower max_new_tokens (or the prompt "
            "length limit)"
        )


def make_decoder(model: PreTrainedModel, params: SamplingParams, decoder: str = "auto") -> HFDecoder:
    """The decoder for ``model``: the Llama fast path where it applies ("auto"), or as asked — the choice
    of :func:`~rlft.models.forward_path.decoder_choice`, which also describes it for a run's forward.txt."""
    choice = decoder_choice(model, decoder, params.bf16)
    if choice.kind == "fast" and choice.weight_dtype is not None:  # a "fast" choice always has its dtype
        return FastLlamaDecoder(model, params.max_new_tokens, choice.weight_dtype)
    return HFDecoder(model, params.max_new_tokens)


@torch.inference_mode()
def _generate(
    dec: HFDecoder,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    params: SamplingParams,
    generator: torch.Generator,
    eos: Tensor,
    stops: StopStrings | None,
    compact_at: float,
    outputs: tuple[Tensor, Tensor, Tensor, Tensor],
) -> int:
    """The decode loop: fills ``outputs`` = (ids, logprobs, mask, finished) in place; returns the
    number of response columns used."""
    out_ids, out_logp, out_mask, finished = outputs
    pad_id = int(out_ids[0, 0])  # out_ids starts as all padding
    steps = out_ids.shape[1]
    rows = torch.arange(out_ids.shape[0], device=out_ids.device)  # batch row -> output row
    alive = torch.ones(out_ids.shape[0], dtype=torch.bool, device=out_ids.device)
    dense = True  # batch row i is output row i and all rows are alive: plain column writes
    used = 0
    with bf16_autocast(params.bf16, prompt_ids.device.type):
        logits = dec.prefill(prompt_ids, prompt_mask)
        for t in range(steps):
            tokens, logp = pick_tokens(logits, params, generator)
            used = t + 1
            if dense:
                out_ids[:, t], out_logp[:, t], out_mask[:, t] = tokens, logp, True
            else:
                out_ids[rows, t] = torch.where(alive, tokens, pad_id)
                out_logp[rows, t] = torch.where(alive, logp, 0.0)
                out_mask[rows, t] = alive
            done = torch.isin(tokens, eos) if eos.numel() else None
            if stops is not None:
                hit = stops.check(tokens, rows, alive, out_ids, t)
                done = hit if done is None else done | hit
            if done is not None:
                done &= alive
            if done is not None and bool(done.any()):
                finished[rows[done]] = True
                alive &= ~done
                dense = False
                n_alive = int(alive.sum())
                if n_alive == 0:
                    break
                if alive.numel() - n_alive >= compact_at * alive.numel() and t < steps - 1:
                    keep = alive.nonzero().flatten()
                    dec.select(keep)
                    rows, tokens, alive = rows[keep], tokens[keep], alive[keep]
            if t == steps - 1:
                break
            logits = dec.step(tokens)
    return used


def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Prompts,
    params: SamplingParams | None = None,
    *,
    decoder: str = "auto",
    compact_at: float = COMPACT_AT,
    _stops: StopStrings | None = None,
) -> Rollout:
    """Sample ``params.n`` responses per prompt with a KV cache; see :class:`Rollout` for the layout.

    ``decoder``: "auto" uses the fused Llama-family decoder when the model qualifies
    (:func:`~rlft.models.fused.llama_decoder.fast_path_blocker`) and the generic HF body otherwise; "hf" forces
    the generic one; "fast" demands the fused one. ``compact_at``: fraction of finished rows that
    triggers dropping them from the batch (1.0 disables compaction). The same ``params.seed`` gives
    identical rollouts for the same inputs and settings (on the same device: a GPU draws other random
    numbers than the CPU). The returned tensors are ordinary tensors (not inference-mode ones), so a
    trainer can use them inside autograd, and on the CPU wherever the model computes.
    """
    params = params or SamplingParams()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pad_id = 0 if pad_id is None else int(pad_id)
    base_ids, base_mask = encode_prompts(tokenizer, prompts, pad_id)
    group_ids = torch.arange(base_ids.shape[0]).repeat_interleave(params.n)
    prompt_ids = base_ids.repeat_interleave(params.n, dim=0)
    prompt_mask = base_mask.repeat_interleave(params.n, dim=0)
    total, steps = prompt_ids.shape[0], params.max_new_tokens
    check_context(model, prompt_ids.shape[1], steps)

    seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
    stops = _stops
    if params.stop_strings and stops is None:
        stops = StopStrings(tokenizer, params.stop_strings, _vocab_size(model))
    # Allocated outside inference mode and filled in place inside it: the results stay normal tensors.
    device = model_device(model)
    out_ids = torch.full((total, steps), pad_id, dtype=torch.long, device=device)
    out_logp = torch.zeros((total, steps), dtype=torch.float32, device=device)
    out_mask = torch.zeros((total, steps), dtype=torch.bool, device=device)
    finished = torch.zeros(total, dtype=torch.bool, device=device)
    eos = [] if params.ignore_eos else _eos_ids(model, tokenizer, params)
    used = _generate(
        make_decoder(model, params, decoder),
        prompt_ids.to(device),
        prompt_mask.to(device),
        params,
        torch.Generator(device).manual_seed(seed),
        torch.tensor(eos, dtype=torch.long, device=device),
        stops,
        compact_at,
        (out_ids, out_logp, out_mask, finished),
    )
    # the rollout lives on the CPU, as every batch does (rlft.models.device)
    response_ids, response_mask = out_ids[:, :used].cpu(), out_mask[:, :used].long().cpu()
    logprobs, finished = out_logp[:, :used].cpu(), finished.cpu()
    lengths = response_mask.sum(-1).tolist()
    texts = tokenizer.batch_decode(
        [ids[:n] for ids, n in zip(response_ids.tolist(), lengths, strict=True)], skip_special_tokens=True
    )
    if params.stop_strings:
        texts = [truncate_at_stop(text, params.stop_strings) for text in texts]
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        logprobs=logprobs,
        finished=finished,
        group_ids=group_ids,
        texts=texts,
    )
