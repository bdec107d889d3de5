"""The online RL trainer's forward passes: oneDNN linears, the fused body with shared prompts, bfloat16
autocast, the error that names what blocks the fused path, and the packed reference — each against the
model's own forward."""

from __future__ import annotations

import copy

import pytest
import torch
from rl_cases import fixed_batch, micro_rl_model, small_cfg, write_reward_file

from rlft.train.online.update import loss_settings

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return micro_rl_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def reward_file(tmp_path_factory) -> str:
    return write_reward_file(tmp_path_factory.mktemp("rewards"))


def test_onednn_linears_compute_the_same_logprobs_and_gradients(tiny_model) -> None:
    from rlft.models.fused.onednn_linears import use_onednn_linears
    from rlft.models.logprobs import rollout_logprobs

    batch, model = fixed_batch(tiny_model)
    fast, frozen = copy.deepcopy(model), copy.deepcopy(model)
    assert use_onednn_linears(fast) == 15 and use_onednn_linears(frozen, frozen=True) == 15
    grads = []
    for m in (model, fast):
        logp, _ = rollout_logprobs(m, batch.responses, batch.loss_mask)
        logp.sum().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
        ref = logp.detach()
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-6, msg=name)
    with torch.no_grad():
        expected, _ = rollout_logprobs(model, batch.responses, batch.loss_mask)
        packed, _ = rollout_logprobs(frozen, batch.responses, batch.loss_mask)
    torch.testing.assert_close(ref, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed, expected, rtol=1e-5, atol=1e-5)


def test_shared_prompt_and_fused_passes_give_the_same_logprobs_and_gradients(tiny_model) -> None:
    from rlft.models.logprobs import rollout_logprobs

    batch, model = fixed_batch(tiny_model)
    batch = batch.select([3, 0, 5, 1, 4, 2])  # groups interleaved, prompts of different lengths
    results = {}
    for share, forward in ((False, "hf"), (True, "hf"), (False, "fast"), (True, "fast")):
        logp, _ = rollout_logprobs(
            model, batch.responses, batch.loss_mask, share_prompts=share, forward=forward
        )
        (logp * torch.arange(1.0, 7.0)[:, None]).sum().backward()
        results[share, forward] = (logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
        model.zero_grad()
    expected_logp, expected_grads = results.pop((False, "hf"))  # the model's own forward, one row each
    for key, (logp, grads) in results.items():
        torch.testing.assert_close(logp, expected_logp, rtol=1e-5, atol=2e-5, msg=str(key))
        for name, g in expected_grads.items():
            torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-6, msg=f"{key} {name}")


def test_fused_forward_under_bf16_autocast_stays_close_to_float32(tiny_model) -> None:
    from rlft.models.logprobs import rollout_logprobs

    batch, model = fixed_batch(tiny_model)
    with torch.no_grad():
        exact, _ = rollout_logprobs(model, batch.responses, batch.loss_mask, forward="hf")
        fused_bf16, _ = rollout_logprobs(model, batch.responses, batch.loss_mask, bf16=True, forward="fast")
    error = float((fused_bf16 - exact).abs().max())
    assert 0 < error < 0.05  # bfloat16 matmuls really ran, and the result is the same function


def test_forward_fast_names_what_blocks_it(tiny_model) -> None:
    from peft import LoraConfig, get_peft_model

    from rlft.models import ModelError
    from rlft.models.logprobs import rollout_logprobs

    batch, model = fixed_batch(tiny_model)
    lora = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ModelError, match=r"forward='fast' is not possible.*LoRA"):
        rollout_logprobs(lora, batch.responses, batch.loss_mask, forward="fast")


def test_reference_packs_its_fused_weights_once_and_computes_the_same_logprobs(
    tiny_model, reward_file
) -> None:
    from rlft.models.forward_path import plan_for
    from rlft.models.logprobs import rollout_logprobs
    from rlft.train.online.update import Reference

    batch, policy = fixed_batch(tiny_model)
    cfg = small_cfg(tiny_model, reward_file).resolved()
    reference = Reference(cfg, policy)
    plan = plan_for("rl", policy, cfg, reference=reference)
    reference.follow(plan, cfg.bf16)  # the run's plan decides the packing
    settings = loss_settings(cfg, plan)
    ref_logp = reference.logprobs(batch, settings, None)
    assert reference.frozen is not None  # the packed body was built and used
    with torch.no_grad():
        expected, _ = rollout_logprobs(policy, batch.responses, batch.response_mask, forward="hf")
    torch.testing.assert_close(ref_logp, expected, rtol=0, atol=2e-5)
