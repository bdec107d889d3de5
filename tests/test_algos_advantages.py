"""Advantage estimators against the worked examples of docs/algorithms.md §Advantages (numbers copied here)."""

import pytest
import torch
from numeric import close

from rlft.algos import (
    ADVANTAGES,
    MovingAverageBaseline,
    SASState,
    dcpo_sas_advantages,
    gae,
    group_normalized_advantages,
    masked_whiten,
    moving_average_advantages,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    remax_advantages,
    reward_to_go,
    rloo_advantages,
    shaped_token_rewards,
)
from rlft.algos.masked import masked_var

T = torch.tensor


def test_reward_to_go_example():
    close(reward_to_go(T([[0.0, 0.0, 1.0]]), gamma=0.9), [[0.81, 0.9, 1.0]])


def test_reward_to_go_episode_boundary_and_bootstrap():
    r = T([[1.0, 1.0, 1.0, 1.0]])
    dones = T([[0.0, 1.0, 0.0, 0.0]])
    out = reward_to_go(r, 0.5, dones=dones, bootstrap=T([2.0]))
    # episode 1: steps 0-1; episode 2: steps 2-3 then bootstrap 2.0
    close(out, [[1.5, 1.0, 1.0 + 0.5 * 2.0, 1.0 + 0.5 * 2.0]])


def test_reinforce_example_with_moving_average_baseline():
    g = reward_to_go(T([[0.0, 0.0, 1.0]]), gamma=0.9)
    baseline = MovingAverageBaseline(alpha=0.9, value=0.5)
    close(baseline.advantages(g), [[0.31, 0.4, 0.5]])
    close(baseline.update(0.81), 0.531)


def test_moving_average_first_update_takes_batch_mean():
    b = MovingAverageBaseline()
    close(b.advantages(T([1.0])), [1.0])
    assert b.update(2.0) == 2.0


def test_gae_example():
    adv, ret = gae(T([[0.0, 0.0, 1.0]]), T([[0.5, 0.6, 0.7]]), gamma=1.0, lam=0.95)
    close(adv, [[0.46575, 0.385, 0.3]])
    close(ret, [[0.96575, 0.985, 1.0]])


def test_gae_rlhf_example_with_shaped_rewards():
    logp, ref = T([[-1.0, -2.0, -0.5]]), T([[-1.2, -1.5, -0.5]])
    mask = torch.ones(1, 3)
    rewards = shaped_token_rewards(T([7.0]), mask, kl=logp - ref, kl_coef=0.1, score_clip=5.0)
    close(rewards, [[-0.02, 0.05, 5.0]])
    adv, _ = gae(rewards, torch.zeros(1, 3), 1.0, 0.95, mask=mask)
    close(adv, [[4.54, 4.8, 5.0]])


def test_gae_lambda_zero_is_td_error():
    r, v = T([[1.0, 2.0, 3.0]]), T([[0.5, 0.25, 1.0]])
    adv, _ = gae(r, v, gamma=0.9, lam=0.0)
    close(adv, [[1.0 + 0.9 * 0.25 - 0.5, 2.0 + 0.9 * 1.0 - 0.25, 3.0 - 1.0]])


def test_gae_dones_cut_bootstrap_and_carry():
    r = T([[1.0, 1.0, 1.0]])
    v = T([[0.5, 0.5, 0.5]])
    adv, _ = gae(r, v, 1.0, 1.0, dones=T([[0.0, 1.0, 0.0]]), bootstrap=T([10.0]))
    close(adv, [[1.5, 0.5, 10.5]])


def test_gae_skips_masked_holes():
    # A hole (e.g. tool output) in the middle is invisible: same result as the sequence without it.
    r, v = T([[0.0, 9.0, 0.0, 1.0]]), T([[0.5, 9.0, 0.6, 0.7]])
    mask = T([[1.0, 0.0, 1.0, 1.0]])
    adv, _ = gae(r, v, 1.0, 0.95, mask=mask)
    ref, _ = gae(T([[0.0, 0.0, 1.0]]), T([[0.5, 0.6, 0.7]]), 1.0, 0.95)
    close(adv[:, [0, 2, 3]], ref)
    assert adv[0, 1] == 0


def test_grpo_examples():
    r, g = T([1.0, 0.0, 0.0, 1.0]), T([0, 0, 0, 0])
    close(group_normalized_advantages(r, g, eps=0.0), [0.866025, -0.866025, -0.866025, 0.866025])
    close(group_normalized_advantages(r, g, eps=1e-6), [0.866024, -0.866024, -0.866024, 0.866024])
    close(group_normalized_advantages(r, g, eps=1e-4), [0.865875, -0.865875, -0.865875, 0.865875])
    close(group_normalized_advantages(r, g, unbiased=False, eps=0.0), [1.0, -1.0, -1.0, 1.0])
    close(group_normalized_advantages(r, g, scale="none"), [0.5, -0.5, -0.5, 0.5])
    close(group_normalized_advantages(T([1.0, 1, 1, 1]), g), [0.0, 0, 0, 0])


def test_grpo_groups_batch_scale_and_singletons():
    r = T([1.0, 0.0, 3.0, 5.0, 7.0])
    g = T([0, 0, 1, 1, 2])
    out = group_normalized_advantages(r, g, scale="batch", eps=0.0)
    std = r.std()
    close(out[:4], torch.stack([0.5 / std, -0.5 / std, -1 / std, 1 / std]))
    close(out[4], 7.0 / std)  # singleton: mean 0 (verl)
    close(group_normalized_advantages(T([2.0]), T([0])), [2.0 / (1 + 1e-6)])
    with pytest.raises(ValueError, match="scale must be"):
        group_normalized_advantages(r, g, scale="rows")


def test_rloo_example_and_singleton_error():
    close(rloo_advantages(T([1.0, 0, 0, 1]), T([0, 0, 0, 0])), [2 / 3, -2 / 3, -2 / 3, 2 / 3])
    with pytest.raises(ValueError, match="at least 2 samples"):
        rloo_advantages(T([1.0, 0.0, 2.0]), T([0, 0, 1]))


def test_remax_example():
    close(remax_advantages(T([0.8]), T([0.5])), [0.3])


def test_reinforce_pp_kl_example():
    mask = torch.ones(1, 3)
    rewards = shaped_token_rewards(T([1.0]), mask, kl=T([[0.2, -0.1, 0.3]]), kl_coef=0.1)
    close(rewards, [[-0.02, 0.01, 0.97]])
    adv, returns = reinforce_pp_advantages(rewards, mask)
    close(returns, [[0.96, 0.98, 0.97]])
    close(adv, masked_whiten(returns, mask))


def test_reinforce_pp_baseline_example():
    r, g, mask = T([1.0, 0, 0, 1]), T([0, 0, 0, 0]), torch.ones(4, 1)
    adv, _ = reinforce_pp_baseline_advantages(r, g, mask, eps=0.0)
    close(adv[:, 0], [0.866025, -0.866025, -0.866025, 0.866025])
    adv, _ = reinforce_pp_baseline_advantages(r, g, mask, unbiased=False, eps=0.0)
    close(adv[:, 0], [1.0, -1, -1, 1])


def test_reinforce_pp_baseline_singleton_group_scores_zero():
    # rlft centres a group of one on itself (verl would keep its raw score 5 and whiten it)
    r, g, mask = T([5.0, 1.0, 0.0]), T([7, 0, 0]), torch.ones(3, 1)
    adv, returns = reinforce_pp_baseline_advantages(r, g, mask, eps=0.0)
    close(returns[:, 0], [0.0, 0.5, -0.5])
    close(adv[:, 0], [0.0, 1.0, -1.0])
    adv, returns = reinforce_pp_baseline_advantages(T([5.0, 2.0]), T([0, 1]), torch.ones(2, 3))
    assert torch.equal(returns, torch.zeros(2, 3)) and torch.equal(adv, torch.zeros(2, 3))


def test_shaped_rewards_put_score_on_last_valid_token():
    mask = T([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    close(shaped_token_rewards(T([2.0, 3.0]), mask), [[0.0, 2.0, 0.0], [3.0, 0.0, 0.0]])


def test_masked_whiten_and_var():
    x, m = T([1.0, 2.0, 3.0, 100.0]), T([1.0, 1.0, 1.0, 0.0])
    out = masked_whiten(x, m, eps=0.0)
    close(out, [-1.0, 0.0, 1.0, 0.0])
    close(masked_whiten(x, m, eps=0.0, shift_mean=False), [1.0, 2.0, 3.0, 0.0])
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(x, T([1.0, 0, 0, 0]))


def test_dcpo_sas_example_three_visits():
    state = SASState()
    g = T([0, 0, 0, 0])
    dcpo_sas_advantages(T([1.0, 0, 0, 0]), g, {0: "q"}, state)
    dcpo_sas_advantages(T([1.0, 1, 0, 0]), g, {0: "q"}, state)
    i, mu, var = state.stats["q"]
    assert i == 2
    close(mu, 0.375)
    close(var**0.5, 0.484123)
    adv = dcpo_sas_advantages(T([1.0, 1, 1, 0]), g, {0: "q"}, state)
    close(adv, [0.718234, 0.718234, 0.718234, -1.244017])
    close(state.stats["q"][1:], [0.5, 0.25])


def test_dcpo_sas_state_round_trip_and_zero_variance_group():
    state = SASState()
    g = T([0, 0, 1, 1])
    dcpo_sas_advantages(T([1.0, 0.0, 1.0, 1.0]), g, {0: "a", 1: "b"}, state)
    restored = SASState()
    restored.load_state_dict(state.state_dict())
    assert restored.stats == state.stats
    a1 = dcpo_sas_advantages(T([1.0, 1.0]), T([0, 0]), {0: "a"}, state)
    a2 = dcpo_sas_advantages(T([1.0, 1.0]), T([0, 0]), {0: "a"}, restored)
    close(a1, a2)
    # all-equal group on its 2nd visit: Â_new = 0, so Â = (1/i)·Â_total, nonzero
    assert float(a1[0]) != 0.0
    first = dcpo_sas_advantages(T([1.0, 1.0]), T([0, 0]), {0: "new"}, SASState())
    close(first, [0.0, 0.0])
    unbiased = dcpo_sas_advantages(T([1.0, 0.0]), T([0, 0]), {0: "u"}, SASState(), unbiased=True)
    close(unbiased, [0.707107, -0.707107])


def test_dcpo_sas_equal_float64_rewards_give_zero_despite_rounding():
    # the mean of 9 × 0.3 rounds away from 0.3, leaving σ ≈ 6e-17: that used to standardise to −1
    scores = torch.full((9,), 0.3, dtype=torch.float64)
    adv = dcpo_sas_advantages(scores, torch.zeros(9, dtype=torch.long), {0: "q"}, SASState())
    assert torch.equal(adv, torch.zeros(9, dtype=torch.float64))


def test_dcpo_sas_prompt_that_always_scores_the_same_stays_zero_across_visits():
    # G = 16, always 0.7: rounding in the accumulated σ_total used to give ±0.47 from the 6th visit
    state, g = SASState(), torch.zeros(16, dtype=torch.long)
    for visit in range(1, 13):
        adv = dcpo_sas_advantages(torch.full((16,), 0.7, dtype=torch.float64), g, {0: "q"}, state)
        assert torch.equal(adv, torch.zeros(16, dtype=torch.float64)), visit
    assert state.stats["q"][0] == 12


def test_dcpo_sas_zero_std_tolerance_keeps_real_signal():
    g = T([0, 0, 0, 0])
    close(dcpo_sas_advantages(T([1.0, 0, 0, 1]), g, {0: "n"}, SASState()), [1.0, -1, -1, 1])
    small = dcpo_sas_advantages(T([1e-3, 0.0], dtype=torch.float64), T([0, 0]), {0: "s"}, SASState())
    close(small, [1.0, -1.0])  # σ = 5e-4 is far above the 1e-6 tolerance
    tiny = dcpo_sas_advantages(T([1e-8, 0.0], dtype=torch.float64), T([0, 0]), {0: "t"}, SASState())
    close(tiny, [0.0, 0.0])


def test_registry_lookup_and_unknown_name():
    assert ADVANTAGES.get("gae") is gae
    assert "grpo" in ADVANTAGES and next(iter(ADVANTAGES)) == "dcpo_sas"
    with pytest.raises(ValueError, match=r"unknown advantage estimator 'gea'; expected one of: .*gae"):
        ADVANTAGES.get("gea")
    with pytest.raises(ValueError, match="registered twice"):
        ADVANTAGES.register("gae")(lambda: None)


def test_moving_average_advantages_use_the_baseline_then_update_it():
    baseline = MovingAverageBaseline(alpha=0.9, value=0.5)
    rewards, mask = T([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]), T([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    adv, returns = moving_average_advantages(rewards, mask, baseline, gamma=0.9)
    close(returns, [[0.81, 0.9, 1.0], [0.0, 0.0, 0.0]])
    close(adv, [[0.31, 0.4, 0.5], [0.0, 0.0, 0.0]])
    close(baseline.value, 0.531)  # the empty row does not count in the mean episode return
    assert ADVANTAGES.get("moving_average") is moving_average_advantages
