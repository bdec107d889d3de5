"""REINFORCE with reward-to-go and a baseline (Williams 1992): one whole episode per environment per batch,
ĝ = (1/N) Σ_n Σ_t ∇log π(a_t|s_t)·(G_t − b), i.e. `reinforce_loss` with seq-mean-token-sum.

Baselines: "moving_average" (Williams' reinforcement comparison, an EMA of episode returns, updated after
the advantages are computed), "learned" (a value network fitted to G_t; time-limit truncations are then
bootstrapped with V), or "none".
"""

from __future__ import annotations

from typing import Any

import torch

from rlft.algos.advantages import MovingAverageBaseline, reward_to_go
from rlft.algos.diagnostics import explained_variance
from rlft.algos.masked import masked_whiten
from rlft.algos.policy_losses import reinforce_loss, value_loss

from .common import NonFiniteGuard, set_lr
from .config import CONTROL_ALGOS, ControlConfig
from .policies import ActorCritic
from .rollout import Batch, Collector


@CONTROL_ALGOS.register("reinforce")
class Reinforce:
    def __init__(self, policy: ActorCritic, cfg: ControlConfig, guard: NonFiniteGuard | None = None):
        self.policy, self.cfg = policy, cfg
        self.guard = guard or NonFiniteGuard(cfg.max_consecutive_skips)
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
        self.moving_average = MovingAverageBaseline(alpha=cfg.reinforce.baseline_alpha)

    def collect(self, collector: Collector) -> Batch:
        return collector.collect_episodes(self.policy, bootstrap=self.cfg.reinforce.baseline == "learned")

    def update(self, batch: Batch, frac: float) -> dict[str, float]:
        cfg, kind = self.cfg, self.cfg.reinforce.baseline
        lr = set_lr(self.optimizer, cfg.lr, frac, cfg.anneal_lr)
        mask = batch.valid.T  # (envs, time): one episode per row
        returns = reward_to_go(batch.rewards.T, cfg.gamma, mask=mask, dones=batch.dones.T)
        logp, values, params = self.policy.evaluate(batch.flat("obs"), batch.flat("actions"))
        shape = batch.valid.shape
        logp, values = logp.view(shape).T, values.view(shape).T
        if kind == "learned":
            adv = returns - values.detach()
        elif kind == "moving_average":
            adv = self.moving_average.advantages(returns)
            # after the advantages: b must not see a_t
            baseline = self.moving_average.update(float(returns[:, 0].mean()))
        else:
            adv = returns
        if cfg.norm_adv:
            adv = masked_whiten(adv, mask)
        pg_loss, _ = reinforce_loss(logp, None, adv * mask, mask, aggregation="seq-mean-token-sum")
        loss = pg_loss - cfg.ent_coef * (self.policy.entropy(params).view(shape).T * mask).sum() / mask.sum()
        stats = {"pg_loss": pg_loss.item(), "lr": lr}
        if kind == "learned":
            v_loss, _ = value_loss(values, values.detach(), returns, mask, clip=None)
            loss = loss + cfg.vf_coef * v_loss
            stats["value_loss"] = v_loss.item()
            stats["explained_variance"] = explained_variance(values.detach(), returns, mask)
        elif kind == "moving_average":
            stats["baseline"] = float(baseline)
        self.guard.step_optimizer(self.optimizer, self.policy.parameters(), loss, cfg.max_grad_norm)
        return stats

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "baseline": self.moving_average.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.moving_average.value = state["baseline"]
