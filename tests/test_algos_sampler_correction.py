"""Sampler–trainer importance-sampling correction (TIS / MIS): worked examples, the exact boundaries,
agreement gives weight 1, masked garbage is ignored, and no gradient flows through the weights."""

import math

import pytest
import torch
from numeric import close

from rlft.algos import (
    SAMPLER_CORRECTIONS,
    SamplerCorrection,
    UnknownNameError,
    masked_is_weights,
    sampler_correction,
    sampler_log_ratio,
    sampler_mismatch_metrics,
    truncated_is_weights,
)

T = torch.tensor
MODES = ["none", "token_truncate", "sequence_mask", "geometric_mask"]
METRIC_KEYS = {
    "ratio_mean",
    "ratio_max",
    "kl_k1",
    "kl_k3",
    "weight_mean",
    "truncated_frac",
    "seq_masked_frac",
}
LOG2 = T(math.log(2.0))  # float32(log 2); exp of it is exactly 2.0 in float32


def up(x: torch.Tensor) -> torch.Tensor:
    return torch.nextafter(x, T(math.inf))


def down(x: torch.Tensor) -> torch.Tensor:
    return torch.nextafter(x, T(-math.inf))


def rows(*log_ratios: list[float], width: int = 3):
    """(logp_old, logp_sampler, mask) with logp_sampler = 0, so log ρ = logp_old, rows right-padded."""
    old = torch.zeros(len(log_ratios), width)
    mask = torch.zeros(len(log_ratios), width, dtype=torch.bool)
    for i, row in enumerate(log_ratios):
        old[i, : len(row)] = T(row)
        mask[i, : len(row)] = True
    return old, torch.zeros_like(old), mask


def random_batch(seed: int = 0, b: int = 5, t: int = 7):
    g = torch.Generator().manual_seed(seed)
    logp_old = -torch.rand(b, t, generator=g) * 3
    logp_sampler = logp_old + 0.3 * torch.randn(b, t, generator=g)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = torch.arange(t) < lengths[:, None]
    return logp_old, logp_sampler, mask


# --- log-ratio ------------------------------------------------------------------------------------


def test_log_ratio_example_masking_and_saturation():
    old = T([[-1.0, -0.5, -2.0, math.nan], [-1.0, 0.0, 0.0, 0.0]])
    sampler = T([[-1.2, -0.5, -0.5, math.inf], [-math.inf, 0.0, 0.0, 0.0]])
    mask = T([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    close(sampler_log_ratio(old, sampler, mask), [[0.2, 0.0, -1.5, 0.0], [20.0, 0.0, 0.0, 0.0]])


def test_log_ratio_is_at_least_float32_and_rejects_mismatched_shapes():
    old, sampler, mask = random_batch()
    assert sampler_log_ratio(old.bfloat16(), sampler.bfloat16(), mask).dtype == torch.float32
    assert sampler_log_ratio(old.double(), sampler, mask).dtype == torch.float64
    with pytest.raises(ValueError, match="one shape"):
        sampler_log_ratio(old, sampler[:, :1], mask)


# --- token-level truncated IS ---------------------------------------------------------------------


def test_tis_example():
    old = T([[-1.0, -0.5, -2.0, 7.0]])
    sampler = T([[-1.2, -0.5, -0.5, -3.0]])
    mask = T([[True, True, True, False]])
    close(truncated_is_weights(old, sampler, mask), [[1.2214028, 1.0, 0.2231302, 0.0]])
    weights = truncated_is_weights(old, sampler, mask, cap=1.1)
    assert weights[0, 0] == T(1.1) and weights[0, 1] == 1.0 and weights[0, 3] == 0.0
    close(weights, [[1.1, 1.0, 0.2231302, 0.0]])


def test_tis_keeps_a_ratio_equal_to_the_cap_and_truncates_just_above_it():
    assert torch.exp(up(LOG2)) > 2.0  # the next float32 above log 2 gives a ratio above 2
    old, sampler, mask = rows([LOG2.item()], [up(LOG2).item()], width=1)
    out = sampler_correction("token_truncate", old, sampler, mask, cap=2.0)
    assert out.weights.tolist() == [[2.0], [2.0]]
    close(out.metrics["truncated_frac"], 0.5)  # only the second was lowered
    assert out.keep.all()


def test_tis_rejects_a_cap_below_one():
    old, sampler, mask = random_batch()
    with pytest.raises(ValueError, match="cap"):
        truncated_is_weights(old, sampler, mask, cap=0.9)


# --- sequence-level masked IS ---------------------------------------------------------------------


def test_sequence_mask_example():
    old, sampler, mask = rows([0.2, 0.3], [0.5, 0.4, 0.1], [-0.1, -0.1])
    weights, keep = masked_is_weights(old, sampler, mask, upper=2.0)
    assert keep.tolist() == [True, False, True]
    assert weights.tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]
    weights, keep = masked_is_weights(old, sampler, mask, upper=2.0, reweight=True)
    close(weights, [[1.6487213, 1.6487213, 0.0], [0.0, 0.0, 0.0], [0.8187308, 0.8187308, 0.0]])
    # lower defaults to 1/upper: r = e^-1 = 0.367879 < 0.5 is dropped, and kept with lower = 0.3
    old, sampler, mask = rows([-0.5, -0.5])
    assert masked_is_weights(old, sampler, mask, upper=2.0)[1].tolist() == [False]
    assert masked_is_weights(old, sampler, mask, upper=2.0, lower=0.3)[1].tolist() == [True]


def test_geometric_mask_rejects_by_the_per_token_gap_not_the_length():
    # A: three tokens at +0.3 (product 2.459603, geometric 1.349859); B: one token at +0.5 (1.648721);
    # C: [−0.2, −0.4] (product 0.548812, geometric 0.740818).
    old, sampler, mask = rows([0.3, 0.3, 0.3], [0.5], [-0.2, -0.4])
    assert masked_is_weights(old, sampler, mask, upper=2.0)[1].tolist() == [False, True, True]
    weights, keep = masked_is_weights(old, sampler, mask, upper=1.4, geometric=True)
    assert keep.tolist() == [True, False, True]  # lower = 1/1.4 = 0.714286
    assert weights.tolist() == [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]
    weights, _ = masked_is_weights(old, sampler, mask, upper=1.4, geometric=True, reweight=True)
    close(weights, [[1.3498588] * 3, [0.0] * 3, [0.7408182, 0.7408182, 0.0]])
    out = sampler_correction("geometric_mask", old, sampler, mask, upper=1.4)
    assert torch.equal(out.keep, keep)


@pytest.mark.parametrize("geometric", [False, True])
def test_mask_bounds_are_inclusive(geometric):
    log_half = T(math.log(0.5))
    assert log_half == -LOG2
    # one token each, or for the geometric mean two equal tokens (whose mean is exactly the token)
    n = 2 if geometric else 1
    old, sampler, mask = rows(
        [LOG2.item()] * n, [up(LOG2).item()] * n, [log_half.item()] * n, [down(log_half).item()] * n, width=n
    )
    weights, keep = masked_is_weights(old, sampler, mask, upper=2.0, lower=0.5, geometric=geometric)
    assert keep.tolist() == [True, False, True, False]
    weights, _ = masked_is_weights(old, sampler, mask, upper=2.0, geometric=geometric, reweight=True)
    assert weights[:, 0].tolist() == [2.0, 0.0, 0.5, 0.0]


def test_mask_lower_zero_disables_the_lower_bound():
    old = T([[-math.inf, 0.0]])  # log ρ = −inf on a valid token saturates at −20
    sampler, mask = torch.zeros(1, 2), T([[True, True]])
    assert masked_is_weights(old, sampler, mask, upper=2.0)[1].tolist() == [False]
    assert masked_is_weights(old, sampler, mask, upper=2.0, lower=0.0)[1].tolist() == [True]


@pytest.mark.parametrize("lower,upper", [(1.5, 2.0), (0.5, 0.9), (-0.1, 2.0)])
def test_mask_rejects_bounds_that_exclude_one(lower, upper):
    old, sampler, mask = random_batch()
    with pytest.raises(ValueError, match="lower <= 1 <= upper"):
        masked_is_weights(old, sampler, mask, upper=upper, lower=lower)


def test_mask_drops_a_sequence_whose_log_ratio_is_nan_on_a_valid_token():
    old = T([[-math.inf, 0.0], [0.1, 0.0]])
    sampler = T([[-math.inf, 0.0], [0.0, 0.0]])
    weights, keep = masked_is_weights(old, sampler, torch.ones(2, 2, dtype=torch.bool), reweight=True)
    assert keep.tolist() == [False, True]
    assert not weights.isnan().any() and weights[0].tolist() == [0.0, 0.0]


# --- metrics --------------------------------------------------------------------------------------


def test_metrics_example():
    old = T([[-1.0, -0.5, -2.0, 5.0]])
    sampler = T([[-1.2, -0.5, -0.5, -5.0]])
    mask = T([[1.0, 1.0, 1.0, 0.0]])
    metrics = sampler_mismatch_metrics(old, sampler, mask)
    close(metrics["ratio_mean"], 0.8148443)
    close(metrics["ratio_max"], 1.2214028)
    close(metrics["kl_k1"], 1.3 / 3)  # mean(logp_sampler − logp_old) = mean(−0.2, 0, 1.5)
    close(metrics["kl_k3"], 0.2481776)  # mean(ρ − 1 − log ρ)
    out = sampler_correction("token_truncate", old, sampler, mask, cap=1.1)
    assert set(out.metrics) == METRIC_KEYS
    for key in metrics:
        assert torch.equal(out.metrics[key], metrics[key])
    close(out.metrics["weight_mean"], (1.1 + 1.0 + 0.2231302) / 3)
    close(out.metrics["truncated_frac"], 1 / 3)
    close(out.metrics["seq_masked_frac"], 0.0)


def test_seq_masked_frac_counts_sequences_with_tokens():
    old, sampler, mask = rows([0.2, 0.3], [0.5, 0.4, 0.1], [])  # the empty row is kept and not counted
    out = sampler_correction("sequence_mask", old, sampler, mask)
    assert out.keep.tolist() == [True, False, True]
    close(out.metrics["seq_masked_frac"], 0.5)
    close(out.metrics["weight_mean"], 2 / 5)
    close(out.metrics["truncated_frac"], 0.0)


def test_metrics_of_an_all_masked_batch_are_zero():
    out = sampler_correction(
        "token_truncate", torch.full((2, 3), math.nan), torch.zeros(2, 3), torch.zeros(2, 3)
    )
    assert all(value.item() == 0.0 for value in out.metrics.values())
    assert out.weights.eq(0).all() and out.keep.all()


# --- properties common to every mode --------------------------------------------------------------


def test_registry_names_and_lookup():
    assert SAMPLER_CORRECTIONS.names() == sorted(MODES)
    with pytest.raises(UnknownNameError, match="token_truncate"):
        sampler_correction("tis", *random_batch())


@pytest.mark.parametrize(
    "mode,options",
    [(mode, {}) for mode in MODES]
    + [(mode, {"reweight": True}) for mode in ("sequence_mask", "geometric_mask")],
)
def test_agreeing_log_probs_give_weight_one_and_drop_nothing(mode, options):
    logp, _, mask = random_batch(seed=1)
    out = sampler_correction(mode, logp, logp.clone(), mask, **options)
    assert isinstance(out, SamplerCorrection)
    assert torch.equal(out.weights, mask.float())
    assert out.keep.all()
    assert set(out.metrics) == METRIC_KEYS
    expected = {"ratio_mean": 1.0, "ratio_max": 1.0, "kl_k1": 0.0, "kl_k3": 0.0, "weight_mean": 1.0}
    expected |= {"truncated_frac": 0.0, "seq_masked_frac": 0.0}
    assert {key: value.item() for key, value in out.metrics.items()} == expected


@pytest.mark.parametrize("mode", MODES)
def test_masked_positions_are_ignored_even_when_nan_or_inf(mode):
    old, sampler, mask = random_batch(seed=2)
    clean = sampler_correction(mode, old, sampler, mask)
    garbage = torch.tensor([math.nan, math.inf, -math.inf]).repeat(old.numel() // 3 + 1)[: old.numel()]
    dirty_old = torch.where(mask, old, garbage.view_as(old))
    dirty_sampler = torch.where(mask, sampler, garbage.flip(0).view_as(old))
    dirty = sampler_correction(mode, dirty_old, dirty_sampler, mask.float())
    assert torch.equal(dirty.weights, clean.weights) and torch.equal(dirty.keep, clean.keep)
    for key, value in clean.metrics.items():
        assert torch.equal(dirty.metrics[key], value), key
        assert value.isfinite()
    assert dirty.weights.isfinite().all() and dirty.weights[~mask].eq(0).all()


@pytest.mark.parametrize("mode", MODES)
def test_no_gradient_flows_through_the_weights(mode):
    old, sampler, mask = random_batch(seed=3)
    old.requires_grad_(True)
    sampler.requires_grad_(True)
    out = sampler_correction(mode, old, sampler, mask)
    assert not out.weights.requires_grad
    assert not any(value.requires_grad for value in out.metrics.values())
    # Used as a loss weight, w·logp has gradient exactly w.
    logp = torch.randn(old.shape, generator=torch.Generator().manual_seed(4), requires_grad=True)
    (out.weights * logp).sum().backward()
    assert torch.equal(logp.grad, out.weights)
    assert old.grad is None and sampler.grad is None


def test_random_batch_matches_the_formulas():
    old, sampler, mask = random_batch(seed=5, b=16, t=9)
    log_ratio = (old.double() - sampler.double()) * mask
    tis = truncated_is_weights(old, sampler, mask, cap=1.2)
    torch.testing.assert_close(tis.double(), log_ratio.exp().clamp(max=1.2) * mask)
    seq = log_ratio.sum(-1)
    out = sampler_correction("sequence_mask", old, sampler, mask, upper=1.5, reweight=True)
    inside = (seq > math.log(1 / 1.5) + 1e-6) & (seq < math.log(1.5) - 1e-6)
    outside = (seq < math.log(1 / 1.5) - 1e-6) | (seq > math.log(1.5) + 1e-6)
    assert out.keep[inside].all() and not out.keep[outside].any()
    assert 0 < int(inside.sum()) < 16  # the example exercises both branches
    torch.testing.assert_close(out.weights.double(), (seq.exp() * out.keep)[:, None] * mask)
    close(out.metrics["kl_k1"], (-log_ratio).sum() / mask.sum())


def test_saturated_valid_tokens_stay_finite():
    old = T([[0.0, -1.0], [0.0, -1.0]])
    sampler = T([[-math.inf, -1.0], [-1.0, -1.0]])  # the sampler gave the first token probability 0
    mask = torch.ones(2, 2, dtype=torch.bool)
    out = sampler_correction("token_truncate", old, sampler, mask)
    assert out.weights.tolist() == [[2.0, 1.0], [2.0, 1.0]]
    close(out.metrics["ratio_max"], math.exp(20.0), tol=1e-3 * math.exp(20.0))
    seq = sampler_correction("sequence_mask", old, sampler, mask, upper=1e6)
    assert seq.keep.tolist() == [False, True]  # log r = 20 (saturated) > log 1e6 = 13.8; log r = 1 is kept
    assert all(value.isfinite() for value in seq.metrics.values())
