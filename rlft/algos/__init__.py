"""The algorithm core: pure tensor math shared by every trainer (language models and classic control).

Nothing here touches models, files or configs, and importing it pulls in only torch. Each estimator and
loss is a small function whose docstring gives its formula and source; registries map config names to
them.
"""

from .advantages import (
    ADVANTAGES,
    ESTIMATOR_ARGS,
    AdvantageState,
    MovingAverageBaseline,
    SASState,
    dcpo_sas_advantages,
    gae,
    group_normalized_advantages,
    last_token_index,
    moving_average_advantages,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    remax_advantages,
    reward_to_go,
    rloo_advantages,
    shaped_token_rewards,
)
from .aggregation import AGGREGATIONS, aggregate, global_normalizer
from .diagnostics import explained_variance
from .kl import (
    KL_CONTROLLERS,
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    PPOPenaltyKLController,
    categorical_kl,
    gaussian_kl,
    kl_estimate,
    kl_k1,
    kl_k2,
    kl_k3,
)
from .masked import masked_mean, masked_sum, masked_var, masked_whiten
from .policy_losses import (
    POLICY_LOSSES,
    cispo_loss,
    dcpo_bounds,
    dcpo_loss,
    entropy_bonus,
    entropy_from_logits,
    gaussian_entropy,
    gspo_loss,
    gspo_token_loss,
    ppo_clip_loss,
    ppo_penalty_loss,
    reinforce_loss,
    sapo_gate,
    sapo_loss,
    value_loss,
)
from .preference import (
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
from .registry import Registry, UnknownNameError
from .trust_region import backtracking_line_search, conjugate_gradient, trust_region_step

__all__ = [name for name in dir() if not name.startswith("_")]
