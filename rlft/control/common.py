"""Pieces the control algorithms share: GAE on a rollout batch, the guarded optimiser step, learning-rate
annealing, diagnostics."""

from __future__ import annotations

import sys
from collections.abc import Iterable

import torch
from torch import Tensor

from rlft.algos.advantages import gae
from rlft.run import StepSkips

from .config import ControlConfig
from .rollout import Batch


def batch_advantages(batch: Batch, cfg: ControlConfig) -> tuple[Tensor, Tensor]:
    """GAE(γ, λ) per environment over the rollout (rlft.algos puts time last, so transpose), flattened;
    0 on invalid steps.

    `gae` is called without the `valid` mask, which is the same on valid steps and about 3× cheaper (the
    masked scans cost two ops per time step): in a `Collector.collect` rollout a step is invalid only
    when it is the first one or follows a `done` in its environment, and a `done` already stops both
    the next value and the advantage from flowing back across it. So masking only changes the invalid
    steps themselves, and those are zeroed here (`tests/test_control_policies.py` checks the equality)."""
    adv, returns = gae(
        batch.rewards.T,
        batch.values.T,
        cfg.gamma,
        cfg.lam,
        dones=batch.dones.T,
        bootstrap=batch.last_value,
    )
    valid = batch.valid.reshape(-1)
    return adv.T.reshape(-1) * valid, returns.T.reshape(-1) * valid


def clip_grad_norm(params: Iterable[Tensor], max_norm: float) -> Tensor:
    """Scale all gradients by min(1, max_norm / (‖g‖₂ + 1e-6)), ‖g‖₂ over all of them together.

    The same rule as `torch.nn.utils.clip_grad_norm_` in four foreach ops, half its cost on these tiny
    networks (where its argument checks and dispatch outweigh the arithmetic)."""
    grads = [p.grad for p in params if p.grad is not None]
    total: Tensor = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return total


def say(message: str) -> None:
    """One line on stderr, where the command line's other notices go."""
    print(f"rlft: {message}", file=sys.stderr, flush=True)


class NonFiniteGuard:
    """The run's non-finite policy, shared by every algorithm's optimiser steps: a step whose loss or
    gradient norm is NaN or infinite is not applied (weights and optimiser state stay as they were) and is
    counted; ``max_consecutive_skips`` such steps in a row raise :class:`~rlft.run.NonFiniteError`.
    ``step`` is the training step the messages name; the trainer sets it before each update."""

    def __init__(self, max_consecutive_skips: int) -> None:
        self.skips = StepSkips(max_consecutive_skips, say)
        self.step = 0

    @property
    def skipped(self) -> int:
        return self.skips.total

    def allows(self, **values: Tensor | float) -> bool:
        """True when every value is finite (the step may be applied); counts the skip otherwise."""
        # plain floats, so the skip message shows `nan`, not a tensor's repr
        plain = {name: float(v.detach()) if isinstance(v, Tensor) else float(v) for name, v in values.items()}
        return self.skips.check(self.step, **plain)

    def step_optimizer(
        self, optimizer: torch.optim.Optimizer, params: Iterable[Tensor], loss: Tensor, max_grad_norm: float
    ) -> bool:
        """zero_grad → backward → clip → ``optimizer.step()`` when the loss and the gradient norm are
        finite; returns whether the step was applied."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = clip_grad_norm(params, max_grad_norm)
        if not self.allows(loss=loss, grad_norm=grad_norm):
            optimizer.zero_grad(set_to_none=True)
            return False
        optimizer.step()
        return True

    def state_dict(self) -> dict[str, int]:
        return {"total": self.skips.total, "consecutive": self.skips.consecutive}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.skips.total, self.skips.consecutive = state["total"], state["consecutive"]


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, frac: float, anneal: bool) -> float:
    """Linear annealing to 0 over training (`frac` is the share of training still to go)."""
    lr = base_lr * frac if anneal else base_lr
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
