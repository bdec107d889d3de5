"""Actor-critic MLPs for classic control: a categorical or diagonal-Gaussian actor and a separate critic."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rlft.algos import entropy_from_logits, gaussian_entropy


def mlp(sizes: list[int], out_gain: float) -> nn.Sequential:
    """tanh MLP with orthogonal init: gain √2 on hidden layers, `out_gain` on the head, zero biases.
    The init matters for PPO (Engstrom et al. 2020, "Implementation Matters", arXiv 2005.12729)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        linear = nn.Linear(sizes[i], sizes[i + 1])
        last = i == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, out_gain if last else math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    """π(a|s) and V(s) as two separate MLPs (no shared trunk: on control tasks sharing hurts, SB3/CleanRL).

    Discrete actions: categorical over logits. Box actions: N(μ(s), σ) with a state-independent log σ.
    """

    def __init__(
        self, obs_dim: int, act_dim: int, discrete: bool, hidden: list[int], init_log_std: float = 0.0
    ):
        super().__init__()
        self.discrete = discrete
        self.actor = mlp([obs_dim, *hidden, act_dim], out_gain=0.01)
        self.critic = mlp([obs_dim, *hidden, 1], out_gain=1.0)
        self.log_std = None if discrete else nn.Parameter(torch.full((act_dim,), init_log_std))

    def value(self, obs: Tensor) -> Tensor:
        return self.critic(obs).squeeze(-1)

    def _log_prob(self, out: Tensor, actions: Tensor) -> Tensor:
        if self.discrete:
            return torch.log_softmax(out, -1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
        z = (actions - out) * torch.exp(-self.log_std)
        return (-0.5 * z**2 - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Sample (or take the mode of) π(·|obs); returns (actions, log-probs, values)."""
        out = self.actor(obs)
        if self.discrete:
            actions = (
                out.argmax(-1) if deterministic else torch.multinomial(torch.softmax(out, -1), 1).squeeze(-1)
            )
        else:
            actions = out if deterministic else out + torch.randn_like(out) * torch.exp(self.log_std)
        return actions, self._log_prob(out, actions), self.value(obs)

    def evaluate(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(log π(actions|obs), entropy, V(obs)) with gradients, for the update epochs."""
        out = self.actor(obs)
        if self.discrete:
            entropy = entropy_from_logits(out)
        else:
            entropy = gaussian_entropy(self.log_std).expand(out.shape[0])
        return self._log_prob(out, actions), entropy, self.value(obs)
