"""Advantage actor-critic, synchronous (A2C; Mnih et al., arXiv 1602.01783): short rollouts from many
environments, one gradient step each, −Â·log π + c_v·½(V − R)² − c_e·H with `rlft.algos` parts."""

from __future__ import annotations

from typing import Any

import torch

from rlft.algos.diagnostics import explained_variance
from rlft.algos.masked import masked_whiten
from rlft.algos.policy_losses import entropy_bonus, reinforce_loss, value_loss

from .common import NonFiniteGuard, batch_advantages, set_lr
from .config import CONTROL_ALGOS, ControlConfig
from .policies import ActorCritic
from .rollout import Batch, Collector


@CONTROL_ALGOS.register("a2c")
class A2C:
    def __init__(self, policy: ActorCritic, cfg: ControlConfig, guard: NonFiniteGuard | None = None):
        self.policy, self.cfg = policy, cfg
        self.guard = guard or NonFiniteGuard(cfg.max_consecutive_skips)
        s = cfg.a2c
        self.optimizer: torch.optim.Optimizer
        if s.optimizer == "rmsprop":  # the paper's (and SB3's) choice
            self.optimizer = torch.optim.RMSprop(
                policy.parameters(), lr=cfg.lr, alpha=s.rms_alpha, eps=s.rms_eps
            )
        else:
            self.optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=cfg.adam_eps)

    def collect(self, collector: Collector) -> Batch:
        return collector.collect(self.policy, self.cfg.n_steps)

    def update(self, batch: Batch, frac: float) -> dict[str, float]:
        cfg = self.cfg
        lr = set_lr(self.optimizer, cfg.lr, frac, cfg.anneal_lr)
        adv, returns = batch_advantages(batch, cfg)
        valid = batch.flat("valid")
        logp, values, params = self.policy.evaluate(batch.flat("obs"), batch.flat("actions"))
        if cfg.norm_adv:
            adv = masked_whiten(adv, valid)
        pg_loss, _ = reinforce_loss(logp, None, adv, valid, aggregation="token-mean")
        v_loss, _ = value_loss(values, batch.flat("values"), returns, valid, clip=None)
        ent = -entropy_bonus(self.policy.entropy(params), valid)
        loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * ent
        self.guard.step_optimizer(self.optimizer, self.policy.parameters(), loss, cfg.max_grad_norm)
        return {
            "pg_loss": pg_loss.item(),
            "value_loss": v_loss.item(),
            "entropy": ent.item(),
            "lr": lr,
            "explained_variance": explained_variance(batch.flat("values"), returns, valid),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
