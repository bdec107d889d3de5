"""The order prompts are drawn in: a fresh seeded permutation every epoch, whose (epoch, pos) is the whole
data position that a checkpoint saves for exact resume (used by the rollout and by PPO-ptx's data)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from rlft.run.seeding import epoch_seed

__all__ = ["PromptStream"]


@dataclass
class PromptStream:
    """Prompts in a fresh seeded permutation every epoch; (epoch, pos) is the whole data position."""

    n: int
    seed: int
    epoch: int = 0
    pos: int = 0
    _order: tuple[int, Tensor] | None = field(default=None, repr=False)

    def order(self) -> Tensor:
        if self._order is None or self._order[0] != self.epoch:
            gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            self._order = (self.epoch, torch.randperm(self.n, generator=gen))
        return self._order[1]

    def take(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
            m = min(k - len(out), self.n - self.pos)
            out += self.order()[self.pos : self.pos + m].tolist()
            self.pos += m
        return out

    def state_dict(self) -> dict[str, int]:
        return {"n": self.n, "seed": self.seed, "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["n"] != self.n or state["seed"] != self.seed:
            raise ValueError(
                f"checkpoint data position is for {state['n']} prompts with seed {state['seed']}, "
                f"but this run has {self.n} prompts and seed {self.seed}"
            )
        self.epoch, self.pos = state["epoch"], state["pos"]
