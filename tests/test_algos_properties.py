"""Property tests: GAE with λ = 1 is reward-to-go − V, and right padding never changes an advantage or loss."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlft.algos import (
    AGGREGATIONS,
    POLICY_LOSSES,
    aggregate,
    gae,
    reinforce_pp_advantages,
    reward_to_go,
    shaped_token_rewards,
)

floats = st.floats(-5, 5, allow_nan=False, width=32)


@st.composite
def batches(draw, max_b=4, max_t=6):
    b = draw(st.integers(1, max_b))
    t = draw(st.integers(1, max_t))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = (torch.arange(t) < lengths[:, None]).double()
    return (
        torch.randn(b, t, generator=g, dtype=torch.float64),
        torch.randn(b, t, generator=g, dtype=torch.float64),
        mask,
    )


@settings(max_examples=60, deadline=None)
@given(batches(), st.floats(0.5, 1.0), st.booleans())
def test_gae_lambda_one_equals_reward_to_go_minus_value(batch, gamma, with_dones):
    rewards, values, mask = batch
    dones = (torch.rand_like(rewards) < 0.3).double() if with_dones else None
    adv, returns = gae(rewards, values, gamma, 1.0, mask=mask, dones=dones)
    expected = (reward_to_go(rewards, gamma, mask=mask, dones=dones) - values) * mask
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(returns, (adv + values) * mask)


def pad(x, extra, value):
    return torch.cat([x, torch.full((x.shape[0], extra), value, dtype=x.dtype)], dim=1)


@settings(max_examples=60, deadline=None)
@given(batches(), st.integers(1, 4), floats, st.floats(0.5, 1.0), st.floats(0.0, 1.0))
def test_padding_never_changes_advantages(batch, extra, junk, gamma, lam):
    rewards, values, mask = batch
    adv, ret = gae(rewards, values, gamma, lam, mask=mask)
    adv_p, ret_p = gae(
        pad(rewards, extra, junk), pad(values, extra, junk), gamma, lam, mask=pad(mask, extra, 0.0)
    )
    torch.testing.assert_close(adv_p[:, : rewards.shape[1]], adv)
    torch.testing.assert_close(ret_p[:, : rewards.shape[1]], ret)
    assert torch.all(adv_p[:, rewards.shape[1] :] == 0)
    scores = rewards[:, 0]
    r_tok = shaped_token_rewards(scores, mask, kl=values, kl_coef=0.1)
    r_tok_p = shaped_token_rewards(scores, pad(mask, extra, 0.0), kl=pad(values, extra, junk), kl_coef=0.1)
    torch.testing.assert_close(r_tok_p[:, : rewards.shape[1]], r_tok)
    if mask.sum() > 1:
        a, _ = reinforce_pp_advantages(r_tok, mask)
        a_p, _ = reinforce_pp_advantages(r_tok_p, pad(mask, extra, 0.0))
        torch.testing.assert_close(a_p[:, : rewards.shape[1]], a)


@settings(max_examples=30, deadline=None)
@given(batches(), st.integers(1, 4), floats)
def test_padding_never_changes_any_policy_loss_or_aggregation(batch, extra, junk):
    logp, adv, mask = batch
    logp = -logp.abs()
    old = logp + 0.1 * adv.sin()
    mask_p = pad(mask, extra, 0.0)
    for name in POLICY_LOSSES:
        fn = POLICY_LOSSES.get(name)
        loss, info = fn(logp, old, adv, mask, max_len=12)
        loss_p, info_p = fn(
            pad(logp, extra, junk), pad(old, extra, -junk), pad(adv, extra, junk), mask_p, max_len=12
        )
        torch.testing.assert_close(loss_p, loss, msg=name)
        for key in info:
            torch.testing.assert_close(info_p[key], info[key], msg=f"{name}:{key}")
    for mode in AGGREGATIONS:
        torch.testing.assert_close(
            aggregate(pad(adv, extra, junk), mask_p, mode, max_len=12), aggregate(adv, mask, mode, max_len=12)
        )


def test_algos_layer_imports_only_torch():
    """The core stays pure: importing it must not pull in transformers, datasets, gymnasium or other layers."""
    import subprocess
    import sys

    code = (
        "import sys, rlft.algos; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('transformers', 'datasets', 'gymnasium')"
        " or m.startswith(('rlft.run', 'rlft.control', 'rlft.data', 'rlft.models', 'rlft.train'))]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
