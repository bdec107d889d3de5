"""Which forward path a model takes — sampling, training and reference passes — worked out in one place
and said in one line.

A model can run through four different bodies: the fused Llama decoder (:mod:`rlft.models.fused.llama_decoder`,
with or without the C kernels of :mod:`rlft.models.fused.kernels`), the fused differentiable Llama body
(:mod:`rlft.models.fused.llama_forward`, or its packed frozen twin :mod:`rlft.models.fused.frozen` for a
reference), the Hugging Face body with its ``nn.Linear`` layers on oneDNN
(``rlft.models.fused.onednn_linears``), or the plain Hugging Face body. Which one is taken depends on
the architecture (the strict checks :func:`~rlft.models.fused.llama_decoder.fast_path_blocker` and
:func:`~rlft.models.fused.llama_forward.fast_train_blocker`),
on options (``decoder``, ``forward``, ``bf16``, ``onednn_linear``, ``share_prompts``), on LoRA wrapping
(adapter layers are not plain ``nn.Linear``, so the checks refuse them) and on what the host offers (a
C compiler, torch's oneDNN ops). The choice changes speed and, in bfloat16, rounding — so a run says
which path it took: :func:`plan_for` composes the same predicates the code paths call into a
:class:`ForwardPlan`, and :func:`record_forward` keeps its one-line ``description`` as ``RUN/forward.txt``
and hands it back for the trainer's log.

The plan is the decision, not only its description: trainers build it once at start and take every
path from it — the sampler's ``decoder`` (:attr:`ForwardPlan.decoder`), the ``forward=`` of the policy's
and the reference's log-prob passes (:attr:`ForwardPlan.training_forward`,
:attr:`ForwardPlan.reference_forward`), whether the reference is packed once
(:meth:`ForwardPlan.frozen_reference`) and whether the oneDNN linears are installed
(:attr:`ForwardPlan.onednn`). The plan is composed from the same predicates the code paths check
(:func:`decoder_choice`, ``use_fused_forward``), so passing its choice on never changes a result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from rlft.run.atomic import atomic_write_text
from rlft.run.distributed import is_main, world

from .errors import ModelError
from .fused.frozen import FrozenForward
from .fused.kernels import kernels, unavailable_reason
from .fused.kernels.training import train_kernels
from .fused.llama_decoder import fast_path_blocker
from .fused.llama_forward import fast_train_blocker, use_fused_forward
from .fused.onednn import onednn_linear_available

__all__ = [
    "DECODERS",
    "TRAINERS",
    "DecoderChoice",
    "ForwardPlan",
    "decoder_choice",
    "forward_plan",
    "plan_for",
    "record_forward",
]

DECODERS = ("auto", "fast", "hf")
FORWARD_FILE = "forward.txt"


@dataclass(frozen=True)
class DecoderChoice:
    """The sampling decoder for a model: ``kind`` "fast" (:class:`~rlft.models.fused.llama_decoder.FastLlamaDecoder`
    with weights in ``weight_dtype``) or "hf" (:class:`~rlft.models.decoders.HFDecoder`, ``reason`` saying
    why not the fused one)."""

    kind: str
    weight_dtype: torch.dtype | None = None
    reason: str | None = None


def decoder_choice(model: PreTrainedModel, decoder: str = "auto", bf16: bool = False) -> DecoderChoice:
    """The decoder ``make_decoder`` builds: "auto" takes the fused Llama decoder when
    :func:`~rlft.models.fused.llama_decoder.fast_path_blocker` allows it, "hf" never does, "fast" demands it (a
    :class:`ModelError` naming the blocker otherwise). The fused decoder's weights are bfloat16 under
    ``bf16``, else the model's parameter dtype."""
    if decoder not in DECODERS:
        raise ModelError(f"unknown decoder {decoder!r} (expected one of {', '.join(DECODERS)})")
    if decoder == "hf":
        return DecoderChoice("hf", reason="decoder='hf'")
    blocker = fast_path_blocker(model)
    if blocker is None:
        weight_dtype = torch.bfloat16 if bf16 else next(model.parameters()).dtype
        return DecoderChoice("fast", weight_dtype=weight_dtype)
    if decoder == "fast":
        raise ModelError(f"decoder='fast' is not available for this model: {blocker}")
    return DecoderChoice("hf", reason=blocker)


@dataclass(frozen=True)
class ForwardPlan:
    """The paths of one run's passes, and a one-line ``description`` of them.

    ``decoder``: the sampling decoder, a valid ``decoder=`` argument ("fast" / "hf"), None when the run does
    not sample. ``training``: "fused" (the fused Llama body) or "hf" (the model's own). ``reference``: None
    (no reference pass), "packed" (the frozen fused body with weights packed once), "fused", "hf",
    "policy" (the policy with its LoRA adapters disabled) or "table" (log-probs precomputed at start).
    ``dtype``: the matmul dtype of the training and reference passes. ``onednn``: the Hugging Face bodies'
    ``nn.Linear`` layers go to oneDNN (float32). ``forward_option``: the run's ``forward`` option as given.
    """

    decoder: str | None
    training: str
    reference: str | None
    dtype: torch.dtype
    description: str
    onednn: bool = False
    forward_option: str | None = None
    sharded: bool = False  # the policy's weights are split across ranks (fsdp2): one body call per pass

    @property
    def training_forward(self) -> str:
        """The ``forward=`` of the policy's passes: "fast" for the fused body, else "hf" — except that a
        refused ``forward: fast`` stays "fast", so the first pass raises the error naming why."""
        return "fast" if self.training == "fused" or self.forward_option == "fast" else "hf"

    @property
    def reference_forward(self) -> str:
        """The ``forward=`` of the reference's passes (its own architecture may differ from the policy's)."""
        if self.reference in ("packed", "fused"):
            return "fast"
        if self.reference == "policy":
            return self.training_forward
        return "fast" if self.forward_option == "fast" else "hf"

    def frozen_reference(self, model: PreTrainedModel, bf16: bool) -> FrozenForward | None:
        """The reference's fused body with its weights packed once, when the plan says so (else None)."""
        return FrozenForward(model, bf16=bf16) if self.reference == "packed" else None


def _dtype_name(dtype: torch.dtype | None) -> str:
    return str(dtype).removeprefix("torch.")


def _fused(model: PreTrainedModel, forward: str) -> tuple[bool, str | None]:
    """``use_fused_forward(model, forward)`` and why not; a refused "fast" is reported, not raised (the
    pass that needs it raises the same error when it runs)."""
    try:
        if use_fused_forward(model, forward):
            return True, None
    except ModelError as err:
        return False, str(err)
    if forward == "hf":
        return False, "forward='hf'"
    return False, fast_train_blocker(model)


def _has_linears(model: nn.Module) -> bool:
    """Whether the transformer body has ``nn.Linear`` layers for the oneDNN route (GPT-2's are ``Conv1D``)."""
    get_decoder = getattr(model, "get_decoder", None)
    body = get_decoder() if get_decoder is not None else model
    return any(type(m) is nn.Linear for m in body.modules())


def _sampling_text(model: PreTrainedModel, decoder: str, bf16: bool) -> tuple[str, str, str | None]:
    choice = decoder_choice(model, decoder, bf16)
    if choice.kind == "hf":
        return "hf", f"Hugging Face body ({choice.reason})", choice.reason
    if choice.weight_dtype != torch.float32:  # FastLlamaDecoder.exact is False: torch ops throughout
        return "fast", f"fused Llama decoder, torch ops ({_dtype_name(choice.weight_dtype)})", None
    if kernels() is not None:
        return "fast", "fused Llama decoder, C kernels (float32)", None
    why = unavailable_reason()
    text = "fused Llama decoder, torch ops (float32; C kernels unavailable" + (f": {why})" if why else ")")
    return "fast", text, None


def _on_onednn(model: nn.Module) -> bool:
    """Whether ``model``'s linears can take oneDNN's CPU route: torch has it and the weights are on the CPU."""
    return onednn_linear_available() and next(model.parameters()).device.type == "cpu"


def _hf_body(model: nn.Module, dtype: torch.dtype, onednn: bool, frozen: bool, reason: str | None) -> str:
    """The Hugging Face body, with the oneDNN linears that
    :func:`~rlft.models.fused.onednn_linears.use_onednn_linears` installs where they apply (float32 only:
    under autocast they keep PyTorch's path)."""
    text = "Hugging Face body"
    if onednn and dtype == torch.float32 and _on_onednn(model) and _has_linears(model):
        text += ", oneDNN packed linears" if frozen else ", oneDNN linears"
    return f"{text} ({_dtype_name(dtype)}" + (f"; {reason})" if reason else ")")


def forward_plan(
    model: PreTrainedModel,
    *,
    sampling: bool = True,
    decoder: str = "auto",
    forward: str | None = "auto",
    bf16: bool = False,
    bf16_sampling: bool | None = None,
    onednn_linear: bool = False,
    share_prompts: bool = True,
    grouped: bool = False,
    reference: Any = None,
    sharded: bool = False,
) -> ForwardPlan:
    """The :class:`ForwardPlan` of a run over ``model`` (the policy, as loaded: LoRA-wrapped or not).

    ``sampling``: whether the run samples (with ``decoder``, as :func:`decoder_choice`); ``bf16_sampling``
    (default ``bf16``): bfloat16 autocast while sampling. ``forward``: the training/reference passes'
    option ("auto" | "fast" | "hf", as ``use_fused_forward``), or None for a trainer that always runs
    the model's own forward (SFT, reward models). ``bf16``: bfloat16 matmuls in those passes.
    ``onednn_linear``: route the Hugging Face bodies' ``nn.Linear`` layers to oneDNN (where torch has it).
    ``share_prompts``: completions of one prompt share its computation in the fused body. ``grouped``:
    the passes are ``grouped_logprob_sums`` (offline preference data), whose packed reference body is
    used only for the shared-prompt layout; otherwise they are ``rollout_logprobs`` (rollouts), which use
    it for either layout.

    ``reference``: None (no reference pass); a frozen reference model (packed once when its passes take
    the fused forward, :meth:`ForwardPlan.frozen_reference`); "policy" (the policy with adapters
    disabled); "table" (log-probs precomputed at start).

    ``sharded``: the policy's weights are split across ranks (``parallel: fsdp2``): its training passes
    take the model's own body (FSDP2 gathers each layer's weights around it; the fused body reads whole
    weights) in one call per pass, without shared prompts, so that every rank gathers the same layers
    as often. Sampling and evaluation gather the whole model first, so they keep their paths.
    """
    if sharded and forward == "fast":
        raise ModelError(
            "forward: fast reads whole weights, and parallel: fsdp2 shards them; use forward: auto or hf"
        )
    dtype = torch.bfloat16 if bf16 else next(model.parameters()).dtype
    dtype_name = _dtype_name(dtype)
    parts = []
    said: set[str | None] = {None}  # reasons already given: each is said once

    def once(reason: str | None) -> str | None:
        if reason in said:
            return None
        said.add(reason)
        return reason

    decoder_kind = None
    if sampling:
        bf16_sampling = bf16 if bf16_sampling is None else bf16_sampling
        decoder_kind, text, reason = _sampling_text(model, decoder, bf16_sampling)
        said.add(reason)
        parts.append(f"sampling: {text}")

    why: str | None  # why the training pass is not fused (None when it is)
    if forward is None:
        training, why = "hf", "this trainer runs the model's own forward"
    elif sharded:
        training, why = "hf", "parallel: fsdp2 shards the weights"
    else:
        fused, why = _fused(model, forward)
        training = "fused" if fused else "hf"
    if training == "fused":
        ops = "C kernels" if train_kernels() is not None else "torch ops"
        shared = ", shared prompts" if share_prompts else ""
        parts.append(f"training: fused Llama body, {ops} ({dtype_name}{shared})")
    else:
        parts.append(f"training: {_hf_body(model, dtype, onednn_linear, False, once(why))}")

    ref_kind: str | None = None
    if reference is None:
        parts.append("reference: none")
    elif reference == "table":
        ref_kind = "table"
        parts.append("reference: a table of log-probs scored at start")
    elif reference == "policy":
        ref_kind = "policy"
        parts.append(
            f"reference: policy with adapters disabled, {_hf_body(model, dtype, onednn_linear, False, None)}"
        )
    elif isinstance(reference, str):
        raise ModelError(f"reference={reference!r} (expected a model, 'policy', 'table' or None)")
    else:
        fused, why = _fused(reference, forward) if forward is not None else (False, None)
        if fused and (share_prompts or not grouped):
            ref_kind = "packed"
            parts.append(f"reference: packed frozen Llama body ({dtype_name})")
        elif fused:
            ref_kind = "fused"
            parts.append(f"reference: fused Llama body, no packing without shared prompts ({dtype_name})")
        else:
            ref_kind = "hf"
            parts.append(f"reference: {_hf_body(reference, dtype, onednn_linear, True, once(why))}")
    return ForwardPlan(
        decoder=decoder_kind,
        training=training,
        reference=ref_kind,
        dtype=dtype,
        description="forward — " + "; ".join(parts),
        onednn=onednn_linear and _on_onednn(model),
        forward_option=forward,
        sharded=sharded,
    )


def _reference_of(reference: Any) -> Any:
    """A trainer's reference as :func:`forward_plan` takes it: None, a model, "policy" or "table". The
    trainers' ``Reference`` wrappers hold a frozen ``model``, or none — then a precomputed table
    (``tables``, preference training) or the policy with adapters disabled (LoRA RL)."""
    if reference is None or isinstance(reference, (nn.Module, str)):
        return reference
    model = getattr(reference, "model", None)
    if model is not None:
        return model
    return "table" if getattr(reference, "tables", None) else "policy"


TRAINERS = ("sft", "rm", "dpo", "rl")


def plan_for(
    trainer: str, model: PreTrainedModel, cfg: Any, *, reference: Any = None, sampling: bool | None = None
) -> ForwardPlan:
    """:func:`forward_plan` with the options trainer ``trainer`` takes from its config ``cfg``:

    - "sft": the model's own forward; samples (greedy evaluation generations, ``eval_generate``) in float32;
    - "rm": the model's own forward (a scalar-head model); never samples;
    - "dpo": ``forward``, ``precision``, ``share_prompts`` over ``grouped_logprob_sums``; samples (win rate)
      in float32 when ``sampling``;
    - "rl": ``performance.forward``, ``precision`` (autocast for sampling too),
      ``performance.onednn_linear``, ``performance.share_prompts``.

    ``reference``: the trainer's reference — None, a frozen model, or its ``Reference`` wrapper (see
    :func:`_reference_of`). ``sampling`` None: the trainer's default above. Options are read by name, so a
    renamed config key fails here loudly instead of being described wrongly."""
    if trainer not in TRAINERS:
        raise ModelError(f"trainer={trainer!r} (expected one of {', '.join(TRAINERS)})")
    ref = _reference_of(reference)
    if trainer in ("sft", "rm"):
        default = trainer == "sft" and bool(cfg.eval_generate)
        return forward_plan(
            model, sampling=default if sampling is None else sampling, forward=None, reference=ref
        )
    if trainer == "dpo":
        return forward_plan(
            model,
            sampling=bool(sampling),
            forward=cfg.forward,
            bf16=cfg.bf16,
            bf16_sampling=False,
            share_prompts=cfg.share_prompts,
            grouped=True,
            reference=ref,
            sharded=_sharded(cfg),
        )
    perf = cfg.performance  # RLConfig keeps these in its performance section
    return forward_plan(
        model,
        sampling=True if sampling is None else sampling,
        forward=perf.forward,
        bf16=cfg.bf16,
        onednn_linear=perf.onednn_linear,
        share_prompts=perf.share_prompts,
        reference=ref,
        sharded=_sharded(cfg),
    )


def _sharded(cfg: Any) -> bool:
    """Whether the trainer's model is sharded across the ranks of this run (``parallel: fsdp2``)."""
    return getattr(cfg, "parallel", "ddp") == "fsdp2" and world().size > 1


def record_forward(run: Any, plan: ForwardPlan) -> str:
    """Write ``plan.description`` to ``RUN/forward.txt`` (``run``: a ``RunDir`` or a directory) and return
    it, for the trainer to print: ``say(record_forward(run, plan_for("sft", model, cfg)))``."""
    root = Path(getattr(run, "root", run))
    if is_main():  # rank 0 writes the run's files
        atomic_write_text(root / FORWARD_FILE, plan.description + "\n")
    return plan.description
