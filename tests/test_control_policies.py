"""The control policy's fast paths compute the same function as plain torch: the NumPy forward/backward
of actor and critic (`TanhMLPs`), the flat-parameter state dict, and GAE without the validity mask."""

import pytest
import torch
from torch import nn

from rlft.algos import gae
from rlft.control import ControlConfig, preset_for
from rlft.control.common import batch_advantages
from rlft.control.envs import make_vec_env
from rlft.control.policies import ActorCritic
from rlft.control.rollout import Collector
from rlft.run import load_config


def sequential_copy(policy: ActorCritic) -> tuple[nn.Sequential, nn.Sequential]:
    """Separate plain `nn.Sequential` Linear/Tanh actor and critic with the policy's weights."""

    def build(prefix: str) -> nn.Sequential:
        state = {k[len(prefix) :]: v for k, v in policy.state_dict().items() if k.startswith(prefix)}
        n = len(state) // 2
        layers = []
        for i in range(n):
            w = state[f"{2 * i}.weight"]
            layers.append(nn.Linear(w.shape[1], w.shape[0]))
            if i < n - 1:
                layers.append(nn.Tanh())
        net = nn.Sequential(*layers)
        net.load_state_dict(state)
        return net

    return build("actor."), build("critic.")


def assert_close_to_scale(a, b, tol=1e-5):
    """Equal up to float32 rounding relative to the tensor's scale (sums of 256 terms round differently
    in NumPy's and torch's matrix products)."""
    assert a.shape == b.shape and (a - b).abs().max() <= tol * b.abs().max().clamp(min=1e-6)


def objective(logp, values, params):
    # weights that touch every output, so every gradient path is exercised
    return logp.sum() + (values**2).sum() + (params * torch.linspace(-1, 1, params.shape[-1])).sum()


@pytest.mark.parametrize(
    "discrete,act_dim,hidden",
    [(True, 3, [64, 64]), (False, 2, [64, 64]), (True, 2, [16]), (False, 1, [8, 8, 8])],
)
def test_numpy_actor_critic_matches_separate_torch_mlps(discrete, act_dim, hidden):
    torch.manual_seed(0)
    policy = ActorCritic(5, act_dim, discrete, hidden)
    actor, critic = sequential_copy(policy)
    obs = torch.randn(256, 5)
    actions = torch.randint(0, act_dim, (256,)) if discrete else torch.randn(256, act_dim)
    logp, values, params = policy.evaluate(obs, actions)
    ref_params = actor(obs)
    ref = (policy.log_prob(ref_params, actions), critic(obs).squeeze(-1), ref_params)
    for a, b in zip((logp, values, params), ref, strict=True):
        assert_close_to_scale(a, b)
    objective(logp, values, params).backward()
    objective(*ref).backward()
    for flat, net in [(policy.actor.flat, actor), (policy.critic.flat, critic)]:
        assert_close_to_scale(flat.grad, torch.cat([p.grad.reshape(-1) for p in net.parameters()]))
        # the gradient reaches (almost) every weight (the zero-initialised biases' too)
        assert (flat.grad != 0).float().mean() > 0.9
    with torch.no_grad():  # the NumPy forward used without autograd
        assert_close_to_scale(policy.actor(obs), ref[2].detach())
        assert_close_to_scale(policy.value(obs), ref[1].detach())
    with torch.enable_grad():  # and the torch forward (TRPO's path)
        assert_close_to_scale(policy.actor(obs), ref[2])


def test_unused_value_gets_no_gradient_and_double_backward_refuses():
    torch.manual_seed(1)
    policy = ActorCritic(4, 2, True, [32, 32])
    obs, actions = torch.randn(64, 4), torch.randint(0, 2, (64,))
    logp, _, _ = policy.evaluate(obs, actions)
    logp.sum().backward()
    # as with autograd through separate networks: the critic is untouched (Adam then skips it)
    assert policy.critic.flat.grad is None and policy.actor.flat.grad is not None
    logp, _, _ = policy.evaluate(obs, actions)
    (grad,) = torch.autograd.grad(logp.sum(), policy.actor.flat, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()


def test_state_dict_keeps_sequential_layout_and_round_trips():
    torch.manual_seed(2)
    policy = ActorCritic(4, 2, False, [64, 64])
    state = policy.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "log_std": (2,),
        "actor.0.weight": (64, 4),
        "actor.0.bias": (64,),
        "actor.2.weight": (64, 64),
        "actor.2.bias": (64,),
        "actor.4.weight": (2, 64),
        "actor.4.bias": (2,),
        "critic.0.weight": (64, 4),
        "critic.0.bias": (64,),
        "critic.2.weight": (64, 64),
        "critic.2.bias": (64,),
        "critic.4.weight": (1, 64),
        "critic.4.bias": (1,),
    }
    # orthogonal init per layer as before: gains √2, √2, 0.01 (actor) — W Wᵀ = g² I on the square layer
    w = state["actor.2.weight"]
    torch.testing.assert_close(w @ w.T, 2 * torch.eye(64), atol=1e-4, rtol=0)
    other = ActorCritic(4, 2, False, [64, 64])
    other.load_state_dict({k: v.clone() for k, v in state.items()})
    assert all(torch.equal(a, b) for a, b in zip(other.parameters(), policy.parameters(), strict=True))
    del state["critic.2.bias"]
    with pytest.raises(RuntimeError, match=r"Missing key.*critic\.2\.bias"):
        other.load_state_dict(state)
    state = policy.state_dict()
    state["actor.6.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match=r"Unexpected key.*actor\.6\.weight"):
        other.load_state_dict(state)
    state = policy.state_dict()
    state["actor.2.weight"] = torch.zeros(64, 32)
    with pytest.raises(RuntimeError, match=r"size mismatch for actor\.2\.weight"):
        other.load_state_dict(state)


def test_gae_without_mask_equals_masked_gae_on_rollouts():
    cfg = load_config(ControlConfig, overrides={"seed": 4}, base=preset_for("ppo", "CartPole-v1")[1])
    torch.manual_seed(4)
    envs = make_vec_env(cfg.env, cfg.num_envs, cfg.seed)
    policy = ActorCritic(4, 2, True, [16])
    collector = Collector(envs, cfg, discrete=True)
    invalid = 0
    for _ in range(12):  # a random policy ends an episode every ~20 steps: many resets per rollout
        batch = collector.collect(policy, cfg.n_steps)
        ref_adv, ref_ret = gae(
            batch.rewards.T,
            batch.values.T,
            cfg.gamma,
            cfg.lam,
            mask=batch.valid.T,
            dones=batch.dones.T,
            bootstrap=batch.last_value,
        )
        adv, ret = batch_advantages(batch, cfg)
        assert torch.equal(adv, ref_adv.T.reshape(-1)) and torch.equal(ret, ref_ret.T.reshape(-1))
        invalid += int((batch.valid == 0).sum())
    envs.close()
    assert invalid > 20


def test_weights_changed_between_forward_and_backward_are_refused():
    torch.manual_seed(3)
    policy = ActorCritic(4, 2, True, [8])
    logp, values, _ = policy.evaluate(torch.randn(16, 4), torch.randint(0, 2, (16,)))
    with torch.no_grad():
        policy.critic.flat.add_(1.0)  # e.g. an optimiser step before the backward
    with pytest.raises(RuntimeError, match="modified in place between forward and backward"):
        (logp.sum() + values.sum()).backward()
