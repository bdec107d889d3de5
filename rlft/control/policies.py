"""Actor-critic MLPs for classic control: a categorical or diagonal-Gaussian actor and a separate critic."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rlft.algos import categorical_kl, entropy_from_logits, gaussian_entropy, gaussian_kl


class MLP(nn.Sequential):
    """Linear/tanh stack whose forward calls `F.linear` and `torch.tanh` directly: the per-layer
    `Module.__call__` dispatch costs about as much as the arithmetic of these tiny layers. Same parameters
    and state-dict keys as the `nn.Sequential` it subclasses."""

    def forward(self, x: Tensor) -> Tensor:
        for layer in self:
            x = F.linear(x, layer.weight, layer.bias) if isinstance(layer, nn.Linear) else torch.tanh(x)
        return x

    def numpy_forward(self) -> Callable[[np.ndarray], np.ndarray]:
        """The same function on float32 NumPy arrays, reading the current weights without copying them.
        Valid while the weights do not change (one rollout)."""
        layers = [
            (m.weight.detach().numpy().T, m.bias.detach().numpy()) for m in self if isinstance(m, nn.Linear)
        ]
        last = len(layers) - 1

        def forward(x: np.ndarray) -> np.ndarray:
            for i, (w, b) in enumerate(layers):
                x = x @ w + b
                if i < last:
                    x = np.tanh(x)
            return x

        return forward


def mlp(sizes: list[int], out_gain: float) -> MLP:
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
    return MLP(*layers)


class ActorCritic(nn.Module):
    """π(a|s) and V(s) as two separate MLPs (no shared trunk: on control tasks sharing hurts, SB3/CleanRL).

    Discrete actions: categorical over logits. Box actions: N(μ(s), σ) with a state-independent log σ.
    The actor's raw output ("params": logits or μ) is what the rollout stores for exact KLs later.
    """

    def __init__(
        self, obs_dim: int, act_dim: int, discrete: bool, hidden: list[int], init_log_std: float = 0.0
    ):
        super().__init__()
        self.discrete = discrete
        self.actor = mlp([obs_dim, *hidden, act_dim], out_gain=0.01)
        self.critic = mlp([obs_dim, *hidden, 1], out_gain=1.0)
        self.log_std = None if discrete else nn.Parameter(torch.full((act_dim,), float(init_log_std)))

    def value(self, obs: Tensor) -> Tensor:
        return self.critic(obs).squeeze(-1)

    def log_prob(self, params: Tensor, actions: Tensor) -> Tensor:
        if self.discrete:
            return torch.log_softmax(params, -1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
        z = (actions - params) * torch.exp(-self.log_std)
        return (-0.5 * z**2 - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def entropy(self, params: Tensor) -> Tensor:
        if self.discrete:
            return entropy_from_logits(params)
        return gaussian_entropy(self.log_std).expand(params.shape[0])

    def kl(self, old_params: Tensor, old_log_std: Tensor | None, params: Tensor) -> Tensor:
        """Exact KL(π_old(·|s) ‖ π_θ(·|s)) per state, for PPO-penalty and TRPO."""
        if self.discrete:
            return categorical_kl(old_params, params)
        return gaussian_kl(
            old_params, old_log_std.expand_as(old_params), params, self.log_std.expand_as(params)
        )

    @torch.no_grad()
    def sample(self, params: Tensor, deterministic: bool = False) -> Tensor:
        """Draw actions from the distribution given by the actor's outputs (or take its mode)."""
        if self.discrete:
            if deterministic:
                return params.argmax(-1)
            # Gumbel-max: argmax(logits − log E), E ~ Exp(1), is a draw from softmax(logits) in three small
            # ops, about 3× cheaper than softmax + multinomial at these batch sizes
            return (params - torch.empty_like(params).exponential_().log()).argmax(-1)
        return params if deterministic else params + torch.randn_like(params) * torch.exp(self.log_std)

    def sampler(self) -> Callable[[np.ndarray], np.ndarray]:
        """An action sampler for rollouts: float32 observations (N, obs_dim) → actions (N,) or (N, A).

        It runs the actor in NumPy: at rollout batch sizes (a handful of environments) a torch op costs
        ~5 µs of dispatch against ~1 µs for NumPy, and the actor is called once per environment step.
        The noise comes from torch's generator, so runs stay seeded and resumable. The log-probs the
        updates use are recomputed in torch from the stored observations (`Collector._assemble`)."""
        actor = self.actor.numpy_forward()
        if self.discrete:

            def draw(obs: np.ndarray) -> np.ndarray:
                logits = actor(obs)  # Gumbel-max, as in `sample`
                return np.argmax(logits - torch.empty(logits.shape).exponential_().log_().numpy(), axis=-1)

            return draw
        std = np.exp(self.log_std.detach().numpy())

        def draw_gaussian(obs: np.ndarray) -> np.ndarray:
            mu = actor(obs)
            return mu + std * torch.randn(mu.shape).numpy()

        return draw_gaussian

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        """Actions for a batch of observations."""
        return self.sample(self.actor(obs), deterministic)

    def evaluate(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(log π(actions|obs), V(obs), actor params) with gradients, for the updates; the entropy is
        `entropy(params)`, computed only when a loss needs it."""
        params = self.actor(obs)
        return self.log_prob(params, actions), self.value(obs), params
