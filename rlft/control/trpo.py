"""Trust Region Policy Optimization (Schulman et al., arXiv 1502.05477) with a GAE critic.

Policy step: g = ∇L at θ_old; x ≈ F⁻¹g by conjugate gradient on Fisher-vector products
Fv = ∇(∇D̄_KL·v) + damping·v; full step scaled so ½ΔᵀFΔ = δ; backtracking line search on the surrogate and
the exact KL(π_old‖π_θ). The critic is fitted separately with Adam on ½(V − R)².
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from rlft.algos.diagnostics import explained_variance
from rlft.algos.masked import masked_mean, masked_whiten
from rlft.algos.policy_losses import value_loss
from rlft.algos.trust_region import backtracking_line_search, conjugate_gradient, trust_region_step

from .common import NonFiniteGuard, batch_advantages, set_lr
from .config import CONTROL_ALGOS, ControlConfig
from .policies import ActorCritic
from .rollout import Batch, Collector


def _flat_grad(y: Tensor, params: Sequence[Tensor], create_graph: bool = False) -> Tensor:
    grads = torch.autograd.grad(y, params, create_graph=create_graph)
    return torch.cat([g.reshape(-1) for g in grads])


@CONTROL_ALGOS.register("trpo")
class TRPO:
    def __init__(self, policy: ActorCritic, cfg: ControlConfig, guard: NonFiniteGuard | None = None):
        self.policy, self.cfg = policy, cfg
        self.guard = guard or NonFiniteGuard(cfg.max_consecutive_skips)
        self.actor_params = list(policy.actor.parameters()) + (
            [] if policy.log_std is None else [policy.log_std]
        )
        self.critic_lr = cfg.critic_lr or cfg.lr
        self.critic_optimizer = torch.optim.Adam(
            policy.critic.parameters(), lr=self.critic_lr, eps=cfg.adam_eps
        )

    def collect(self, collector: Collector) -> Batch:
        return collector.collect(self.policy, self.cfg.n_steps)

    def _set_actor(self, flat: Tensor) -> None:
        offset = 0
        with torch.no_grad():
            for p in self.actor_params:
                p.copy_(flat[offset : offset + p.numel()].view_as(p))
                offset += p.numel()

    def update(self, batch: Batch, frac: float) -> dict[str, float]:
        cfg, t, policy = self.cfg, self.cfg.trpo, self.policy
        adv, returns = batch_advantages(batch, cfg)
        obs, actions, valid = batch.flat("obs"), batch.flat("actions"), batch.flat("valid")
        old_logp, old_params = batch.flat("logp"), batch.flat("params")
        if cfg.norm_adv:
            adv = masked_whiten(adv, valid)

        def surrogate() -> Tensor:  # L(θ) = E[π_θ/π_old · Â]
            ratio = torch.exp(policy.log_prob(policy.actor(obs), actions) - old_logp)
            return masked_mean(ratio * adv, valid)

        n_fisher = max(1, int(valid.numel() * t.fisher_fraction))
        f_obs, f_params, f_valid = obs[:n_fisher], old_params[:n_fisher], valid[:n_fisher]

        def mean_kl(o: Tensor = obs, p: Tensor = old_params, m: Tensor = valid) -> Tensor:
            return masked_mean(policy.kl(p, batch.old_log_std, policy.actor(o)), m)

        def fvp(v: Tensor) -> Tensor:
            grad_kl = _flat_grad(mean_kl(f_obs, f_params, f_valid), self.actor_params, create_graph=True)
            return _flat_grad(grad_kl @ v, self.actor_params) + t.cg_damping * v

        loss_before = surrogate()
        g = _flat_grad(loss_before, self.actor_params)
        theta_old = torch.cat([p.detach().reshape(-1) for p in self.actor_params])
        if self.guard.allows(loss=loss_before, grad_norm=torch.linalg.vector_norm(g)):
            x = conjugate_gradient(fvp, g, t.cg_iters)
            full_step = trust_region_step(x, fvp(x), t.max_kl)
        else:  # a zero step: the line search then keeps the actor as it is
            full_step = torch.zeros_like(theta_old)

        def evaluate(step: Tensor) -> tuple[float, float]:
            self._set_actor(theta_old + step)
            with torch.no_grad():
                return surrogate().item(), mean_kl().item()

        step, backtracks = backtracking_line_search(
            evaluate, full_step, t.max_kl, loss_before.item(), t.backtrack_coef, t.backtrack_iters
        )
        self._set_actor(theta_old + step)
        with torch.no_grad():
            kl_after = mean_kl().item()

        lr = set_lr(self.critic_optimizer, self.critic_lr, frac, cfg.anneal_lr)
        n = valid.numel()
        size = max(1, n // t.critic_minibatches)
        old_values = batch.flat("values")
        for _ in range(t.critic_epochs):
            order = torch.randperm(n)
            for start in range(0, n, size):
                idx = order[start : start + size]
                v_loss, _ = value_loss(
                    policy.value(obs[idx]), old_values[idx], returns[idx], valid[idx], clip=None
                )
                self.guard.step_optimizer(
                    self.critic_optimizer, self.policy.critic.parameters(), v_loss, cfg.max_grad_norm
                )
        return {
            "surrogate_gain": evaluate_gain(loss_before.item(), surrogate, step),
            "kl_old_new": kl_after,
            "backtracks": backtracks,
            "value_loss": v_loss.item(),
            "entropy": masked_mean(policy.entropy(policy.actor(obs)), valid).item(),
            "explained_variance": explained_variance(old_values, returns, valid),
            "lr": lr,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"critic_optimizer": self.critic_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])


def evaluate_gain(before: float, surrogate: Callable[[], Tensor], step: Tensor) -> float:
    """Improvement of the surrogate achieved by the accepted step (0 when the line search failed)."""
    if not bool(step.abs().sum()):
        return 0.0
    with torch.no_grad():
        after: float = surrogate().item()
    return after - before
