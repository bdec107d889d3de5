"""Observation and reward normalisation for continuous control (SB3's VecNormalize; Andrychowicz et al.,
"What Matters in On-Policy RL", arXiv 2006.05990, found both important). Saved with the policy."""

from __future__ import annotations

import numpy as np
import torch


class RunningMeanStd:
    """Running mean and variance of a stream of batches (parallel-variance merge of Chan et al., 1979)."""

    def __init__(self, shape: tuple[int, ...] = ()):
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = 1e-4

    def update(self, x: np.ndarray) -> None:
        b_mean, b_var, b_count = x.mean(0), x.var(0), x.shape[0]
        delta = b_mean - self.mean
        total = self.count + b_count
        self.mean = self.mean + delta * b_count / total
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total
        self.var = m2 / total
        self.count = total

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {
            # np.array: after an update a shape-() mean or var is a NumPy scalar, not an array
            f"{prefix}.mean": torch.from_numpy(np.array(self.mean, np.float64)),
            f"{prefix}.var": torch.from_numpy(np.array(self.var, np.float64)),
            f"{prefix}.count": torch.tensor([self.count], dtype=torch.float64),
        }

    def load_tensors(self, tensors: dict[str, torch.Tensor], prefix: str) -> None:
        self.mean = tensors[f"{prefix}.mean"].numpy().astype(np.float64)
        self.var = tensors[f"{prefix}.var"].numpy().astype(np.float64)
        self.count = float(tensors[f"{prefix}.count"][0])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (float64, so a resumed run normalises bit for bit as an uninterrupted one)."""
        return {k.removeprefix("rms."): v for k, v in self.tensors("rms").items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.load_tensors({f"rms.{k}": v for k, v in state.items()}, "rms")


class ObsNormalizer:
    """o ↦ clip((o − μ) / sqrt(σ² + ε), ±clip), with μ, σ² tracked over every observation seen in training."""

    def __init__(self, shape: tuple[int, ...], clip: float = 10.0, eps: float = 1e-8):
        self.rms, self.clip, self.eps = RunningMeanStd(shape), clip, eps

    def __call__(self, obs: np.ndarray, update: bool) -> np.ndarray:
        if update:
            self.rms.update(obs)
        out = (obs - self.rms.mean) / np.sqrt(self.rms.var + self.eps)
        return np.clip(out, -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.rms.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.rms.load_state_dict(state)


class RewardScaler:
    """r ↦ clip(r / sqrt(Var[G] + ε), ±clip) where G is the running discounted return of each environment.

    Scaling (not centring) keeps the sign of rewards; resetting G at episode ends follows SB3.
    """

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, eps: float = 1e-8):
        self.rms, self.gamma, self.clip, self.eps = RunningMeanStd(), gamma, clip, eps
        self.returns = np.zeros(num_envs)

    def __call__(self, reward: np.ndarray, done: np.ndarray, valid: np.ndarray) -> np.ndarray:
        self.returns = np.where(valid, self.returns * self.gamma + reward, self.returns)
        if valid.any():
            self.rms.update(self.returns[valid])
        self.returns[done] = 0.0
        return np.clip(reward / np.sqrt(self.rms.var + self.eps), -self.clip, self.clip)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**self.rms.state_dict(), "returns": torch.from_numpy(self.returns.copy())}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.rms.load_state_dict({k: v for k, v in state.items() if k != "returns"})
        self.returns = state["returns"].numpy().astype(np.float64)
