"""How every language-model trainer is called and how it opens, written once.

The four trainers (SFT, reward model, DPO family, online RL) share one calling convention::

    train_x(cfg, run, resume=False, show_progress=True, stop_after=None, log=None)

and one opening: hold the run directory, check the config, set torch's thread count and every seed.
:func:`lm_trainer` gives a trainer's body both; the body is ``body(cfg, call)`` with the rest of the
arguments in one :class:`TrainerCall`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch

from rlft.data import set_chat_template_kwargs
from rlft.models import load_tokenizer
from rlft.run import RunDir, seed_everything
from rlft.run.device import resolve_device
from rlft.run.distributed import is_main
from rlft.train.common.checkpoint import latest_checkpoint
from rlft.train.common.run_control import owns_run

__all__ = ["LMTrainer", "TrainerCall", "TrainerConfig", "chat_tokenizer", "lm_trainer"]


class TrainerConfig(Protocol):
    """What the opening reads of a trainer's config."""

    seed: int
    torch_threads: int  # 0 leaves torch's default
    device: str  # auto | cpu | cuda | cuda:N (rlft.run.device)

    def validate(self) -> None: ...


C = TypeVar("C", bound=TrainerConfig)
R = TypeVar("R")
C_contra = TypeVar("C_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)


@dataclass(frozen=True)
class TrainerCall:
    """The arguments of one trainer call besides its config."""

    run: RunDir
    command: str  # the trainer's CLI command, named in the resume hint of an interrupted run
    resume: bool  # continue from the newest complete checkpoint in ``run`` (from the start if none)
    show_progress: bool
    stop_after: (
        int | None
    )  # end after this many steps without the final save, as a crash would (resume tests)
    say: Callable[[str], None]  # where the trainer's one-line reports go
    device: torch.device  # where this rank's models compute (the config's ``device``, resolved)

    def resume_checkpoint(self) -> Path | None:
        """The checkpoint to continue from: the newest complete one when resuming, else None."""
        return latest_checkpoint(self.run) if self.resume else None


class LMTrainer(Protocol[C_contra, R_co]):
    """The calling convention of every language-model trainer."""

    def __call__(
        self,
        cfg: C_contra,
        run: RunDir,
        resume: bool = False,
        show_progress: bool = True,
        stop_after: int | None = None,
        log: Callable[[str], None] | None = None,
    ) -> R_co: ...


def lm_trainer(command: str) -> Callable[[Callable[[C, TrainerCall], R]], LMTrainer[C, R]]:
    """Decorate ``body(cfg, call)`` into the trainer ``command``, called as :class:`LMTrainer`: it holds
    the run directory for the call (:func:`owns_run`), validates ``cfg`` (before anything global changes,
    so a bad ``torch_threads`` is a config error), resolves ``device`` (a missing GPU is a config error
    too), sets ``torch_threads`` (0: torch's default) and seeds every RNG with ``cfg.seed``; ``log``
    defaults to stderr."""

    def decorate(body: Callable[[C, TrainerCall], R]) -> LMTrainer[C, R]:
        def trainer(
            cfg: C,
            run: RunDir,
            resume: bool = False,
            show_progress: bool = True,
            stop_after: int | None = None,
            log: Callable[[str], None] | None = None,
        ) -> R:
            cfg.validate()
            device = resolve_device(cfg.device)
            if device.type == "cuda":
                torch.cuda.set_device(device)  # NCCL and every allocation without a device go there
            if cfg.torch_threads:
                torch.set_num_threads(cfg.torch_threads)
            seed_everything(cfg.seed)
            say = (log or _to_stderr) if is_main() else _silent  # one rank reports
            return body(cfg, TrainerCall(run, command, resume, show_progress, stop_after, say, device))

        # The body's name, docstring and types, on this function's signature: the one callers use.
        for attribute in ("__module__", "__name__", "__qualname__", "__doc__"):
            setattr(trainer, attribute, getattr(body, attribute))
        trainer.__annotations__ |= {key: body.__annotations__[key] for key in ("cfg", "return")}
        return owns_run(trainer)

    return decorate


def chat_tokenizer(cfg: Any) -> tuple[Any, int]:
    """The tokenizer of ``cfg.model`` with the config's ``chat_template_kwargs``, and its pad id (what
    every batch is padded with)."""
    tokenizer = load_tokenizer(cfg.model)
    set_chat_template_kwargs(tokenizer, cfg.chat_template_kwargs)
    return tokenizer, int(tokenizer.pad_token_id)


def _silent(message: str) -> None:
    pass


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)
