"""One scoring API over many reward sources: ``build_rewards(specs)(prompts, completions, rows=...)``.

    total_i = Σ_f w_f · r_f,i   over the functions f that returned a value for sample i

``None`` from a function means "no reward for this sample from me": it is left out of the sum (not
counted as 0) and shows as NaN in ``per_function``. A sample no function scored has total NaN and
``valid`` False. NaN or ±inf from a function, or a wrong number of values, raise :class:`RewardError`;
with ``on_invalid="skip"`` the affected samples are instead marked invalid (total NaN) and counted in
``skipped`` — the trainer then leaves them out of the update.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from rlft.data.formats import Completion, Prompt

from .calling import call_reward, describe_sample, to_values
from .errors import RewardError
from .pool import RewardPool
from .spec import RewardSpec, default_name, make_function, parse_spec

__all__ = ["ON_INVALID", "RewardResult", "RewardSet", "build_rewards"]

ON_INVALID = ("error", "skip")


@dataclass
class RewardResult:
    """Rewards of one batch. ``total`` and each ``per_function`` entry are float32 (B,), NaN where absent."""

    total: torch.Tensor
    per_function: dict[str, torch.Tensor]
    valid: torch.Tensor  # bool (B,): the sample has a reward and was not skipped
    skipped: int  # samples skipped for NaN/inf/wrong counts (on_invalid="skip")

    def means(self) -> dict[str, float]:
        """Mean of each function over the samples it scored, and of the total over valid samples (for logs)."""
        out = {}
        for name, values in {"total": self.total, **self.per_function}.items():
            present = values[~values.isnan()]
            out[name] = float(present.mean()) if present.numel() else float("nan")
        return out


class RewardSet:
    """Weighted reward functions behind one call. Build it with :func:`build_rewards`."""

    def __init__(self, specs: list[RewardSpec], on_invalid: str = "error"):
        if on_invalid not in ON_INVALID:
            raise RewardError(f"on_invalid={on_invalid!r}: expected one of {', '.join(ON_INVALID)}")
        if not specs:
            raise RewardError("no reward functions given (expected at least one spec)")
        self.on_invalid = on_invalid
        self.specs = specs
        self.functions: list[Callable[..., object]] = []
        self.pools: dict[str, RewardPool] = {}
        self.names: list[str] = []
        self.weights: dict[str, float] = {}
        try:
            for spec in specs:
                fn = make_function(spec)  # also in the parent when pooled: fail on a bad spec right here
                name = default_name(spec, fn)
                if name in self.weights:
                    raise RewardError(f"{spec.where}: a second reward named {name!r}; give one an alias")
                self.functions.append(fn)
                self.names.append(name)
                self.weights[name] = spec.weight
                if spec.processes:
                    self.pools[name] = RewardPool(spec, name)
        except BaseException:
            self.close()
            raise

    def __call__(
        self,
        prompts: Sequence[Prompt],
        completions: Sequence[Completion],
        rows: dict[str, Sequence[object]] | None = None,
        completion_lengths: Sequence[int] | None = None,
    ) -> RewardResult:
        n = len(completions)
        if len(prompts) != n:
            raise RewardError(
                f"got {len(prompts)} prompts for {n} completions (expected one prompt per completion)"
            )
        fields: dict[str, object] = {}
        for key, values in (rows or {}).items():
            if isinstance(values, str) or not isinstance(values, Sequence) or len(values) != n:
                got = len(values) if isinstance(values, Sequence) else type(values).__name__
                raise RewardError(
                    f"row field {key!r}: expected a list of {n} values (one per completion), got {got}"
                )
            fields[key] = list(values)
        if completion_lengths is not None:
            if len(completion_lengths) != n:
                raise RewardError(
                    f"completion_lengths: expected {n} token counts, got {len(completion_lengths)}"
                )
            fields["completion_lengths"] = [int(x) for x in completion_lengths]

        per_function: dict[str, torch.Tensor] = {}
        bad = torch.zeros(n, dtype=torch.bool)
        total = torch.zeros(n, dtype=torch.float64)
        scored = torch.zeros(n, dtype=torch.bool)
        for fn, name, spec in zip(self.functions, self.names, self.specs, strict=True):
            if name in self.pools:
                raw = self.pools[name](prompts, completions, fields)
            else:  # only a user's function can hang; ours run without the timeout's thread
                timeout = spec.timeout if spec.kind == "function" else None
                raw = call_reward(fn, name, prompts, completions, fields, timeout=timeout)
            if len(raw) != n:
                if self.on_invalid == "error":
                    raise RewardError(
                        f"reward function {name!r} returned {len(raw)} values for {n} completions"
                    )
                bad[:] = True
                per_function[name] = torch.full((n,), math.nan)
                continue
            values = to_values(name, raw, prompts, completions)
            column = torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float64)
            nonfinite = torch.isinf(column) | (column.isnan() & torch.tensor([v is not None for v in values]))
            if bool(nonfinite.any()):
                i = int(nonfinite.nonzero()[0])
                if self.on_invalid == "error":
                    raise RewardError(
                        f"reward function {name!r} returned {values[i]} for "
                        f"{describe_sample(prompts, completions, i)} (expected a finite number or None)"
                    )
                bad |= nonfinite
                column[nonfinite] = math.nan
            present = ~column.isnan()
            total[present] += self.weights[name] * column[present]
            scored |= present
            per_function[name] = column.float()
        valid = scored & ~bad
        total[~valid] = math.nan
        return RewardResult(
            total=total.float(), per_function=per_function, valid=valid, skipped=int(bad.sum())
        )

    def place(self, device: torch.device) -> None:
        """Move the reward models scored in this process to ``device`` (the trainer's); functions run in
        worker pools keep their own."""
        from .reward_model import RewardModelFunction

        for fn in self.functions:
            if isinstance(fn, RewardModelFunction):
                torch.nn.Module.to(fn.model, device)

    def close(self) -> None:
        """Shut down any process pools (idempotent)."""
        for pool in self.pools.values():
            pool.close()
        self.pools = {}

    def __enter__(self) -> RewardSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        parts = [f"{w:g}·{n}" for n, w in self.weights.items()]
        return f"RewardSet({' + '.join(parts)}, on_invalid={self.on_invalid!r})"


def build_rewards(specs: object, on_invalid: str = "error") -> RewardSet:
    """A :class:`RewardSet` from a list of specs (strings or mappings, straight from YAML; a single spec
    is accepted too). See ``rlft.rewards.spec`` for the forms."""
    if isinstance(specs, str | dict):
        specs = [specs]
    if not isinstance(specs, Sequence):
        raise RewardError(f"rewards: expected a list of reward specs, got {type(specs).__name__}")
    return RewardSet([parse_spec(s, i) for i, s in enumerate(specs)], on_invalid=on_invalid)
