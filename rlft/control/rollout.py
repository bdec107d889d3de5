"""Collecting experience from vectorised gymnasium environments into one batch of tensors.

Conventions shared by every control algorithm:
- Next-step autoreset (gymnasium 1.x): the step after a `done` only resets that copy, so it is stored
  with `valid = 0` and masked out of every loss and statistic.
- Time-limit truncation: the episode did not fail, so its last reward gets + γ·V(final observation)
  (the final observation is the next stored one, so its value is already computed) and the step is
  then an episode end like a termination (SB3's choice). Algorithms without a critic skip the bootstrap.
- Observations are normalised before the policy sees them when `normalize_obs` is on; rewards are
  scaled by the running std of the discounted return when `normalize_reward` is on. Episode returns in
  the metrics are always the raw environment returns.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from rlft.run.seeding import episode_reset_seed

from .config import ControlConfig
from .env_state import capture_env_state, restore_env_state
from .envs import observation_size
from .normalize import ObsNormalizer, RewardScaler
from .policies import ActionArray, ActorCritic, Array

Bools = npt.NDArray[np.bool_]
Floats = npt.NDArray[np.float64]
# One environment step of every copy: (observation, action, reward, terminated, truncated, valid)
Step = tuple[Array, ActionArray, Floats, Bools, Bools, Bools]
Normalizer = TypeVar("Normalizer", ObsNormalizer, RewardScaler)


@dataclass
class Batch:
    """Time-major (T, N, ...) tensors of one rollout; `finished` holds (return, length) of ended episodes."""

    obs: Tensor
    actions: Tensor
    logp: Tensor
    values: Tensor
    params: Tensor  # the actor's outputs (logits or μ) at collection time
    old_log_std: Tensor | None
    rewards: Tensor  # (possibly scaled) rewards, with the truncation bootstrap added when a critic exists
    dones: Tensor  # 1 where an episode ended (terminated or truncated) at this step
    valid: Tensor  # 0 on the reset step that follows an episode end
    last_value: Tensor  # V of the observation after the last step (N,)
    finished: list[tuple[float, int]] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return self.valid.numel()

    def flat(self, name: str) -> Tensor:
        x: Tensor = getattr(self, name)
        return x.reshape(-1, *x.shape[2:])


class Collector:
    """Steps the environments with a policy and keeps what must survive between rollouts."""

    def __init__(self, envs: gym.vector.VectorEnv[Any, Any, Any], cfg: ControlConfig, discrete: bool):
        self.envs, self.cfg, self.discrete = envs, cfg, discrete
        self.num_envs = cfg.num_envs
        self.obs_dim = observation_size(envs.single_observation_space, cfg.env)
        space = envs.single_action_space
        # Box actions are clipped to the box before they reach the environment
        self.low: npt.NDArray[Any] | None = None
        self.high: npt.NDArray[Any] | None = None
        if isinstance(space, gym.spaces.Box):
            self.low, self.high = space.low, space.high
        self.obs_norm = ObsNormalizer((self.obs_dim,)) if cfg.normalize_obs else None
        self.reward_scaler = RewardScaler(cfg.num_envs, cfg.gamma) if cfg.normalize_reward else None
        self.recent: deque[float] = deque(maxlen=cfg.return_window)
        self.episodes = 0
        self.reset(cfg.seed)

    def reset(self, seed: int | None = None) -> None:
        raw, _ = self.envs.reset(seed=seed)
        self.obs = self._observe(raw)
        self.prev_done = np.zeros(self.num_envs, dtype=bool)
        self.ep_return = np.zeros(self.num_envs)
        self.ep_length = np.zeros(self.num_envs, dtype=np.int64)

    def _observe(self, raw: npt.ArrayLike) -> Array:
        # np.array copies: the stored observation must not alias a buffer the environment reuses
        obs = np.array(raw, dtype=np.float32).reshape(self.num_envs, self.obs_dim)
        if self.obs_norm is not None:
            obs = self.obs_norm(obs, update=True)
        return obs

    def _step(self, actions: ActionArray) -> tuple[Floats, Bools, Bools, Bools, list[tuple[float, int]]]:
        """One environment step; returns (reward, terminated, truncated, valid, finished episodes)."""
        valid = ~self.prev_done
        env_actions = actions if self.discrete else np.clip(actions, self.low, self.high)
        raw, reward, terminated, truncated, _ = self.envs.step(env_actions)
        reward = np.asarray(reward, dtype=np.float64)
        self.ep_return += reward * valid
        self.ep_length += valid
        done = terminated | truncated
        finished: list[tuple[float, int]] = []
        for i in np.flatnonzero(done):
            finished.append((float(self.ep_return[i]), int(self.ep_length[i])))
            self.ep_return[i], self.ep_length[i] = 0.0, 0
        if self.reward_scaler is not None:
            reward = self.reward_scaler(reward, done, valid)
        self.prev_done = done
        self.obs = self._observe(raw)
        return reward, terminated, truncated, valid, finished

    def _record(self, finished: list[tuple[float, int]]) -> None:
        self.recent.extend(r for r, _ in finished)
        self.episodes += len(finished)

    def _assemble(
        self, policy: ActorCritic, steps: list[Step], finished: list[tuple[float, int]], bootstrap: bool
    ) -> Batch:
        """Stack the per-step NumPy records; the actor's outputs, log-probs and values are computed here in
        one batched torch pass (the policy did not change during the rollout)."""
        obs, actions, rewards, term, trunc, valid = (
            torch.from_numpy(np.stack(x)) for x in zip(*steps, strict=True)
        )
        term, trunc, valid = term.float(), trunc.float(), valid.float()
        T, N = valid.shape
        flat_obs = obs.reshape(T * N, -1)
        params = policy.actor(flat_obs).view(T, N, -1)
        if bootstrap:
            all_values = policy.value(torch.cat([flat_obs, torch.from_numpy(self.obs)]))
            values, last_value = all_values[: T * N].view(T, N), all_values[T * N :]
        else:
            values, last_value = torch.zeros(T, N), torch.zeros(N)
        logp = policy.log_prob(params.reshape(T * N, -1), actions.reshape(T * N, *actions.shape[2:])).view(
            T, N
        )
        rewards = rewards.float()
        if bootstrap:
            next_values = torch.cat([values[1:], last_value[None]])
            rewards = rewards + self.cfg.gamma * next_values * trunc * (1 - term)
        old_log_std = None if policy.log_std is None else policy.log_std.detach().clone()
        self._record(finished)
        return Batch(
            obs,
            actions,
            logp,
            values,
            params,
            old_log_std,
            rewards,
            torch.clamp(term + trunc, max=1.0),
            valid,
            last_value,
            finished,
        )

    @torch.no_grad()
    def collect(self, policy: ActorCritic, n_steps: int, bootstrap: bool = True) -> Batch:
        """n_steps steps in every environment, continuing where the last rollout stopped."""
        steps: list[Step] = []
        finished: list[tuple[float, int]] = []
        draw = policy.sampler(n_steps)
        for _ in range(n_steps):
            obs = self.obs
            actions = draw(obs)
            reward, terminated, truncated, valid, done_eps = self._step(actions)
            finished += done_eps
            steps.append((obs, actions, reward, terminated, truncated, valid))
        return self._assemble(policy, steps, finished, bootstrap)

    @torch.no_grad()
    def collect_episodes(self, policy: ActorCritic, bootstrap: bool) -> Batch:
        """Exactly one whole episode per environment (Monte-Carlo methods): reset all, step until every copy
        has ended once; steps of a copy after its episode ended are marked invalid."""
        self.reset()
        steps: list[Step] = []
        finished: list[tuple[float, int]] = []
        ended = np.zeros(self.num_envs, dtype=bool)
        draw = policy.sampler(steps=64)  # noise for 64 steps at a time; episodes run until all have ended
        while not ended.all():
            obs = self.obs
            actions = draw(obs)
            reward, terminated, truncated, valid, done_eps = self._step(actions)
            valid &= ~ended
            finished += [
                ep
                for i, ep in zip(np.flatnonzero(terminated | truncated), done_eps, strict=True)
                if not ended[i]
            ]
            ended |= terminated | truncated
            steps.append((obs, actions, reward, terminated, truncated, valid))
        return self._assemble(policy, steps, finished, bootstrap)

    # --- checkpointing ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly, as tensors and plain data: the environments' state (None
        when it has no plain-data form, with the reason), the current observation, episode counters and
        normalisers."""
        envs_state, why = capture_env_state(self.envs)
        return {
            "envs": envs_state,
            "envs_not_saved": why,
            "obs": torch.from_numpy(self.obs.copy()),
            "prev_done": torch.from_numpy(self.prev_done.copy()),
            "ep_return": torch.from_numpy(self.ep_return.copy()),
            "ep_length": torch.from_numpy(self.ep_length.copy()),
            "recent": list(self.recent),
            "episodes": self.episodes,
            "obs_norm": None if self.obs_norm is None else self.obs_norm.state_dict(),
            "reward_scaler": None if self.reward_scaler is None else self.reward_scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> str | None:
        """Restore; returns None when the environments continue exactly, else why they were reset instead
        (their state had no plain-data form, so the episodes restart, reseeded)."""
        self.obs_norm = self._load_normalizer(ObsNormalizer((self.obs_dim,)), state["obs_norm"])
        self.reward_scaler = self._load_normalizer(
            RewardScaler(self.num_envs, self.cfg.gamma), state["reward_scaler"]
        )
        self.recent = deque(state["recent"], maxlen=self.cfg.return_window)
        self.episodes = state["episodes"]
        if state["envs"] is None:
            self.reset(episode_reset_seed(self.cfg.seed, self.episodes))
            return state["envs_not_saved"] or "the environment state was not saved"
        restore_env_state(self.envs, state["envs"])
        self.obs = state["obs"].numpy()
        self.prev_done = state["prev_done"].numpy()
        self.ep_return, self.ep_length = state["ep_return"].numpy(), state["ep_length"].numpy()
        return None

    @staticmethod
    def _load_normalizer(fresh: Normalizer, saved: dict[str, Tensor] | None) -> Normalizer | None:
        if saved is None:
            return None
        fresh.load_state_dict(saved)
        return fresh
