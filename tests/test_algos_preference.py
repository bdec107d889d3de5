"""Reward-model and direct-preference losses against the worked examples of docs/algorithms.md."""

import pytest
import torch
from numeric import close

from rlft.algos import (
    PREFERENCE_LOSSES,
    bradley_terry_loss,
    cdpo_loss,
    dpo_loss,
    hinge_loss,
    ipo_loss,
    kto_kl_baseline,
    kto_loss,
    kwise_ranking_loss,
    orpo_loss,
    robust_dpo_loss,
    rrhf_loss,
    simpo_loss,
)
from rlft.algos.preference import _log_odds

T = torch.tensor


def test_bradley_terry_examples():
    close(bradley_terry_loss(T([2.0]), T([0.0])), [0.126928])
    close(bradley_terry_loss(T([2.0]), T([0.0]), margin=T([1.0])), [0.313262])
    close(bradley_terry_loss(T([2.0]), T([0.0]), center_coef=0.01), [0.126928 + 0.04])


def test_kwise_example_and_k2_equals_pairwise():
    close(kwise_ranking_loss(T([[3.0, 1.0, 0.0]]), T([[2, 1, 0]])), [0.162926])
    r = T([[0.3, 1.2], [2.0, -1.0]])
    ranks = T([[0, 1], [1, 0]])
    close(kwise_ranking_loss(r, ranks), bradley_terry_loss(T([1.2, 2.0]), T([0.3, -1.0])))


def test_kwise_masks_absent_responses_and_rejects_no_pairs():
    r = T([[3.0, 1.0, 0.0, 99.0]])
    close(kwise_ranking_loss(r, T([[3, 2, 1, 0]]), valid=T([[1, 1, 1, 0]])), [0.162926])
    with pytest.raises(ValueError, match="two responses with different ranks"):
        kwise_ranking_loss(T([[1.0, 2.0]]), T([[1, 1]]))


def dpo_inputs():
    # β = 0.1, logπ(y_w) = −10, logπ(y_l) = −12, both references −11 ⇒ h = 2
    return T([-10.0 + 11.0]), T([-12.0 + 11.0])


def test_dpo_family_examples():
    w, l = dpo_inputs()
    close(dpo_loss(w, l, beta=0.1), [0.598139])
    close(cdpo_loss(w, l, beta=0.1, label_smoothing=0.1), [0.618139])
    close(robust_dpo_loss(w, l, beta=0.1, label_smoothing=0.1), [0.573139])
    close(ipo_loss(w, l, beta=0.1), [9.0])
    close(hinge_loss(w, l, beta=0.1), [0.8])
    close(cdpo_loss(w, l, label_smoothing=0.0), dpo_loss(w, l))
    with pytest.raises(ValueError, match=r"label_smoothing in \[0, 0.5\)"):
        robust_dpo_loss(w, l, label_smoothing=0.5)


def test_simpo_and_orpo_examples():
    close(simpo_loss(T([-1.0]), T([-1.2]), beta=2.0, gamma=1.0), [1.037488])
    close(_log_odds(T([-1.0])) - _log_odds(T([-1.2])), [0.300293])
    close(orpo_loss(T([-1.0]), T([-1.2]), chosen_nll=T([0.0]), lam=1.0), [0.554231])
    close(orpo_loss(T([-1.0]), T([-1.2]), chosen_nll=T([1.0]), lam=0.1), [1.055423])
    close(_log_odds(T([-1e-3, -30.0])), [torch.log(torch.tensor(1e-3).exp() - 1).neg().item(), -30.0], 1e-4)


def test_kto_examples():
    close(kto_loss(T([2.0, -1.0]), T([True, False]), z0=0.5, beta=0.1), [0.462570, 0.462570])
    close(kto_loss(T([2.0]), T([True]), z0=0.5, desirable_weight=2.0), [0.925140])
    close(kto_kl_baseline(T([-1.0, -2.0])), 0.0)
    z = kto_kl_baseline(T([1.0, 2.0], requires_grad=True))
    close(z, 1.5)
    assert not z.requires_grad


def test_rrhf_example():
    scores = T([[0.9, 0.2, 0.5]])
    lengths = T([[10, 4, 2]])
    logp_sum = T([[-10.0, -3.2, -3.0]])  # p = [−1.0, −0.8, −1.5]
    close(rrhf_loss(logp_sum, lengths, scores, rank_weight=1.0), [0.9 + 10.0])
    close(rrhf_loss(logp_sum, lengths, scores, rank_weight=0.0), [10.0])
    masked = rrhf_loss(
        T([[-10.0, -3.2, -3.0, 5.0]]), T([[10, 4, 2, 1]]), T([[0.9, 0.2, 0.5, 9.0]]), valid=T([[1, 1, 1, 0]])
    )
    close(masked, [10.9])


def test_preference_registry():
    assert {"sigmoid", "cdpo", "robust", "ipo", "hinge", "simpo", "orpo", "kto", "rrhf"} <= set(
        PREFERENCE_LOSSES
    )
    with pytest.raises(ValueError, match="unknown preference loss 'dpoo'"):
        PREFERENCE_LOSSES.get("dpoo")
