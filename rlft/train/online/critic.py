"""The critic of RLHF-PPO: V(s_t) at every response token and its clipped value loss.

    V(s_t)   = head(h_t)       h_t: the hidden state that predicts response token t (the same states as
                               the policy's log-probs, ``rlft.models.logprobs.response_states``)
    L^VF     = ½·max((V − R)², (V_old + clip(V − V_old, ±ε_v) − R)²), token-mean     (rlft.algos.value_loss)

Two layouts (``CriticConfig.shared_backbone``):

- separate (default): a scalar-head model (``…ForSequenceClassification``, num_labels=1) initialised from the
  reward model (InstructGPT, arXiv 2203.02155; DeepSpeed-Chat) or from the actor's start weights with a
  fresh head, trained by its own optimiser on the same mini-batches as the actor;
- shared: a bias-free head on the actor's final hidden states; the policy loss and vf_coef·L^VF are one
  backward through one body (less memory, one forward), the head has its own optimiser.

V_old (``batch.values``) is computed once per rollout with no gradient; the returns come from GAE.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from rlft.algos import value_loss
from rlft.models.device import model_device, place
from rlft.models.logprobs import response_states
from rlft.models.scalar_head import load_reward_model, reward_model_from_causal_lm, save_reward_model
from rlft.run import ConfigError
from rlft.run.distributed import world
from rlft.train.common.optimizer import adamw
from rlft.train.common.parallel import DataParallel
from rlft.train.online.config import RLConfig
from rlft.train.online.rollout_batch import RolloutBatch, by_micro_batch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["Critic", "reward_model_dir"]


def reward_model_dir(cfg: RLConfig) -> str | None:
    """The run's reward model: ``reward_model``, else the first ``{reward_model: DIR}`` reward spec."""
    if cfg.reward_model:
        return str(cfg.reward_model)
    for spec in cfg.rewards:
        if isinstance(spec, Mapping) and "reward_model" in spec:
            return str(spec["reward_model"])
    return None


class Critic:
    """V(s_t) of rollout tokens, the value loss of a micro-batch, and the critic's optimiser."""

    def __init__(self, cfg: RLConfig, policy: PreTrainedModel):
        c = cfg.critic
        self.shared = c.shared_backbone
        self.policy = policy
        self.clip = c.value_clip
        self.vf_coef = c.vf_coef
        self.max_grad_norm = cfg.optim.max_grad_norm if c.max_grad_norm is None else c.max_grad_norm
        self.share_prompts = cfg.performance.share_prompts
        self.forward = cfg.performance.forward
        self.bf16 = cfg.bf16
        self.model: PreTrainedModel | None = None
        self.head: nn.Module
        if self.shared:
            width = policy.config.get_text_config().hidden_size
            self.head = nn.Linear(width, 1, bias=False)
            nn.init.zeros_(self.head.weight)  # V ≡ 0 at the start: no random values in the first returns
            self.source = "actor (shared backbone)"
        else:
            rm = reward_model_dir(cfg)
            init = c.init
            if init == "auto":
                init = "reward_model" if rm else "actor"
            if init == "reward_model":
                if rm is None:
                    raise ConfigError(
                        "config key 'critic.init': 'reward_model' needs a reward model in the run (set "
                        "reward_model: DIR or a {reward_model: DIR} reward), or use critic.init: actor"
                    )
                init = rm
            if init == "actor":
                self.model = reward_model_from_causal_lm(cfg.model, seed=cfg.seed)
                self.source = f"actor ({cfg.model}) with a fresh value head"
            else:
                self.model = load_reward_model(init)[0]
                self.source = init
            self.model.eval()  # no dropout: V_old and V must describe the same function
            self.head = self.model.get_submodule("score")
        place(self.model if self.model is not None else self.head, model_device(policy))  # the actor's device
        params = list(self.model.parameters() if self.model is not None else self.head.parameters())
        self.params = [p for p in params if p.requires_grad]
        # Under torchrun the critic is replicated on every rank (its gradients summed over ranks),
        # whatever the actor's parallelism.
        self.parallel = DataParallel("ddp", world())
        optim = cfg.optim
        self.optimizer = adamw(self.params, c.lr or optim.lr, optim.weight_decay, beta2=optim.adam_beta2)

    # --- values ---

    def _states(self, mb: RolloutBatch) -> Tensor:
        return response_states(
            self.model or self.policy,
            mb.responses,
            share_prompts=self.share_prompts,
            forward=self.forward,
            bf16=self.bf16,
        )

    def values_from_states(self, states: Tensor) -> Tensor:
        with torch.autocast(states.device.type, enabled=False):
            values: Tensor = self.head(states.float()).squeeze(-1).float()
        return values

    def values(self, batch: RolloutBatch, micro: int | None) -> Tensor:
        """(B, R) V(s_t) on response tokens (0 on padding), no gradient: the rollout's V_old."""
        return by_micro_batch(
            batch, micro, lambda mb: self.values_from_states(self._states(mb)) * mb.response_mask
        )

    # --- loss and optimiser ---

    def loss(
        self, mb: RolloutBatch, normalizer: float, states: Tensor | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """Clipped value loss of micro-batch ``mb`` as its share of a mini-batch of ``normalizer`` tokens;
        ``states`` are the actor's (shared backbone), else the critic runs its own body."""
        mask = mb.filled("loss_mask").to(torch.float32)
        v = self.values_from_states(self._states(mb) if states is None else states)
        loss, diag = value_loss(
            v, mb.filled("values"), mb.filled("returns"), mask, self.clip, "token-mean", normalizer
        )
        return loss, {"value_loss": float(loss.detach()), "vf_clipfrac": float(diag["vf_clipfrac"])}

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def replicate(self) -> None:
        """Give every rank rank 0's critic (call once, before training)."""
        self.parallel.prepare(self.model or self.head)  # type: ignore[arg-type]

    def step(self, apply_step: Callable[..., bool] | None = None) -> float:
        """Sum the gradients over ranks, clip and take the critic's optimiser step, through ``apply_step``
        (the trainer's non-finite policy) when given; returns the gradient norm before clipping."""
        self.parallel.finish_gradients(self.params)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm or float("inf"))
        if apply_step is None:
            self.optimizer.step()
        else:
            apply_step(self.optimizer, critic_grad_norm=norm)
        return float(norm)

    def state_dict(self) -> dict[str, Any]:
        weights = (self.model or self.head).state_dict()
        return {"weights": weights, "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        (self.model or self.head).load_state_dict(state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])

    def save(self, out: str | Path, tokenizer: PreTrainedTokenizerBase | None) -> None:
        """The separate critic as a reward-model directory (a shared head lives in the checkpoints only)."""
        if self.model is not None:
            save_reward_model(self.model, tokenizer, out)
