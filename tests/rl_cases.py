"""Shared cases of the RL trainer tests: a micro Llama, a reward file, a small config and a fixed batch of
rollouts (2 prompts × 3 responses) with π_old and π_ref set off the policy."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from micro_models import save_micro_llama

from rlft.models import load_causal_lm, load_tokenizer, response_logprobs
from rlft.train import RLConfig, RolloutBatch

DATA = "task:arithmetic?max_operand=9&n=64"

# A reward with variance on an untrained model's gibberish: the fraction of digit characters.
REWARD_SOURCE = """
def digits(prompts, completions, **fields):
    return [sum(c.isdigit() for c in t) / max(len(t), 1) for t in completions]

def wrong_count(prompts, completions, **fields):
    return [0.0] * (len(completions) - 1)

def nan_reward(prompts, completions, **fields):
    return [float("nan")] + [0.0] * (len(completions) - 1)
"""


def micro_rl_model(root: Path) -> str:
    """A 2-layer, 32-wide Llama with a byte-level tokenizer: fast enough for many short runs."""
    return save_micro_llama(root / "model", "arithmetic", 300, 280)


def write_reward_file(root: Path) -> str:
    path = root / "rewards_fn.py"
    path.write_text(REWARD_SOURCE)
    return str(path)


def rl_replace(cfg: RLConfig, **changes) -> RLConfig:
    """``dataclasses.replace`` of an RLConfig that also takes the keys of its sections by their flat names
    (``lr=``, ``eval_every=``, ``ptx_coef=``, ``forward=``, …), each put in its section as
    ``RLConfig.RENAMED`` places it; a whole section (``sampling=SamplingConfig(…)``) is taken as it is."""
    top: dict = {}
    sections: dict[str, dict] = {}
    for key, value in changes.items():
        section, _, name = RLConfig.RENAMED.get(key, key).rpartition(".")
        if section:
            sections.setdefault(section, {})[name] = value
        else:
            top[key] = value
    for section, values in sections.items():
        top[section] = dataclasses.replace(top.get(section, getattr(cfg, section)), **values)
    return dataclasses.replace(cfg, **top)


def rl_config(**keys) -> RLConfig:
    """An RLConfig from keyword arguments, section keys by their flat names (:func:`rl_replace`)."""
    return rl_replace(RLConfig(), **keys)


def small_cfg(model: str, reward_file: str, **changes) -> RLConfig:
    base = rl_config(
        model=model,
        data=DATA,
        rewards=[{"function": f"{reward_file}:digits"}],
        prompts_per_step=2,
        num_generations=4,
        max_new_tokens=6,
        lr=1e-2,
        max_steps=2,
        eval_samples=8,
        torch_threads=1,
    )
    return rl_replace(base, **changes)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fixed_batch(tiny_model: str) -> tuple[RolloutBatch, torch.nn.Module]:
    """2 prompts × 3 responses of lengths 1..4 with fixed token ids, rewards, π_old and π_ref."""
    model = load_causal_lm(tiny_model)
    tokenizer = load_tokenizer(tiny_model)
    prompts = [tokenizer("3+4=")["input_ids"], tokenizer("12+5=")["input_ids"]]
    width = max(map(len, prompts))
    prompt_ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts]).repeat_interleave(3, 0)
    prompt_mask = (prompt_ids != 0).long()
    gen = torch.Generator().manual_seed(0)
    response_ids = torch.randint(4, len(tokenizer), (6, 4), generator=gen)
    lengths = torch.tensor([4, 2, 3, 1, 4, 2])
    response_mask = (torch.arange(4)[None] < lengths[:, None]).long()
    response_ids = response_ids * response_mask
    batch = RolloutBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        finished=torch.ones(6, dtype=torch.bool),
        group_ids=torch.tensor([0, 0, 0, 1, 1, 1]),
        prompt_index=torch.tensor([5, 5, 5, 9, 9, 9]),
        sampler_logp=torch.zeros(6, 4),
        scores=torch.tensor([1.0, 0.0, 0.5, 0.0, 0.0, 1.0]),
        baseline_scores=torch.tensor([0.5, 0.5, 0.5, 1.0, 1.0, 1.0]),
        loss_mask=response_mask.clone(),
    )
    with torch.no_grad():
        logp = response_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask)
    m = response_mask.float()
    # π_old off the current policy (as after earlier mini-batches) so that clipping is exercised.
    batch.old_logp = (logp + 0.3 * torch.randn(6, 4, generator=gen)) * m
    batch.ref_logp = (logp - 0.2 * torch.randn(6, 4, generator=gen).abs()) * m
    return batch, model
