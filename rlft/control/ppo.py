"""PPO-clip and PPO-penalty on gymnasium, read top to bottom like the algorithm box
(Schulman et al., arXiv 1707.06347). The math comes from `rlft.algos`: `gae`, `masked_whiten`,
`ppo_clip_loss` / `ppo_penalty_loss`, `value_loss`, `entropy_bonus`, `PPOPenaltyKLController`."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from rlft.algos.diagnostics import explained_variance
from rlft.algos.kl import PPOPenaltyKLController
from rlft.algos.masked import masked_mean, masked_whiten
from rlft.algos.policy_losses import entropy_bonus, ppo_clip_loss, ppo_penalty_loss, value_loss

from .common import NonFiniteGuard, batch_advantages, set_lr
from .config import CONTROL_ALGOS, ControlConfig
from .policies import ActorCritic
from .rollout import Batch, Collector


class PPO:
    """`penalty=False`: clipped surrogate. `penalty=True`: r·Â − β·KL(old‖new) with β adapted per update."""

    def __init__(
        self,
        policy: ActorCritic,
        cfg: ControlConfig,
        penalty: bool = False,
        guard: NonFiniteGuard | None = None,
    ):
        self.policy, self.cfg, self.penalty = policy, cfg, penalty
        self.guard = guard or NonFiniteGuard(cfg.max_consecutive_skips)
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=cfg.adam_eps, fused=True)
        self.beta = PPOPenaltyKLController(cfg.ppo.kl_beta, cfg.ppo.kl_target) if penalty else None

    def collect(self, collector: Collector) -> Batch:
        return collector.collect(self.policy, self.cfg.n_steps)

    def update(self, batch: Batch, frac: float) -> dict[str, float]:
        cfg, p, policy = self.cfg, self.cfg.ppo, self.policy
        lr = set_lr(self.optimizer, cfg.lr, frac, cfg.anneal_lr)
        clip = p.clip * frac if p.anneal_clip else p.clip
        adv, returns = batch_advantages(batch, cfg)
        obs, actions, old_logp = batch.flat("obs"), batch.flat("actions"), batch.flat("logp")
        old_values, old_params, valid = batch.flat("values"), batch.flat("params"), batch.flat("valid")
        n = valid.numel()
        whole = p.minibatches == 1  # then shuffling and per-minibatch whitening would be wasted work
        white_adv = masked_whiten(adv, valid) if cfg.norm_adv and whole else adv
        for _epoch in range(p.epochs):
            for idx in [slice(None)] if whole else torch.randperm(n).split(n // p.minibatches):
                mask = valid[idx]
                logp, values, params = policy.evaluate(obs[idx], actions[idx])
                mb_adv = masked_whiten(adv[idx], mask) if cfg.norm_adv and not whole else white_adv[idx]
                if self.beta is not None:  # PPO-penalty
                    kl = policy.kl(old_params[idx], batch.old_log_std, params)
                    pg_loss, info = ppo_penalty_loss(
                        logp, old_logp[idx], mb_adv, mask, kl=kl, beta=self.beta.value
                    )
                else:
                    pg_loss, info = ppo_clip_loss(logp, old_logp[idx], mb_adv, mask, clip_low=clip)
                v_loss, v_info = value_loss(values, old_values[idx], returns[idx], mask, clip=p.vf_clip)
                loss = pg_loss + cfg.vf_coef * v_loss
                if cfg.ent_coef:
                    loss = loss + cfg.ent_coef * entropy_bonus(policy.entropy(params), mask)
                self.guard.step_optimizer(self.optimizer, self.policy.parameters(), loss, cfg.max_grad_norm)
            if p.target_kl is not None and info["approx_kl"] > p.target_kl:
                break
        stats = {
            "pg_loss": pg_loss.item(),
            "value_loss": v_loss.item(),
            "entropy": masked_mean(policy.entropy(params.detach()), mask).item(),
            "approx_kl": info["approx_kl"].item(),
            "clipfrac": (info["clipfrac_low"] + info["clipfrac_high"]).item(),
            "vf_clipfrac": v_info["vf_clipfrac"].item(),
            "explained_variance": explained_variance(old_values, returns, valid),
            "lr": lr,
        }
        if self.beta is not None:  # PPO-penalty
            with torch.no_grad():  # d = mean exact KL(old‖new) over the whole batch, then β ×2 / ÷2
                d = masked_mean(policy.kl(old_params, batch.old_log_std, policy.actor(obs)), valid).item()
            stats["kl_old_new"], stats["beta"] = d, self.beta.update(d)
        return stats

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "beta": None if self.beta is None else self.beta.value,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.beta is not None:
            self.beta.value = state["beta"]


CONTROL_ALGOS.register("ppo")(PPO)
CONTROL_ALGOS.register("ppo_penalty")(partial(PPO, penalty=True))
