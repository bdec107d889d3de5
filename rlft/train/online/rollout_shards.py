"""The sampling of a rollout's prompts, shard by shard: each shard of a step's prompts is one batch with its
own seed, and each process (each rank under torchrun) samples its own shards, so that how many processes
sample a step does not change what is sampled (``sampling.rollout_shards``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from rlft.data import PromptExample
from rlft.models import Sampler, SamplingParams
from rlft.run import ConfigError
from rlft.run.distributed import all_gather_objects, world
from rlft.run.seeding import shard_seed
from rlft.train.online.rollout_batch import RolloutBatch

__all__ = ["Shards", "first_varied_groups", "sample_round", "sample_shards", "with_seed"]


def sample_round(
    sampler: Sampler,
    examples: Sequence[PromptExample],
    indices: list[int],
    params: SamplingParams,
) -> tuple[RolloutBatch, list[str]]:
    """``params.n`` completions for each of the prompts ``indices`` (dataset positions)."""
    rollout = sampler.sample([examples[i].prompt_ids for i in indices], params)
    batch = RolloutBatch(
        prompt_ids=rollout.prompt_ids,
        prompt_mask=rollout.prompt_mask,
        response_ids=rollout.response_ids,
        response_mask=rollout.response_mask,
        finished=rollout.finished,
        group_ids=rollout.group_ids,
        prompt_index=torch.tensor(indices, dtype=torch.long)[rollout.group_ids],
        sampler_logp=rollout.logprobs,
    )
    return batch, rollout.texts


@dataclass(frozen=True)
class Shards:
    """How a step's prompts are split for sampling: ``count`` equal shards, each sampled as one batch with
    its own seed (:func:`~rlft.run.seeding.shard_seed`); this process samples ``mine`` (a contiguous run,
    rank r's on r of several ranks). One shard of one process is the unsharded rollout."""

    count: int = 1
    mine: tuple[int, ...] = (0,)

    @classmethod
    def of(cls, requested: int, prompts_per_step: int) -> Shards:
        """``sampling.rollout_shards`` (0: one per rank) on this run's ranks."""
        w = world()
        count = requested or w.size
        if count % w.size or prompts_per_step % count:
            raise ConfigError(
                f"config key 'sampling.rollout_shards': {count} shards must divide over {w.size} ranks and "
                f"divide sampling.prompts_per_step = {prompts_per_step} (batch sizes are global)"
            )
        per_rank = count // w.size
        return cls(count, tuple(range(w.rank * per_rank, (w.rank + 1) * per_rank)))


def sample_shards(
    sampler: Sampler,
    examples: Sequence[PromptExample],
    indices: list[int],
    params: SamplingParams,
    shards: Shards,
    pad_id: int,
) -> tuple[RolloutBatch, list[str]]:
    """This process's shards of the step's prompts ``indices`` sampled shard by shard (shard s with seed
    ``shard_seed(params.seed, s)``), in shard order."""
    per = len(indices) // shards.count
    batches, texts = [], []
    for shard in shards.mine:
        seed = None if params.seed is None else shard_seed(params.seed, shard)
        batch, shard_texts = sample_round(
            sampler, examples, indices[shard * per : (shard + 1) * per], with_seed(params, seed)
        )
        batches.append(batch)
        texts.extend(shard_texts)
    return RolloutBatch.concat(batches, pad_id), texts


def first_varied_groups(group_flat: Tensor, wanted: int) -> Tensor:
    """This process's groups (local ids) among the first ``wanted`` groups with reward variance, counted
    over every process's groups in rank (= shard) order."""
    flags = all_gather_objects(group_flat.tolist())
    offset = sum(len(f) for f in flags[: world().rank])
    varied = [i for i, flat in enumerate(f for part in flags for f in part) if not flat][:wanted]
    return torch.tensor(
        [i - offset for i in varied if offset <= i < offset + len(group_flat)], dtype=torch.long
    )


def with_seed(params: SamplingParams, seed: int | None) -> SamplingParams:
    return dataclasses.replace(params, seed=seed)
