"""Actor-critic MLPs for classic control: a categorical or diagonal-Gaussian actor and a separate critic."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

from rlft.algos.kl import categorical_kl, gaussian_kl
from rlft.algos.policy_losses import entropy_from_logits, gaussian_entropy

Array = npt.NDArray[np.float32]  # the NumPy path runs in float32, like the torch weights it reads
# A flat parameter vector, or one of its views, as a tensor or as a float32 NumPy array
Flat = TypeVar("Flat", Tensor, Array)
ActionArray = npt.NDArray[np.int64] | Array  # action indices (discrete) or action vectors (Box)


class MLP(nn.Module):
    """tanh MLP whose weights [W₁, b₁, W₂, b₂, …] live in ONE flat parameter `flat` (views give each
    layer): the optimiser and the gradient clip then touch one tensor per network instead of one per
    layer (Adam's step costs 25 µs instead of 60), and `TanhMLPs` returns one gradient per network.
    The state dict keeps the `nn.Sequential` keys ("0.weight", "0.bias", "2.weight", … with the tanh
    layers counted) so saved policies and checkpoints look as before. The forward calls `F.linear` and
    `torch.tanh` directly; without autograd (rollouts, diagnostics) a float32 CPU input runs in NumPy
    (see `TanhMLPs` for why)."""

    def __init__(self, linears: list[nn.Linear]):
        super().__init__()
        tensors = [t.detach() for m in linears for t in (m.weight, m.bias)]
        self.shapes = [tuple(t.shape) for t in tensors]
        ends = np.cumsum([t.numel() for t in tensors]).tolist()
        self._slices = [slice(end - t.numel(), end) for end, t in zip(ends, tensors, strict=True)]
        self.flat = nn.Parameter(torch.cat([t.reshape(-1) for t in tensors]))

    if TYPE_CHECKING:  # nn.Module.__call__ returns Any; calling the net runs `forward`

        def __call__(self, x: Tensor) -> Tensor: ...

    def _split(self, flat: Flat) -> list[Flat]:
        """`flat` cut into the per-layer views [W₁, b₁, W₂, b₂, …] (works on tensors and NumPy arrays)."""
        return [flat[s].reshape(shape) for s, shape in zip(self._slices, self.shapes, strict=True)]

    def linears(self) -> list[Tensor]:
        """[W₁, b₁, W₂, b₂, …] as views of `flat` (gradients flow to `flat`)."""
        return self._split(self.flat)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled() and numpy_ready(x, self):
            return torch.from_numpy(self.numpy_forward()(x.numpy()))
        ws = self.linears()
        for i in range(0, len(ws), 2):
            x = F.linear(x, ws[i], ws[i + 1])
            if i + 2 < len(ws):
                x = torch.tanh(x)
        return x

    def numpy_forward(self) -> Callable[[Array], Array]:
        """The same function on float32 NumPy arrays, reading the current weights without copying them.
        Valid while the weights do not change (one rollout)."""
        ws = self._split(self.flat.detach().numpy())
        layers = [(ws[i].T, ws[i + 1]) for i in range(0, len(ws), 2)]
        last = len(layers) - 1

        def forward(x: Array) -> Array:
            for i, (w, b) in enumerate(layers):
                x = x @ w + b
                if i < last:
                    x = np.tanh(x, out=x)
            return x

        return forward

    def _keys(self) -> list[str]:
        # nn.Sequential numbering: Linear, Tanh, Linear, Tanh, …, Linear
        return [f"{2 * (i // 2)}.{'weight' if i % 2 == 0 else 'bias'}" for i in range(len(self.shapes))]

    def _save_to_state_dict(self, destination: dict[str, Tensor], prefix: str, keep_vars: bool) -> None:
        flat = self.flat if keep_vars else self.flat.detach()
        for key, tensor in zip(self._keys(), self._split(flat), strict=True):
            destination[prefix + key] = tensor

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Tensor],
        prefix: str,
        local_metadata: dict[str, object],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        keys = [prefix + k for k in self._keys()]
        if strict:
            unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and k not in keys)
        missing = [k for k in keys if k not in state_dict]
        if missing:
            missing_keys.extend(missing)
            return
        for key, shape in zip(keys, self.shapes, strict=True):
            if state_dict[key].shape != shape:
                error_msgs.append(
                    f"size mismatch for {key}: copying a param with shape {tuple(state_dict[key].shape)}, "
                    f"the shape in current model is {tuple(shape)}"
                )
        if not error_msgs:
            with torch.no_grad():
                self.flat.copy_(torch.cat([state_dict[k].reshape(-1) for k in keys]))


def mlp(sizes: list[int], out_gain: float) -> MLP:
    """tanh MLP with orthogonal init: gain √2 on hidden layers, `out_gain` on the head, zero biases.
    The init matters for PPO (Engstrom et al. 2020, "Implementation Matters", arXiv 2005.12729)."""
    layers: list[nn.Linear] = []
    for i in range(len(sizes) - 1):
        linear = nn.Linear(sizes[i], sizes[i + 1])
        last = i == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, out_gain if last else math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers.append(linear)
    return MLP(layers)


def numpy_ready(x: Tensor, *nets: MLP) -> bool:
    """Whether the NumPy path computes the same function: float32 CPU input and weights, and no gradient
    wanted for the input."""
    return (
        x.dtype == torch.float32
        and x.device.type == "cpu"
        and not x.requires_grad
        and all(net.flat.dtype == torch.float32 and net.flat.device.type == "cpu" for net in nets)
    )


class _TanhMLPsCtx(FunctionCtx):
    """What `TanhMLPs.forward` keeps on autograd's context for the backward (for the type checker: autograd
    passes its own context object, which takes any attribute)."""

    saved: list[tuple[MLP, list[Array], list[Array]]]  # per net: the net, its weights, each layer's input
    flats: tuple[Tensor, ...]
    versions: list[int]


class TanhMLPs(torch.autograd.Function):
    """Several tanh MLPs on one input, forward and backward by hand in NumPy:
    `TanhMLPs.apply(x, nets, *flats)` → one output per `MLP` in `nets`, whose flat parameters are `flats`.

    Why: this build's `torch.tanh` is not vectorised on CPU (≈40 µs for 256×64 against ≈3 µs in NumPy),
    and at PPO's minibatch sizes each of the ~40 torch ops of two MLPs' forward and backward costs more
    in dispatch than in arithmetic. The backward is the chain rule of z = h W⊤ + b, h' = tanh(z):
        ∂W = gᵀ h,  ∂b = Σ_rows g,  ∂h = g W,  g_z = ∂h' ⊙ (1 − h'²),
    written straight into one flat gradient per net; no gradient for x. First-order only: a double
    backward (TRPO's Fisher products) raises, so those callers use the plain `MLP.forward`.
    `tests/test_control_policies.py` checks outputs and gradients against autograd through that path."""

    @staticmethod
    def forward(ctx: _TanhMLPsCtx, x: Tensor, nets: tuple[MLP, ...], *flats: Tensor) -> tuple[Tensor, ...]:
        ctx.set_materialize_grads(False)  # an unused output (e.g. no baseline) must give no gradient
        inputs: Array = x.numpy()
        outs: list[Tensor] = []
        saved: list[tuple[MLP, list[Array], list[Array]]] = []
        for net, flat in zip(nets, flats, strict=True):
            ws = net._split(flat.detach().numpy())
            hs, h = [inputs], inputs
            for i in range(0, len(ws), 2):
                h = h @ ws[i].T
                h += ws[i + 1]
                if i + 2 < len(ws):
                    np.tanh(h, out=h)
                    hs.append(h)
            outs.append(torch.from_numpy(h))
            saved.append((net, ws, hs))
        ctx.saved = saved
        # the NumPy views bypass autograd's check that saved weights were not changed before the backward
        ctx.flats, ctx.versions = flats, [flat._version for flat in flats]
        return tuple(outs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: _TanhMLPsCtx, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        out: list[Tensor | None] = [None, None]  # x, nets
        if [flat._version for flat in ctx.flats] != ctx.versions:
            raise RuntimeError("TanhMLPs: a weight was modified in place between forward and backward")
        for grad, (net, ws, hs) in zip(grads, ctx.saved, strict=True):
            if grad is None:
                out.append(None)
                continue
            g = np.ascontiguousarray(grad.numpy())
            ones = np.ones(len(g), dtype=np.float32)
            flat_grad = np.empty(sum(w.size for w in ws), dtype=np.float32)
            dws = net._split(flat_grad)
            for layer in range(len(ws) // 2 - 1, -1, -1):
                h = hs[layer]
                np.matmul(g.T, h, out=dws[2 * layer])
                np.matmul(ones, g, out=dws[2 * layer + 1])  # Σ_rows g as a product: 2× faster than sum
                if layer:
                    g = g @ ws[2 * layer]
                    g *= 1 - h * h
            out.append(torch.from_numpy(flat_grad))
        del ctx.saved, ctx.flats
        return tuple(out)


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
        # None exactly when discrete: the methods below branch on it, which also tells the type checker
        self.log_std = None if discrete else nn.Parameter(torch.full((act_dim,), float(init_log_std)))

    def value(self, obs: Tensor) -> Tensor:
        return self.critic(obs).squeeze(-1)

    def log_prob(self, params: Tensor, actions: Tensor) -> Tensor:
        if self.log_std is None:
            return torch.log_softmax(params, -1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
        z = (actions - params) * torch.exp(-self.log_std)
        return (-0.5 * z**2 - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def entropy(self, params: Tensor) -> Tensor:
        if self.log_std is None:
            return entropy_from_logits(params)
        return gaussian_entropy(self.log_std).expand(params.shape[0])

    def kl(self, old_params: Tensor, old_log_std: Tensor | None, params: Tensor) -> Tensor:
        """Exact KL(π_old(·|s) ‖ π_θ(·|s)) per state, for PPO-penalty and TRPO."""
        if self.log_std is None:
            return categorical_kl(old_params, params)
        if old_log_std is None:
            raise ValueError("the KL of a Gaussian policy needs the old log σ")
        return gaussian_kl(
            old_params, old_log_std.expand_as(old_params), params, self.log_std.expand_as(params)
        )

    @torch.no_grad()
    def sample(self, params: Tensor, deterministic: bool = False) -> Tensor:
        """Draw actions from the distribution given by the actor's outputs (or take its mode)."""
        if self.log_std is None:
            if deterministic:
                return params.argmax(-1)
            # Gumbel-max: argmax(logits − log E), E ~ Exp(1), is a draw from softmax(logits) in three small
            # ops, about 3× cheaper than softmax + multinomial at these batch sizes
            return (params - torch.empty_like(params).exponential_().log()).argmax(-1)
        return params if deterministic else params + torch.randn_like(params) * torch.exp(self.log_std)

    def sampler(self, steps: int = 1) -> Callable[[Array], ActionArray]:
        """An action sampler for rollouts: float32 observations (N, obs_dim) → actions (N,) or (N, A).

        It runs the actor in NumPy: at rollout batch sizes (a handful of environments) a torch op costs
        ~5 µs of dispatch against ~1 µs for NumPy, and the actor is called once per environment step.
        The noise comes from torch's generator, so runs stay seeded and resumable; it is drawn for `steps`
        calls at a time (one torch call per rollout, not one per step). The log-probs the updates use are
        recomputed in torch from the stored observations (`Collector._assemble`)."""
        actor = self.actor.numpy_forward()
        noise: list[Array] = []

        def next_noise(shape: tuple[int, ...]) -> Array:
            if not noise:
                block = torch.empty(steps, *shape)
                # Gumbel noise −log E, E ~ Exp(1) (see `sample`), or standard normal noise
                block = block.exponential_().log_().neg_() if self.discrete else block.normal_()
                noise.extend(reversed(block.numpy()))
            return noise.pop()

        if self.log_std is None:

            def draw(obs: Array) -> ActionArray:
                logits = actor(obs)  # Gumbel-max, as in `sample`
                actions: npt.NDArray[np.int64] = np.argmax(logits + next_noise(logits.shape), axis=-1)
                return actions

            return draw
        std: Array = np.exp(self.log_std.detach().numpy())

        def draw_gaussian(obs: Array) -> ActionArray:
            mu = actor(obs)
            return mu + std * next_noise(mu.shape)

        return draw_gaussian

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        """Actions for a batch of observations."""
        return self.sample(self.actor(obs), deterministic)

    def evaluate(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(log π(actions|obs), V(obs), actor params) with gradients, for the first-order updates (PPO,
        A2C, REINFORCE); the entropy is `entropy(params)`, computed only when a loss needs it. Actor and
        critic run together in NumPy (`TanhMLPs`) when the input allows it, else through torch."""
        if torch.is_grad_enabled() and numpy_ready(obs, self.actor, self.critic):
            nets = (self.actor, self.critic)
            params, values = TanhMLPs.apply(obs, nets, self.actor.flat, self.critic.flat)
            return self.log_prob(params, actions), values.squeeze(-1), params
        params = self.actor(obs)
        return self.log_prob(params, actions), self.value(obs), params
