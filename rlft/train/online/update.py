"""The optimise stage of online RL: what the loss compares against (π_old: :func:`old_policy_logprobs`;
π_ref: :class:`Reference`), the loss of a micro-batch, and μ passes of mini-batch updates.

    for epoch in 1..μ:                                   (optim.ppo_epochs)
        for each of num_minibatches shuffled mini-batches:
            N = global_normalizer(mini-batch mask)       tokens or sequences of the WHOLE mini-batch
            for each micro-batch:  backward( policy_loss(…, normalizer=N) + β·KL(…, N) − c·H(…, N)
                                             [+ vf_coef·L^VF(…, N_tokens) with a shared-backbone critic] )
            [PPO-ptx: backward( ptx.coef · NLL(one batch of ptx data) )]
            clip the gradient norm; optimiser step
            [separate critic: for each micro-batch backward( L^VF(…, N_tokens) ); clip; critic step]

Because every term is divided by the mini-batch's normaliser, not the micro-batch's, the summed micro-batch
losses equal the mini-batch loss whatever the micro-batch size (the aggregation modes of rlft.algos are
additive given a normaliser). Rows are grouped by length before being cut into micro-batches, so each
micro-batch pays only for its own longest row.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from rlft.algos import POLICY_LOSSES, aggregate, global_normalizer, kl_estimate
from rlft.models import load_causal_lm
from rlft.models.device import model_device, place
from rlft.models.forward_path import ForwardPlan
from rlft.models.fused.frozen import FrozenForward
from rlft.models.logprobs import logprobs_from_states, response_states, rollout_logprobs
from rlft.run import ConfigError
from rlft.run.distributed import all_gather_objects, sum_over_ranks
from rlft.train.common.parallel import DataParallel
from rlft.train.online.config import RLConfig, preset_value
from rlft.train.online.critic import Critic
from rlft.train.online.ptx import PtxData
from rlft.train.online.rollout_batch import RolloutBatch, by_micro_batch
from rlft.train.online.setup import peft_policy

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = [
    "POLICY_LOSS_ARGS",
    "LossSettings",
    "Reference",
    "loss_settings",
    "micro_batch_loss",
    "old_logprobs",
    "old_policy_logprobs",
    "policy_loss_args",
    "policy_update",
]


def _cfg(cfg: RLConfig, *keys: str) -> dict[str, Any]:
    """{key: cfg.key}: config keys that a policy loss takes under the same name."""
    return {key: getattr(cfg, key) for key in keys}


# Policy loss → the config values it gets (besides the data, aggregation, normaliser, L_max and
# loss_kwargs), one line per loss. dual_clip 0 means off: ppo_clip's "off" is None, while DCPO always
# dual-clips (at max(c, max_ratio)), so it gets the 0 as is.
POLICY_LOSS_ARGS: dict[str, Callable[[RLConfig], dict[str, Any]]] = {
    "ppo_clip": lambda c: {**_cfg(c, "clip_low", "clip_high"), "dual_clip": c.dual_clip or None},
    "gspo": lambda c: _cfg(c, "clip_low", "clip_high"),
    "gspo_token": lambda c: _cfg(c, "clip_low", "clip_high"),
    "sapo": lambda c: _cfg(c, "tau_pos", "tau_neg"),
    "cispo": lambda c: _cfg(c, "clip_low", "clip_high"),
    "dcpo": lambda c: _cfg(c, "clip_low", "clip_high", "max_ratio", "dual_clip"),
    "ppo_penalty": lambda c: {},
    "reinforce": lambda c: {},
}


def policy_loss_args(cfg: RLConfig) -> dict[str, Any]:
    """The config values ``cfg.policy_loss`` gets (its :data:`POLICY_LOSS_ARGS` line)."""
    name = preset_value(cfg.policy_loss, "policy_loss")
    POLICY_LOSSES.get(name)  # an unknown name fails here, listing the registered ones
    try:
        args = POLICY_LOSS_ARGS[name]
    except KeyError:
        raise ConfigError(
            f"policy loss {name!r} is registered in rlft.algos.POLICY_LOSSES but has no line in "
            "rlft.train.online.update.POLICY_LOSS_ARGS saying which config values it gets"
        ) from None
    return args(cfg)


@dataclass
class LossSettings:
    """Everything the loss of a micro-batch needs besides the data, derived once from the config."""

    policy_loss: str
    loss_kwargs: dict[str, Any]
    aggregation: str
    max_len: int  # L_max of seq-mean-token-sum-norm (the generation budget)
    kl_in_loss: bool = False
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    log_entropy: bool = True
    temperature: float = 1.0
    bf16: bool = False
    share_prompts: bool = True
    forward: str = "auto"  # auto | fast | hf: the fused Llama forward, or the model's own

    def states(self, model: torch.nn.Module, mb: RolloutBatch) -> Tensor:
        """(B, R, d) hidden states that predict ``mb``'s response tokens, with these forward options."""
        return response_states(
            model, mb.responses, share_prompts=self.share_prompts, forward=self.forward, bf16=self.bf16
        )

    def logprobs(
        self,
        model: torch.nn.Module,
        mb: RolloutBatch,
        positions: Tensor,
        frozen: FrozenForward | None = None,
        entropy: bool = False,
        entropy_grad: bool = False,
        forward: str | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """(B, R) log-probs of ``mb``'s responses at ``positions`` (and entropies when asked), with these
        forward options (``forward``: another model's path, the reference's) and the sampling temperature."""
        return rollout_logprobs(
            model,
            mb.responses,
            positions,
            temperature=self.temperature,
            bf16=self.bf16,
            share_prompts=self.share_prompts,
            forward=forward or self.forward,
            frozen=frozen,
            entropy=entropy,
            entropy_grad=entropy_grad,
        )


def loss_settings(cfg: RLConfig, plan: ForwardPlan | None = None) -> LossSettings:
    """LossSettings of a resolved RLConfig: the policy loss gets the config values of its
    :data:`POLICY_LOSS_ARGS` line, then ``loss_kwargs``, checked against the loss's own parameters. The
    policy's passes take the path the run's ``plan`` chose (no plan: each pass applies the config's
    ``forward`` option itself, as a unit test of the loss does)."""
    kwargs = policy_loss_args(cfg)
    policy_loss = preset_value(cfg.policy_loss, "policy_loss")
    params = inspect.signature(POLICY_LOSSES.get(policy_loss)).parameters
    for key, value in cfg.loss_kwargs.items():
        if key not in params:
            raise ConfigError(f"config key 'loss_kwargs': policy loss {policy_loss!r} takes no {key!r}")
        kwargs[key] = value
    return LossSettings(
        policy_loss=policy_loss,
        loss_kwargs=kwargs,
        aggregation=preset_value(cfg.aggregation, "aggregation"),
        max_len=cfg.sampling.max_new_tokens,
        kl_in_loss=cfg.kl.placement == "loss" and cfg.kl.active,
        kl_estimator=preset_value(cfg.kl.estimator, "kl.estimator"),
        entropy_coef=cfg.entropy_coef,
        temperature=cfg.sampling.temperature,
        bf16=cfg.bf16,
        share_prompts=cfg.performance.share_prompts and not (plan is not None and plan.sharded),
        forward=plan.training_forward if plan is not None else cfg.performance.forward,
    )


@dataclass
class _Sums:
    """Token-weighted sums of per-micro-batch diagnostics."""

    tokens: float = 0.0
    values: dict[str, float] = field(default_factory=dict)

    def add(self, n_tokens: float, **values: float) -> None:
        self.tokens += n_tokens
        for k, v in values.items():
            self.values[k] = self.values.get(k, 0.0) + n_tokens * v

    def means(self) -> dict[str, float]:
        return {k: v / max(self.tokens, 1.0) for k, v in self.values.items()}

    @staticmethod
    def merged(parts: list[_Sums]) -> _Sums:
        out = _Sums()
        for part in parts:
            out.add(0.0)
            out.tokens += part.tokens
            for k, v in part.values.items():
                out.values[k] = out.values.get(k, 0.0) + v
        return out


def micro_batch_loss(
    model: torch.nn.Module,
    mb: RolloutBatch,
    s: LossSettings,
    kl_coef: float,
    normalizer: float,
    critic: Critic | None = None,
    value_normalizer: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The loss of micro-batch ``mb`` as its share of a mini-batch whose normaliser is ``normalizer``:

        policy_loss(logp, old, Â, m) + β·aggregate(k(logp, ref)) − c·aggregate(H)

    ``old`` is ``mb.old_logp``, or the current log-probs detached when the policy has not moved since
    sampling (μ = 1, one mini-batch): the ratio is then exactly 1 and no extra forward pass is needed.
    With a shared-backbone ``critic`` the value head reads the same hidden states and vf_coef·L^VF joins
    the loss.
    """
    loss_mask = mb.filled("loss_mask")
    mask = loss_mask.to(torch.float32)
    want_entropy = s.entropy_coef > 0 or s.log_entropy
    entropy_grad = s.entropy_coef > 0
    states = None
    if critic is not None and critic.shared:
        states = s.states(model, mb)
        logp, ent = logprobs_from_states(
            model,
            states,
            mb.response_ids,
            loss_mask,
            temperature=s.temperature,
            entropy=want_entropy,
            entropy_grad=entropy_grad,
        )
    else:
        logp, ent = s.logprobs(model, mb, loss_mask, entropy=want_entropy, entropy_grad=entropy_grad)
    old = mb.old_logp if mb.old_logp is not None else logp.detach()
    pg_loss, diag = POLICY_LOSSES.get(s.policy_loss)(
        logp,
        old,
        mb.filled("advantages"),
        mask,
        aggregation=s.aggregation,
        normalizer=normalizer,
        max_len=s.max_len,
        **s.loss_kwargs,
    )
    loss = pg_loss
    stats = {k: float(v) for k, v in diag.items()}
    stats["pg_loss"] = float(pg_loss.detach())
    if s.kl_in_loss:
        kl = kl_estimate(s.kl_estimator, logp, mb.filled("ref_logp"))
        kl_term = aggregate(kl, mask, s.aggregation, normalizer, s.max_len)
        loss = loss + kl_coef * kl_term
        stats["kl_loss"] = float(kl_term.detach())
    if ent is not None:
        ent_term = aggregate(ent, mask, s.aggregation, normalizer, s.max_len)
        if s.entropy_coef:
            loss = loss - s.entropy_coef * ent_term  # the entropy bonus of PPO's objective
        with torch.no_grad():
            stats["entropy"] = float((ent * mask).sum() / mask.sum().clamp(min=1))
    if critic is not None and states is not None:  # the shared-backbone critic
        if value_normalizer is None:
            raise ValueError("micro_batch_loss: a shared-backbone critic needs value_normalizer")
        v_loss, v_stats = critic.loss(mb, value_normalizer, states)
        loss = loss + critic.vf_coef * v_loss
        stats.update(v_stats)
    return loss, stats


def _micro_batches(mb: RolloutBatch, size: int | None) -> list[RolloutBatch]:
    """``mb`` cut into micro-batches of ``size`` rows of similar length, padding columns trimmed."""
    if len(mb) == 0:
        return []
    if size is None or size >= len(mb):
        return [mb.trimmed()]
    order = torch.argsort(mb.filled("loss_mask").sum(-1), stable=True)
    return [mb.select(chunk).trimmed() for chunk in order.split(size)]


def _lockstep_passes(owner: Tensor, size: int | None, parallel: DataParallel) -> int:
    """The micro-batches each rank runs for a mini-batch whose rows belong to ``owner``: its own count,
    except under fsdp2, where every rank runs the busiest rank's count (0 rows: no pass)."""
    counts = [int((owner == r).sum()) for r in range(parallel.world.size)]
    passes = [0 if n == 0 else 1 if size is None else -(-n // size) for n in counts]
    return max(passes) if parallel.sharded else passes[parallel.world.rank]


# --- what the loss compares against: π_old and π_ref --------------------------------------------------------


class Reference:
    """log π_ref of rollout tokens (the KL term's other side): a frozen copy of the start model, or the
    policy with its adapters off.

    Its forward path is the run's :class:`~rlft.models.forward_path.ForwardPlan` (:meth:`follow`): the
    fused weights packed once when the plan says so, else the ``forward`` the plan chose for it."""

    def __init__(self, cfg: RLConfig, policy: torch.nn.Module):
        self.policy = policy
        self.model: PreTrainedModel | None = None
        self.frozen: FrozenForward | None = None
        self.forward: str | None = None  # None: the policy's own passes (adapters disabled)
        if cfg.lora is None or cfg.ref_model is not None:
            self.model = place(load_causal_lm(cfg.ref_model or cfg.model), model_device(policy))
            self.model.requires_grad_(False)

    def follow(self, plan: ForwardPlan, bf16: bool) -> None:
        """Take the reference's path from the run's plan (the reference never changes: pack it once)."""
        if self.model is not None:
            self.frozen = plan.frozen_reference(self.model, bf16)
            self.forward = plan.reference_forward

    def logprobs(self, batch: RolloutBatch, s: LossSettings, micro: int | None) -> torch.Tensor:
        """(B, R) log π_ref of every response token, no gradient, ``micro`` rows at a time."""
        model = self.model
        if model is not None:
            return by_micro_batch(
                batch,
                micro,
                lambda mb: s.logprobs(model, mb, mb.response_mask, self.frozen, forward=self.forward)[0],
            )
        with peft_policy(self.policy).disable_adapter():
            return by_micro_batch(batch, micro, lambda mb: s.logprobs(self.policy, mb, mb.response_mask)[0])


def old_logprobs(
    model: torch.nn.Module, batch: RolloutBatch, s: LossSettings, micro_batch_size: int | None
) -> Tensor:
    """log π_old at the loss positions, recomputed with the rollout weights (one no-grad pass)."""
    return by_micro_batch(
        batch, micro_batch_size, lambda mb: s.logprobs(model, mb, mb.filled("loss_mask"))[0]
    )


def old_policy_logprobs(
    cfg: RLConfig, model: torch.nn.Module, batch: RolloutBatch, s: LossSettings
) -> Tensor | None:
    """π_old of the ratio r = π_θ / π_old, chosen once per step:

    - None — one epoch of one mini-batch: the policy has not moved when its loss is taken, so the loss
      uses its own log-probs detached (:func:`micro_batch_loss`);
    - recomputed with the rollout weights (:func:`old_logprobs`) when ``performance.recompute_old_logp`` is set or under
      bf16, whose sampling and training kernels round differently;
    - otherwise the sampler's own log-probs, which the fused sampler computes in the same precision."""
    if cfg.optim.ppo_epochs == 1 and cfg.num_minibatches == 1:
        return None
    if cfg.performance.recompute_old_logp or cfg.bf16:
        return old_logprobs(model, batch, s, cfg.optim.micro_batch_size)
    return batch.sampler_logp


def policy_update(
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    params: list[Tensor],
    batch: RolloutBatch,
    s: LossSettings,
    *,
    kl_coef: float,
    ppo_epochs: int,
    num_minibatches: int,
    micro_batch_size: int | None,
    max_grad_norm: float,
    generator: torch.Generator,
    critic: Critic | None = None,
    ptx: PtxData | None = None,
    apply_step: Callable[..., bool] | None = None,
    owner: Tensor | None = None,
    parallel: DataParallel | None = None,
) -> dict[str, float]:
    """μ passes over ``batch`` in ``num_minibatches`` shuffled mini-batches, one optimiser step each.
    Rows without loss tokens (masked truncations, invalid rewards) are left out. Returns mean diagnostics.

    ``apply_step(optimizer, loss=…, grad_norm=…)`` takes each optimiser step (the trainer's non-finite
    policy, :meth:`rlft.train.common.run_control.RunControl.step_optimizer`: a NaN/inf loss or gradient skips
    it); by default ``optimizer.step()``.

    ``critic`` (:class:`~rlft.train.online.critic.Critic`): its value loss on the same mini-batches,
    token-mean, with its own optimiser step. ``ptx`` (:class:`~rlft.train.online.ptx.PtxData`):
    + ptx.coef·NLL of one ptx batch in every actor step.

    On several ranks ``batch`` is the whole step's rollout on every rank and ``owner`` the rank that
    trains on each row: the mini-batches are drawn from the whole batch (the same on every rank, as on one
    process), each rank runs the micro-batches of its rows of a mini-batch with that mini-batch's
    normalisers, and ``parallel`` sums the gradients over ranks before the clip and the step. Under fsdp2
    every rank runs as many micro-batches as the busiest one (zero-weight passes on the others), since each
    forward and backward gathers and scatters the sharded weights with every rank."""
    parallel = parallel or DataParallel()
    rank, device = parallel.world.rank, model_device(model)
    owner = owner if owner is not None else torch.zeros(len(batch), dtype=torch.long)
    rows = (batch.filled("loss_mask").sum(-1) > 0).nonzero().flatten()
    if rows.numel() == 0:
        return {}
    sums, critic_sums, grad_norms, critic_norms = _Sums(), _Sums(), [], []
    totals: dict[str, float] = {}  # loss terms summed over micro-batches = the mini-batch's loss terms
    n_steps = 0
    for _ in range(ppo_epochs):
        shuffled = rows[torch.randperm(rows.numel(), generator=generator)]
        for mb_rows in shuffled.tensor_split(min(num_minibatches, rows.numel())):
            mb = batch.select(mb_rows)  # the whole mini-batch: its normalisers
            mb_mask = mb.filled("loss_mask").to(torch.float32)
            normalizer = global_normalizer(mb_mask, s.aggregation)
            v_normalizer = global_normalizer(mb_mask, "token-mean")
            mine = mb.select((owner[mb_rows] == rank).nonzero().flatten())
            micros = [m.to(device) for m in _micro_batches(mine, micro_batch_size)]
            idle = _lockstep_passes(owner[mb_rows], micro_batch_size, parallel) - len(micros)
            optimizer.zero_grad(set_to_none=True)
            if critic is not None:
                critic.zero_grad()
            mb_loss = 0.0
            for micro in micros:
                loss, stats = parallel.run(
                    model, micro_batch_loss, model, micro, s, kl_coef, normalizer, critic, v_normalizer
                )
                loss.backward()
                stats["loss"] = float(loss.detach())
                mb_loss += stats["loss"]
                for key in ("loss", "pg_loss", "kl_loss", "value_loss"):
                    if key in stats:
                        totals[key] = totals.get(key, 0.0) + stats.pop(key)
                sums.add(float(micro.filled("loss_mask").sum()), **stats)
            for _ in range(idle):  # fsdp2: take part in the busiest rank's passes, contributing nothing
                idle_mb = mb.select([0]).trimmed().to(device)
                loss, _ = parallel.run(model, micro_batch_loss, model, idle_mb, s, kl_coef, 1.0, critic, 1.0)
                (loss * 0.0).backward()
            if ptx is not None:
                ptx_loss, nll = parallel.run(model, ptx.loss, model)
                ptx_loss.backward()
                totals["ptx_nll"] = totals.get("ptx_nll", 0.0) + nll
                mb_loss += float(ptx_loss.detach())
            parallel.finish_gradients(params)
            grad_norm = parallel.norm(torch.nn.utils.clip_grad_norm_(params, max_grad_norm or float("inf")))
            (mb_loss,) = sum_over_ranks(mb_loss)  # every rank skips a non-finite step alike
            if apply_step is None:
                optimizer.step()
            else:
                apply_step(optimizer, loss=mb_loss, grad_norm=grad_norm)
            parallel.after_step()
            grad_norms.append(float(grad_norm))
            if critic is not None:
                if not critic.shared:
                    for micro in micros:
                        v_loss, v_stats = critic.loss(micro, v_normalizer)
                        v_loss.backward()
                        totals["value_loss"] = totals.get("value_loss", 0.0) + v_stats.pop("value_loss")
                        critic_sums.add(float(micro.filled("loss_mask").sum()), **v_stats)
                critic_norms.append(critic.step(apply_step))
            n_steps += 1
    if parallel.active:  # every rank's share of the sums: the logged means are the whole batch's
        parts = all_gather_objects((sums, critic_sums, totals))
        sums, critic_sums = _Sums.merged([p[0] for p in parts]), _Sums.merged([p[1] for p in parts])
        totals = {}
        for _, _, part in parts:
            for key, value in part.items():
                totals[key] = totals.get(key, 0.0) + value
    out = {**sums.means(), **critic_sums.means()}
    out.update({k: v / n_steps for k, v in totals.items()})
    out["grad_norm"] = sum(grad_norms) / n_steps
    if critic_norms:
        out["critic_grad_norm"] = sum(critic_norms) / n_steps
    out["optimizer_steps"] = n_steps
    return out
