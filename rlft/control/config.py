"""Configuration of the control trainers, and tuned presets per (algorithm, environment)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlft.algos import Registry
from rlft.run import ConfigError


@dataclass
class PPOSettings:
    """PPO-clip hyperparameters (Schulman et al. 2017; defaults follow CleanRL's `ppo.py`)."""

    n_steps: int = 128  # rollout length per environment
    epochs: int = 4
    minibatches: int = 4
    lr: float = 2.5e-4
    anneal_lr: bool = True  # linear decay to 0 over training
    adam_eps: float = 1e-5
    gamma: float = 0.99
    lam: float = 0.95
    clip: float = 0.2
    anneal_clip: bool = False  # rl-zoo's "lin_0.2": the clip range decays with the learning rate
    vf_clip: float | None = None  # value clipping (baselines ppo2); None = plain ½(V − R)²
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    max_grad_norm: float = 0.5
    norm_adv: bool = True  # per-minibatch advantage whitening
    target_kl: float | None = None  # stop the epochs of an update once approx KL exceeds this


@dataclass
class ControlConfig:
    algo: str = "ppo"
    env: str = "CartPole-v1"
    seed: int = 1
    total_steps: int = 100_000
    num_envs: int = 8
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    torch_threads: int = 1  # tiny MLPs run fastest on one thread
    target_return: float | None = None  # stop once the mean of the last `return_window` episodes reaches it
    return_window: int = 20
    save_policy: bool = True
    ppo: PPOSettings = field(default_factory=PPOSettings)

    def validate(self) -> None:
        CONTROL_ALGOS.get(self.algo)
        for key in ("total_steps", "num_envs", "return_window", "torch_threads"):
            if getattr(self, key) <= 0:
                raise ConfigError(
                    f"config key {key!r}: expected a positive integer, got {getattr(self, key)}"
                )
        p = self.ppo
        for key in ("n_steps", "epochs", "minibatches"):
            if getattr(p, key) <= 0:
                raise ConfigError(
                    f"config key 'ppo.{key}': expected a positive integer, got {getattr(p, key)}"
                )
        if (self.num_envs * p.n_steps) % p.minibatches:
            raise ConfigError(
                f"config key 'ppo.minibatches': num_envs × n_steps = {self.num_envs * p.n_steps} "
                f"is not divisible by {p.minibatches}"
            )
        if not 0 < p.gamma <= 1 or not 0 <= p.lam <= 1:
            raise ConfigError(
                f"config keys 'ppo.gamma'/'ppo.lam': expected 0 < γ ≤ 1 and 0 ≤ λ ≤ 1, got {p.gamma}/{p.lam}"
            )


CONTROL_ALGOS: Registry = Registry("control algorithm")

# Tuned settings, applied by `--preset auto` (the default) when one exists for the pair.
PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    # rl-zoo3's tuned CartPole PPO (hyperparams/ppo.yml): 8 envs × 32 steps, one 256-sample minibatch,
    # 20 epochs, γ 0.98, λ 0.8, linearly decaying lr 1e-3 and clip 0.2, no entropy bonus.
    ("ppo", "CartPole-v1"): {
        "num_envs": 8,
        "ppo": {
            "n_steps": 32,
            "epochs": 20,
            "minibatches": 1,
            "lr": 1e-3,
            "anneal_lr": True,
            "gamma": 0.98,
            "lam": 0.8,
            "clip": 0.2,
            "anneal_clip": True,
            "ent_coef": 0.0,
        },
    },
}


def preset_for(algo: str, env: str, name: str = "auto") -> tuple[str, dict[str, Any]]:
    """Resolve `--preset`: "auto" takes the tuned preset for (algo, env) if there is one, "none" none."""
    if name == "none":
        return "none", {}
    if name == "auto":
        found = PRESETS.get((algo, env))
        return (f"{algo}/{env}", found) if found else ("none", {})
    algo_name, _, env_name = name.partition("/")
    if (algo_name, env_name) not in PRESETS:
        known = ", ".join(f"{a}/{e}" for a, e in PRESETS)
        raise ConfigError(f"unknown preset {name!r}; expected auto, none or one of: {known}")
    return name, PRESETS[(algo_name, env_name)]
