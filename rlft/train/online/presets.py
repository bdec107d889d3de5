"""Algorithm presets of the online RL trainer: each is a choice of parts, with the defaults of
``docs/algorithms.md`` §Online RL presets (and the paper/reference code cited there). An algorithm is a
configuration, not a class:

    algorithm: grpo                                     # a preset name, or "custom" and the parts below
    advantage: group_norm                               # a name in rlft.algos.ADVANTAGES
    policy_loss: ppo_clip                               # a name in rlft.algos.POLICY_LOSSES
    kl: {placement: loss, estimator: k3, coef: 0.04}    # placement: loss | reward | none
    aggregation: seq-mean-token-mean                    # a name in rlft.algos.AGGREGATIONS

Any key a preset sets can be overridden in the config; keys left unset (null) take the preset's value.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS", "preset_names"]

_NO_KL = {"placement": "none", "estimator": "k3", "coef": 0.0}

PRESETS: dict[str, dict[str, Any]] = {
    # Williams (1992): A_t = G_t − b, b an EMA of returns (α = 0.9), −Â·log π summed per sequence.
    "reinforce": {
        "advantage": "moving_average",
        "policy_loss": "reinforce",
        "aggregation": "seq-mean-token-sum",
        "kl": dict(_NO_KL),
        "baseline_alpha": 0.9,
    },
    # Ahmadian et al. (arXiv 2402.14740): leave-one-out baseline, REINFORCE loss, sequence-level k1 in the
    # reward (β = 0.03, their TL;DR setting).
    "rloo": {
        "advantage": "rloo",
        "policy_loss": "reinforce",
        "aggregation": "seq-mean-token-sum",
        "kl": {"placement": "reward", "estimator": "k1", "coef": 0.03},
    },
    # Li et al. (arXiv 2310.10505): A = r(sample) − r(greedy decode), REINFORCE loss, no KL.
    "remax": {
        "advantage": "remax",
        "policy_loss": "reinforce",
        "aggregation": "seq-mean-token-sum",
        "kl": dict(_NO_KL),
    },
    # Hu (arXiv 2501.03262): per-token k1 in the reward (β = 0.001), returns whitened over the batch,
    # PPO-clip ε = 0.2, token-mean.
    "reinforce_pp": {
        "advantage": "reinforce_pp",
        "policy_loss": "ppo_clip",
        "clip_low": 0.2,
        "clip_high": 0.2,
        "aggregation": "token-mean",
        "kl": {"placement": "reward", "estimator": "k1", "coef": 0.001},
    },
    # REINFORCE++-baseline: group-mean-centred score, then the same global whitening (OpenRLHF).
    "reinforce_pp_baseline": {
        "advantage": "reinforce_pp_baseline",
        "policy_loss": "ppo_clip",
        "clip_low": 0.2,
        "clip_high": 0.2,
        "aggregation": "token-mean",
        "kl": {"placement": "reward", "estimator": "k1", "coef": 0.001},
    },
    # DeepSeekMath (arXiv 2402.03300): (R − mean)/std per group (unbiased std), PPO-clip ε = 0.2,
    # k3 in the loss with β = 0.04, seq-mean-token-mean.
    "grpo": {
        "advantage": "group_norm",
        "scale_rewards": "group",
        "policy_loss": "ppo_clip",
        "clip_low": 0.2,
        "clip_high": 0.2,
        "aggregation": "seq-mean-token-mean",
        "kl": {"placement": "loss", "estimator": "k3", "coef": 0.04},
    },
    # Liu et al. (arXiv 2503.20783): no std, no 1/|o|, constant normaliser B·L_max, β = 0.
    "dr_grpo": {
        "advantage": "group_norm",
        "scale_rewards": "none",
        "policy_loss": "ppo_clip",
        "clip_low": 0.2,
        "clip_high": 0.2,
        "aggregation": "seq-mean-token-sum-norm",
        "kl": dict(_NO_KL),
    },
    # Yu et al. (arXiv 2503.14476): clip-higher 0.2/0.28, dynamic sampling (cap 10 rounds as verl),
    # soft overlong punishment with L_cache/L_max = 4096/20480 = 0.2, token-mean, no KL.
    "dapo": {
        "advantage": "group_norm",
        "scale_rewards": "group",
        "policy_loss": "ppo_clip",
        "clip_low": 0.2,
        "clip_high": 0.28,
        "aggregation": "token-mean",
        "kl": dict(_NO_KL),
        "dynamic_sampling": True,
        "max_sample_rounds": 10,
        "overlong_buffer": 0.2,
    },
    # Zheng et al. (arXiv 2507.18071): sequence-level ratio clipped at 3e-4/4e-4, 4 mini-batches per
    # rollout, no KL.
    "gspo": {
        "advantage": "group_norm",
        "scale_rewards": "group",
        "policy_loss": "gspo",
        "clip_low": 3e-4,
        "clip_high": 4e-4,
        "aggregation": "seq-mean-token-mean",
        "kl": dict(_NO_KL),
        "num_minibatches": 4,
    },
    "gspo_token": {
        "advantage": "group_norm",
        "scale_rewards": "group",
        "policy_loss": "gspo_token",
        "clip_low": 3e-4,
        "clip_high": 4e-4,
        "aggregation": "seq-mean-token-mean",
        "kl": dict(_NO_KL),
        "num_minibatches": 4,
    },
    # Gao, Zheng et al. (arXiv 2511.20347): soft gate, τ_pos = 1.0, τ_neg = 1.05, no KL.
    "sapo": {
        "advantage": "group_norm",
        "scale_rewards": "group",
        "policy_loss": "sapo",
        "tau_pos": 1.0,
        "tau_neg": 1.05,
        "aggregation": "seq-mean-token-mean",
        "kl": dict(_NO_KL),
    },
    # Yang et al. (arXiv 2509.02333): smooth advantage standardisation (population statistics, per-prompt
    # state), dynamic bounds ε = 0.16/0.2 capped at 10, dual-clip 10, only-token-mean, no KL.
    "dcpo": {
        "advantage": "dcpo_sas",
        "std_unbiased": False,
        "policy_loss": "dcpo",
        "clip_low": 0.16,
        "clip_high": 0.2,
        "max_ratio": 10.0,
        "dual_clip": 10.0,
        "aggregation": "only-token-mean",
        "kl": dict(_NO_KL),
    },
    # MiniMax-M1 (arXiv 2506.13585): clipped, detached IS weight on every token; upper bound only
    # (1 + 0.2, verl's example; a lower clip of 1.0 means a lower bound of 0, i.e. none), token-mean.
    # RLHF-PPO (InstructGPT arXiv 2203.02155, DeepSpeed-Chat, TRL's PPOTrainer): per-token k1 in the reward
    # (β = 0.05, TRL; InstructGPT 0.02, DeepSpeed-Chat 0.1), the score on the last token, GAE (γ = 1,
    # λ = 0.95) with a critic, advantages whitened over the batch (TRL/verl; DeepSpeed-Chat does not),
    # PPO-clip ε = 0.2 and the clipped value loss ε_v = 0.2, token-mean.
    "ppo": {
        "advantage": "gae",
        "policy_loss": "ppo_clip",
        "clip_low": 0.2,
        "clip_high": 0.2,
        "aggregation": "token-mean",
        "kl": {"placement": "reward", "estimator": "k1", "coef": 0.05},
        "whiten_advantages": True,
    },
    "cispo": {
        "advantage": "group_norm",
        "scale_rewards": "group",
        "policy_loss": "cispo",
        "clip_low": 1.0,
        "clip_high": 0.2,
        "aggregation": "token-mean",
        "kl": dict(_NO_KL),
    },
}

# What a key takes when neither the preset nor the user sets it.
FALLBACKS: dict[str, Any] = {
    "scale_rewards": "group",
    "std_unbiased": None,  # None: the advantage function's own default
    "clip_low": 0.2,
    "clip_high": None,  # None: = clip_low
    "dual_clip": 0.0,  # 0: off
    "tau_pos": 1.0,
    "tau_neg": 1.05,
    "max_ratio": 10.0,
    "baseline_alpha": 0.9,
    "dynamic_sampling": False,
    "max_sample_rounds": 10,
    "overlong_buffer": 0.0,
    "num_minibatches": 1,
    "whiten_advantages": False,
}


def preset_names() -> list[str]:
    return sorted(PRESETS)
