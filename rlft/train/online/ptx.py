"""PPO-ptx: the pretraining term of InstructGPT's objective (Ouyang et al., arXiv 2203.02155, eq. 2),

    objective(φ) = E_{(x,y)∼π_φ}[r(x,y) − β·log(π_φ(y|x)/π_SFT(y|x))] + γ_ptx·E_{x∼D_pretrain}[log π_φ(x)],

as a loss: + ptx.coef · (token-mean next-token NLL of one batch of ``ptx.data``), added to the loss of every
actor optimiser step (so the step follows the gradient of the whole objective; DeepSpeed-Chat instead takes
a separate step on ``unsup_coef``·NLL after each PPO step). Any ``load_records`` source of SFT or plain
text works, e.g. ``task:preference`` (its SFT demonstrations); labels follow ``rlft sft`` (completion-only
loss on prompt/completion records). The data position is part of the checkpoint (exact resume).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor

from rlft.data import DataError, LengthLimits, collate_sft, encode_sft, load_records
from rlft.data.lengths import cap_length, context_length
from rlft.run import ConfigError
from rlft.run.distributed import rank_share, sum_over_ranks, world
from rlft.run.seeding import ptx_stream_seed
from rlft.train.online.config import RLConfig
from rlft.train.online.prompt_stream import PromptStream
from rlft.train.sft.trainer import token_loss_sum

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["PtxData"]


class PtxData:
    """Batches of ``cfg.ptx.data`` in a seeded order and their loss ``ptx.coef``·NLL."""

    def __init__(self, cfg: RLConfig, tokenizer: PreTrainedTokenizerBase):
        limits = LengthLimits(
            max_total_tokens=cap_length(cfg.ptx.max_tokens, context_length(cfg.model, tokenizer)),
            overflow="truncate",
        )
        if cfg.ptx.data is None:
            raise ConfigError("config key 'ptx.data': expected a data source (ptx.coef > 0), got None")
        records = load_records(cfg.ptx.data, fmt=cfg.ptx.format)
        self.examples = encode_sft(records, tokenizer, limits)
        if len(self.examples) == 0:
            raise DataError(f"ptx.data {cfg.ptx.data}: no examples ({self.examples.report})")
        self.coef = cfg.ptx.coef
        self.batch_size = cfg.ptx.batch_size
        if self.batch_size % world().size:
            raise ConfigError(
                f"config key 'ptx.batch_size': {self.batch_size} examples do not divide over "
                f"{world().size} ranks (batch sizes are global)"
            )
        self.pad_id = int(tokenizer.pad_token_id)
        self.bf16 = cfg.bf16
        self.stream = PromptStream(len(self.examples), ptx_stream_seed(cfg.seed))

    def next_batch(self) -> dict[str, Any]:
        """This rank's share of the next ``batch_size`` examples (all of them on one process)."""
        chosen = rank_share(self.stream.take(self.batch_size), 1)
        return collate_sft([self.examples[i] for i in chosen], self.pad_id)

    def loss(self, model: PreTrainedModel) -> tuple[Tensor, float]:
        """(ptx.coef · token-mean NLL of the next batch, the NLL) for one optimiser step; on several ranks
        both are this rank's share (its tokens' losses over every rank's token count), which sum over
        ranks to the whole batch's."""
        total, n = token_loss_sum(model, self.next_batch(), self.bf16)
        (tokens,) = sum_over_ranks(n)
        nll = total.float() / max(tokens, 1)
        return self.coef * nll, float(nll.detach())

    def state_dict(self) -> dict[str, int]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.stream.load_state_dict(state)
