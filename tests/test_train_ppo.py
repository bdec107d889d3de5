"""RLHF-PPO as the ``ppo`` preset of the online RL trainer: the DeepSpeed-Chat worked example through the
trainer's estimate stage, the critic (separate and shared backbone), PPO-ptx, the adaptive KL controller,
and exact resume with a critic."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch
from micro_models import save_micro_llama
from rl_cases import rl_config, rl_replace, weights

from rlft.algos import (
    AdvantageState,
    explained_variance,
    gae,
    global_normalizer,
    masked_whiten,
    ppo_clip_loss,
    shaped_token_rewards,
    value_loss,
)
from rlft.models import (
    load_causal_lm,
    load_tokenizer,
    response_logprobs,
)
from rlft.models.scalar_head import load_reward_model, reward_model_from_causal_lm, save_reward_model
from rlft.run import ConfigError, RunDir, load_config
from rlft.train import KLConfig, RLConfig, RolloutBatch, latest_checkpoint, load_trainer_state, train_rl
from rlft.train.online.config import CriticConfig
from rlft.train.online.critic import Critic
from rlft.train.online.ptx import PtxData
from rlft.train.online.rollout import advantage_step
from rlft.train.online.update import loss_settings, micro_batch_loss, policy_update
from rlft.train.sft.trainer import token_loss_sum

DATA = "task:preference?n=64"
QUIET = {"show_progress": False, "log": lambda _: None}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """A 2-layer, 32-wide Llama whose tokenizer knows the preference task, and a reward model made from it
    (random head, saved normalisation statistics)."""
    root = tmp_path_factory.mktemp("ppo")
    actor = save_micro_llama(root / "actor", "preference", 400, 400)
    tokenizer = load_tokenizer(actor)
    rm = reward_model_from_causal_lm(actor, seed=1)
    with torch.no_grad():
        rm.score.weight.mul_(20.0)  # a reward with spread on random completions
    save_reward_model(rm, tokenizer, root / "rm", norm={"mean": 0.1, "std": 2.0})
    return {"actor": actor, "rm": str(root / "rm")}


def ppo_cfg(models: dict[str, str], **changes) -> RLConfig:
    base = rl_config(
        model=models["actor"],
        data=DATA,
        algorithm="ppo",
        reward_model=models["rm"],
        prompts_per_step=4,
        num_generations=2,
        max_new_tokens=6,
        lr=1e-2,
        max_steps=2,
        eval_samples=8,
        torch_threads=1,
    )
    return rl_replace(base, **changes)


def digest(directory: str) -> str:
    h = hashlib.sha256()
    for path in sorted(Path(directory).rglob("*")):
        if path.is_file():
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def one_row_batch(logp: list[float], ref: list[float], score: float) -> RolloutBatch:
    n = len(logp)
    mask = torch.ones(1, n, dtype=torch.long)
    return RolloutBatch(
        prompt_ids=torch.tensor([[5, 6]]),
        prompt_mask=torch.ones(1, 2, dtype=torch.long),
        response_ids=torch.tensor([[7] * n]),
        response_mask=mask,
        finished=torch.ones(1, dtype=torch.bool),
        group_ids=torch.tensor([0]),
        prompt_index=torch.tensor([0]),
        sampler_logp=torch.tensor([logp]),
        scores=torch.tensor([score]),
        loss_mask=mask.clone(),
        ref_logp=torch.tensor([ref]),
        values=torch.zeros(1, n),
    )


# --- the DeepSpeed-Chat worked example (docs/algorithms.md §KL-shaped rewards), trainer's estimate stage


def test_deepspeed_chat_example_reward_shaping_clipping_and_gae() -> None:
    # β = 0.1, logp = [−1, −2, −0.5], logp_ref = [−1.2, −1.5, −0.5], RM score 7 clipped to c = 5,
    # V ≡ 0, γ = 1, λ = 0.95 ⇒ k1 = [0.2, −0.5, 0], r = [−0.02, 0.05, 5.0], Â = [4.54, 4.8, 5.0].
    cfg = RLConfig(
        model="m", data="d", algorithm="ppo", score_clip=5.0, whiten_advantages=False, kl=KLConfig(coef=0.1)
    ).resolved()
    assert (cfg.advantage, cfg.kl.placement, cfg.kl.estimator, cfg.gamma, cfg.lam) == (
        "gae",
        "reward",
        "k1",
        1.0,
        0.95,
    )
    batch = one_row_batch([-1.0, -2.0, -0.5], [-1.2, -1.5, -0.5], 7.0)
    metrics = advantage_step(cfg, batch, cfg.kl.coef, AdvantageState())
    torch.testing.assert_close(batch.token_rewards, torch.tensor([[-0.02, 0.05, 5.0]]))
    torch.testing.assert_close(batch.advantages, torch.tensor([[4.54, 4.8, 5.0]]))
    torch.testing.assert_close(batch.returns, torch.tensor([[4.54, 4.8, 5.0]]))
    assert metrics["kl_ref_seq"] == pytest.approx(-0.3)
    assert metrics["non_score_reward"] == pytest.approx(0.03)  # −β·Σ k1 = −0.1·(−0.3)
    assert metrics["score"] == pytest.approx(7.0)
    # The critic's first loss on it: V = V_old = 0 ⇒ ½·mean(R²) over the three tokens.
    critic_cfg = dataclasses.replace(cfg, critic=CriticConfig(shared_backbone=True))
    policy = torch.nn.Module()
    policy.config = type("C", (), {"get_text_config": lambda self: type("T", (), {"hidden_size": 4})()})()
    critic = Critic(critic_cfg, policy)
    loss, _ = critic.loss(batch, 3.0, states=torch.randn(1, 3, 4))
    assert float(loss.detach()) == pytest.approx(0.5 * (4.54**2 + 4.8**2 + 25.0) / 3, rel=1e-6)
    # The whitened variant (the preset's default) is masked_whiten of the same advantages.
    batch2 = one_row_batch([-1.0, -2.0, -0.5], [-1.2, -1.5, -0.5], 7.0)
    advantage_step(dataclasses.replace(cfg, whiten_advantages=True), batch2, 0.1, AdvantageState())
    torch.testing.assert_close(
        batch2.advantages, masked_whiten(torch.tensor([[4.54, 4.8, 5.0]]), torch.ones(1, 3))
    )


def test_k3_and_adaptive_coefficient_and_gae_on_a_value_baseline() -> None:
    cfg = RLConfig(model="m", data="d", algorithm="ppo", kl=KLConfig(estimator="k3")).resolved()
    batch = one_row_batch([-1.0, -1.0, -1.0], [-1.5, -1.0, -1.0], 1.0)
    batch.values = torch.tensor([[0.5, 0.6, 0.7]])
    cfg = dataclasses.replace(cfg, whiten_advantages=False)
    advantage_step(cfg, batch, 0.2, AdvantageState())
    k3 = torch.tensor(
        [[0.106531, 0.0, 0.0]]
    )  # docs/algorithms.md §KL worked example: log ρ = −0.5 ⇒ k3 = 0.106531
    rewards = shaped_token_rewards(torch.tensor([1.0]), torch.ones(1, 3), k3, 0.2)
    expected, returns = gae(rewards, batch.values, 1.0, 0.95, torch.ones(1, 3))
    torch.testing.assert_close(batch.advantages, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batch.returns, returns, rtol=1e-5, atol=1e-6)
    assert explained_variance(batch.values, batch.returns, torch.ones(1, 3)) < 1.0


# --- the loss of a PPO micro-batch, by hand ---------------------------------------------------------------


def test_shared_backbone_loss_is_ppo_clip_plus_vf_coef_times_the_clipped_value_loss(models) -> None:
    cfg = ppo_cfg(models, critic=CriticConfig(shared_backbone=True, vf_coef=0.5)).resolved()
    model = load_causal_lm(models["actor"])
    tokenizer = load_tokenizer(models["actor"])
    critic = Critic(cfg, model)
    torch.nn.init.normal_(critic.head.weight, std=0.3, generator=torch.Generator().manual_seed(0))
    ids = tokenizer("Describe the forest briefly:")["input_ids"]
    gen = torch.Generator().manual_seed(0)
    response = torch.randint(4, len(tokenizer), (3, 4), generator=gen)
    mask = (torch.arange(4)[None] < torch.tensor([[4], [2], [3]])).long()
    batch = RolloutBatch(
        prompt_ids=torch.tensor([ids] * 3),
        prompt_mask=torch.ones(3, len(ids), dtype=torch.long),
        response_ids=response * mask,
        response_mask=mask,
        finished=torch.ones(3, dtype=torch.bool),
        group_ids=torch.tensor([0, 1, 2]),
        prompt_index=torch.tensor([0, 1, 2]),
        sampler_logp=torch.zeros(3, 4),
        scores=torch.tensor([1.0, -0.5, 0.3]),
        loss_mask=mask.clone(),
    )
    m = mask.float()
    with torch.no_grad():
        logp = response_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.response_ids, mask)
    batch.old_logp = (logp + 0.3 * torch.randn(3, 4, generator=gen)) * m
    batch.ref_logp = (logp - 0.2 * torch.randn(3, 4, generator=gen).abs()) * m
    batch.values = critic.values(batch, None) + 0.3 * torch.randn(3, 4, generator=gen) * m  # V_old ≠ V
    advantage_step(cfg, batch, cfg.kl.coef, AdvantageState())
    n = global_normalizer(m, "token-mean")
    loss, stats = micro_batch_loss(model, batch, loss_settings(cfg), cfg.kl.coef, n, critic, n)
    # by hand
    logp = response_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.response_ids, mask)
    pg = ppo_clip_loss(logp, batch.old_logp, batch.advantages, m, 0.2, 0.2, aggregation="token-mean")[0]
    from rlft.models.logprobs import hidden_states

    full = torch.cat([batch.prompt_ids, batch.response_ids], 1)
    h = hidden_states(model, full, torch.cat([batch.prompt_mask, mask], 1))[:, len(ids) - 1 : -1]
    v = critic.head(h).squeeze(-1)
    vf = value_loss(v, batch.values, batch.returns, m, 0.2)[0]
    torch.testing.assert_close(loss, pg + 0.5 * vf, rtol=1e-5, atol=1e-6)
    assert stats["vf_clipfrac"] > 0
    # GAE on the KL-shaped rewards, then whitened (the preset), is what the loss used
    kl = (batch.old_logp - batch.ref_logp) * m
    rewards = shaped_token_rewards(batch.scores, m, kl, cfg.kl.coef)
    adv, _ = gae(rewards, batch.values, 1.0, 0.95, m)
    torch.testing.assert_close(batch.advantages, masked_whiten(adv, m), rtol=1e-5, atol=1e-6)


# --- training runs -----------------------------------------------------------------------------------------


def test_short_ppo_run_trains_actor_and_critic_and_leaves_reward_and_reference_alone(
    models, tmp_path
) -> None:
    actor_before, rm_before = digest(models["actor"]), digest(models["rm"])
    logs: list[str] = []
    cfg = ppo_cfg(models, max_steps=3, ppo_epochs=2, num_minibatches=2, score_clip=5.0)
    result = train_rl(cfg, RunDir.create(tmp_path / "run"), show_progress=False, log=logs.append)
    assert any("critic: " + models["rm"] in line for line in logs)  # initialised from the reward model
    assert digest(models["actor"]) == actor_before and digest(models["rm"]) == rm_before
    actor = weights(load_causal_lm(models["actor"]))
    trained = weights(load_causal_lm(str(result.model_dir)))
    assert any(not torch.equal(actor[k], trained[k]) for k in actor)
    rm = weights(load_reward_model(models["rm"])[0])
    critic = weights(load_reward_model(tmp_path / "run" / "critic")[0])
    assert any(not torch.equal(rm[k], critic[k]) for k in rm)
    assert torch.equal(rm["score.weight"], weights(load_reward_model(models["rm"])[0])["score.weight"])
    row = result.last_metrics
    for key in (
        "score",
        "non_score_reward",
        "kl_ref",
        "kl_ref_seq",
        "value_loss",
        "explained_variance",
        "vf_clipfrac",
        "clipfrac_high",
        "approx_kl",
        "entropy",
        "response_len_mean",
        "reward_gold",
        "reward_reward_model",
        "critic_grad_norm",
    ):
        assert key in row, key
    assert row["kl_ref_seq"] != 0.0  # the actor moved away from the frozen reference
    assert row["optimizer_steps"] == 4
    assert "eval_gold_score" in result.final_eval


def test_shared_backbone_with_lora_trains_the_head_and_adapters(models, tmp_path) -> None:
    from rlft.train.online.config import LoRAConfig

    cfg = ppo_cfg(
        models,
        critic=CriticConfig(shared_backbone=True),
        lora=LoRAConfig(r=2, alpha=4.0),
        save_every=2,
    )
    result = train_rl(cfg, RunDir.create(tmp_path / "run"), **QUIET)
    state = load_trainer_state(latest_checkpoint(RunDir.open(tmp_path / "run")))
    head = state["critic"]["weights"]["weight"]
    assert head.shape == (1, 32) and float(head.abs().sum()) > 0  # started at 0
    assert not (tmp_path / "run" / "critic").exists()
    assert "value_loss" in result.last_metrics and "kl_ref" in result.last_metrics


def test_ptx_term_adds_ptx_coef_times_the_nll_gradient(models) -> None:
    cfg = ppo_cfg(models, ptx_data="task:preference?n=32", ptx_coef=0.7, ptx_batch_size=4).resolved()
    tokenizer = load_tokenizer(models["actor"])
    model = load_causal_lm(models["actor"])
    batch = one_row_batch([0.0] * 3, [0.0] * 3, 1.0)
    batch.prompt_ids = torch.tensor([tokenizer("Describe the forest briefly:")["input_ids"]])
    batch.prompt_mask = torch.ones_like(batch.prompt_ids)
    batch.advantages = torch.tensor([[0.5, -0.2, 1.0]])
    results = []
    for ptx in (None, PtxData(cfg, tokenizer)):
        m = copy.deepcopy(model)
        params = list(m.parameters())
        stats = policy_update(
            m,
            torch.optim.SGD(params, lr=0.1),
            params,
            batch,
            loss_settings(cfg),
            kl_coef=0.0,
            ppo_epochs=1,
            num_minibatches=1,
            micro_batch_size=None,
            max_grad_norm=0.0,
            generator=torch.Generator().manual_seed(0),
            ptx=ptx,
        )
        results.append((weights(m), stats))
    assert "ptx_nll" in results[1][1] and "ptx_nll" not in results[0][1]
    # the difference of the two SGD steps is −lr·ptx_coef·∇NLL of the first ptx batch
    again = PtxData(cfg, tokenizer)
    total, n = token_loss_sum(model, again.next_batch())
    (total / n).backward()
    for name, p in model.named_parameters():
        diff = results[1][0][name] - results[0][0][name]
        torch.testing.assert_close(diff, -0.1 * 0.7 * p.grad, rtol=1e-3, atol=1e-6, msg=name)
    assert results[1][1]["ptx_nll"] == pytest.approx(float((total / n).detach()), rel=1e-5)


def test_adaptive_kl_coefficient_moves_toward_its_target(models, tmp_path) -> None:
    coefs = {}
    for name, target in (("low", 1e-4), ("high", 1e4)):
        cfg = ppo_cfg(
            models,
            max_steps=4,
            lr=3e-2,
            kl=KLConfig(coef=0.1, controller="adaptive", target=target, horizon=20.0),
        )
        result = train_rl(cfg, RunDir.create(tmp_path / name), **QUIET)
        coefs[name] = [r["kl_coef"] for r in result.history if "kl_coef" in r]
        kls = [r["kl_ref_seq"] for r in result.history if "kl_ref_seq" in r]
        assert abs(kls[-1]) > 1e-3
    # β·(1 ± 0.2·8/20): the KL far above a tiny target raises β, far below a huge target lowers it.
    assert coefs["high"] == pytest.approx([0.1 * 0.92**i for i in range(4)], rel=1e-6)
    assert coefs["low"][-1] > coefs["low"][1]
    assert coefs["low"][-1] == pytest.approx(coefs["low"][-2] * 1.08, rel=1e-6)


@pytest.mark.parametrize(
    "changes",
    [
        {"ppo_epochs": 2, "num_minibatches": 2, "ptx_data": "task:preference?n=32", "ptx_coef": 0.5},
        {"critic": CriticConfig(shared_backbone=True)},
    ],
    ids=["separate-critic-ptx", "shared-backbone"],
)
def test_resume_equals_an_uninterrupted_run(changes, models, tmp_path) -> None:
    cfg = ppo_cfg(models, max_steps=4, save_every=2, **changes)
    full = train_rl(cfg, RunDir.create(tmp_path / "full"), **QUIET)
    run = RunDir.create(tmp_path / "cut")
    cut = train_rl(cfg, run, stop_after=3, **QUIET)
    assert cut.steps == 3 and not cut.model_dir.exists()
    resumed = train_rl(cfg, run, resume=True, **QUIET)
    assert resumed.steps == 4
    w_full, w_resumed = (
        weights(load_causal_lm(str(full.model_dir))),
        weights(load_causal_lm(str(resumed.model_dir))),
    )
    for name in w_full:
        assert torch.equal(w_full[name], w_resumed[name]), name
    if not cfg.critic.shared_backbone:
        c_full = weights(load_reward_model(tmp_path / "full" / "critic")[0])
        c_resumed = weights(load_reward_model(tmp_path / "cut" / "critic")[0])
        for name in c_full:
            assert torch.equal(c_full[name], c_resumed[name]), name
    rows = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    full_rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    key = "value_loss"
    assert [r[key] for r in rows if key in r] == [r[key] for r in full_rows if key in r]


# --- configuration ---------------------------------------------------------------------------------------


def test_config_errors_and_yaml(models, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"critic\.init.*needs a reward model"):
        train_rl(
            ppo_cfg(models, reward_model=None, critic=CriticConfig(init="reward_model")),
            RunDir.create(tmp_path / "a"),
            **QUIET,
        )
    with pytest.raises(ConfigError, match=r"ptx\.data"):
        ppo_cfg(models, ptx_coef=1.0).validate()
    with pytest.raises(ConfigError, match=r"critic\.shared_backbone"):
        ppo_cfg(models, critic=CriticConfig(init="reward_model", shared_backbone=True)).validate()
    with pytest.raises(ConfigError, match=r"critic\.value_clip"):
        ppo_cfg(models, critic=CriticConfig(value_clip=-1.0)).validate()
    path = tmp_path / "ppo.yaml"
    path.write_text(
        "model: m\ndata: task:preference\nalgorithm: ppo\nreward_model: rm\nnormalize_score: true\n"
        "critic: {shared_backbone: true, lr: 0.001}\nptx: {data: task:preference, coef: 0.5}\n"
    )
    cfg = load_config(RLConfig, path, overrides=["--critic.vf_coef", "0.2"])
    assert cfg.critic == CriticConfig(shared_backbone=True, lr=0.001, vf_coef=0.2)
    assert cfg.resolved().whiten_advantages is True
    from rlft.train.online.setup import reward_specs

    specs = reward_specs(cfg)
    assert {"reward_model": "rm", "normalize": True} in specs
    assert {"task": "task:preference", "weight": 0.0, "alias": "gold"} in specs


def test_missing_eos_penalty_lowers_the_score_of_truncated_completions(models, tmp_path) -> None:
    cfg = ppo_cfg(models, max_new_tokens=2, max_steps=1)  # 2 tokens: almost every completion is cut
    plain = train_rl(cfg, RunDir.create(tmp_path / "a"), **QUIET).last_metrics
    penalised = train_rl(
        dataclasses.replace(cfg, missing_eos_penalty=3.0), RunDir.create(tmp_path / "b"), **QUIET
    ).last_metrics
    assert plain["clipped_ratio"] > 0
    assert penalised["score"] == pytest.approx(plain["score"] - 3.0 * plain["clipped_ratio"], rel=1e-5)


def test_demo_stage_reports_gold_score_before_and_after(models, tmp_path, capsys) -> None:
    from rlft.commands.demo import ppo_demo_stage

    out = ppo_demo_stage(
        tmp_path,
        models["actor"],
        models["rm"],
        show_progress=False,
        max_steps=2,
        **{"sampling.prompts_per_step": 2, "sampling.num_generations": 2, "sampling.max_new_tokens": 6},
    )
    printed = capsys.readouterr().out
    assert "gold score (hidden)" in printed and "reward-model score" in printed
    assert out["steps"] == 2 and -1.0 <= out["gold_before"] <= 1.0 and -1.0 <= out["gold_after"] <= 1.0
    assert (out["run_dir"] / "critic" / "config.json").is_file() and out["model_dir"].is_dir()
