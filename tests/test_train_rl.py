"""The online RL trainer: every preset trains and computes the loss rlft.algos gives by hand; micro-batching
does not change the update; DAPO's dynamic sampling; ReMax's greedy baseline; exact resume; bad rewards."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import re

import pytest
import torch
from rl_cases import DATA, fixed_batch, micro_rl_model, small_cfg, weights, write_reward_file

from rlft.algos import (
    ADVANTAGES,
    POLICY_LOSSES,
    AdvantageState,
    SASState,
    aggregate,
    cispo_loss,
    dcpo_loss,
    dcpo_sas_advantages,
    global_normalizer,
    group_normalized_advantages,
    gspo_loss,
    gspo_token_loss,
    kl_k1,
    kl_k3,
    ppo_clip_loss,
    reinforce_loss,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
    sapo_loss,
    shaped_token_rewards,
)
from rlft.models import (
    HFSampler,
    SamplingParams,
    load_causal_lm,
    load_tokenizer,
    response_logprobs,
    sample,
)
from rlft.rewards import RewardError, RewardResult
from rlft.run import ConfigError, RunDir, load_config
from rlft.run.seeding import (
    episode_reset_seed,
    epoch_seed,
    minibatch_seed,
    ptx_stream_seed,
    rollout_seed,
    win_rate_seed,
)
from rlft.train import KLConfig, RLConfig, RolloutBatch, latest_checkpoint, load_trainer_state, train_rl
from rlft.train.online.presets import PRESETS
from rlft.train.online.prompt_stream import PromptStream
from rlft.train.online.rollout import (
    DynamicSamplingError,
    check_advantage,
    collect_rollout,
    estimate_advantages,
    estimator_args,
    needs_critic,
    zero_variance_groups,
)
from rlft.train.online.update import loss_settings, micro_batch_loss, policy_loss_args, policy_update

QUIET = {"show_progress": False, "log": lambda _: None}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return micro_rl_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def reward_file(tmp_path_factory) -> str:
    return write_reward_file(tmp_path_factory.mktemp("rewards"))


# --- the loss of each preset by hand --------------------------------------------------


def hand_loss(preset: str, b: RolloutBatch, logp: torch.Tensor) -> torch.Tensor:
    """The loss of ``preset`` on batch ``b`` spelled out with rlft.algos (docs/algorithms.md §Online RL presets)."""
    m = b.response_mask.float()
    R, g, old, ref = b.scores, b.group_ids, b.old_logp, b.ref_logp
    seq = lambda a: a[:, None] * m  # noqa: E731 - a sequence advantage on every token
    k1_old = kl_k1(old, ref) * m
    if preset == "reinforce":  # first step: the baseline is still 0, so Â = R
        return reinforce_loss(logp, old, seq(R), m, aggregation="seq-mean-token-sum")[0]
    if preset == "rloo":  # sequence-level k1 in the reward, β = 0.03
        a = rloo_advantages(R - 0.03 * k1_old.sum(-1), g)
        return reinforce_loss(logp, old, seq(a), m, aggregation="seq-mean-token-sum")[0]
    if preset == "remax":
        return reinforce_loss(logp, old, seq(R - b.baseline_scores), m, aggregation="seq-mean-token-sum")[0]
    if preset == "reinforce_pp":
        a = reinforce_pp_advantages(shaped_token_rewards(R, m, k1_old, 0.001), m)[0]
        return ppo_clip_loss(logp, old, a, m, 0.2, 0.2, aggregation="token-mean")[0]
    if preset == "reinforce_pp_baseline":
        a = reinforce_pp_baseline_advantages(R, g, m, k1_old, 0.001)[0]
        return ppo_clip_loss(logp, old, a, m, 0.2, 0.2, aggregation="token-mean")[0]
    a = seq(group_normalized_advantages(R, g, "group"))
    if preset == "grpo":
        pg = ppo_clip_loss(logp, old, a, m, 0.2, 0.2, aggregation="seq-mean-token-mean")[0]
        return pg + 0.04 * aggregate(kl_k3(logp, ref), m, "seq-mean-token-mean")
    if preset == "dr_grpo":
        a = seq(group_normalized_advantages(R, g, "none"))
        return ppo_clip_loss(logp, old, a, m, 0.2, 0.2, aggregation="seq-mean-token-sum-norm", max_len=4)[0]
    if preset == "dapo":
        return ppo_clip_loss(logp, old, a, m, 0.2, 0.28, aggregation="token-mean")[0]
    if preset == "gspo":
        return gspo_loss(logp, old, a, m, 3e-4, 4e-4, aggregation="seq-mean-token-mean")[0]
    if preset == "gspo_token":
        return gspo_token_loss(logp, old, a, m, 3e-4, 4e-4, aggregation="seq-mean-token-mean")[0]
    if preset == "sapo":
        return sapo_loss(logp, old, a, m, 1.0, 1.05, aggregation="seq-mean-token-mean")[0]
    if preset == "cispo":
        return cispo_loss(logp, old, a, m, None, 0.2, aggregation="token-mean")[0]
    if preset == "dcpo":
        a = seq(dcpo_sas_advantages(R, g, {0: "5", 1: "9"}, SASState(), unbiased=False))
        return dcpo_loss(logp, old, a, m, 0.16, 0.2, 10.0, 10.0, aggregation="only-token-mean")[0]
    raise AssertionError(f"no hand computation for {preset}")


# The critic-based ``ppo`` preset has its own hand computation in tests/test_train_ppo.py.
@pytest.mark.parametrize("preset", sorted(p for p in PRESETS if p != "ppo"))
def test_preset_loss_equals_hand_computation(preset, tiny_model, reward_file) -> None:
    cfg = small_cfg(tiny_model, reward_file, algorithm=preset, max_new_tokens=4).resolved()
    batch, model = fixed_batch(tiny_model)
    kl = kl_k1(batch.old_logp, batch.ref_logp) if cfg.kl.placement == "reward" else None
    batch.advantages, batch.returns, _ = estimate_advantages(
        cfg.advantage,
        batch,
        kl=kl,
        kl_coef=cfg.kl.coef,
        gamma=cfg.gamma,
        lam=cfg.lam,
        scale=cfg.scale_rewards,
        unbiased=cfg.std_unbiased,
        state=AdvantageState(),
    )
    normalizer = global_normalizer(batch.loss_mask.float(), cfg.aggregation)
    loss, _ = micro_batch_loss(model, batch, loss_settings(cfg), cfg.kl.coef, normalizer)
    logp = response_logprobs(
        model, batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask
    )
    expected = hand_loss(preset, batch, logp)
    assert float(expected.detach()) != 0.0
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    # and the gradients agree too
    g1 = torch.autograd.grad(loss, model.model.embed_tokens.weight)[0]
    g2 = torch.autograd.grad(
        hand_loss(
            preset,
            batch,
            response_logprobs(
                model, batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask
            ),
        ),
        model.model.embed_tokens.weight,
    )[0]
    # two forward implementations (fused vs HF's), float32 rounding apart
    assert g1.abs().max() > 1e-3
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_trains(preset, tiny_model, reward_file, tmp_path) -> None:
    cfg = small_cfg(tiny_model, reward_file, algorithm=preset)
    result = train_rl(cfg, RunDir.create(tmp_path / "run"), **QUIET)
    assert result.steps == 2
    before, after = load_causal_lm(tiny_model), load_causal_lm(str(result.model_dir))
    changed = [
        n
        for (n, a), b in zip(before.state_dict().items(), after.state_dict().values(), strict=True)
        if not torch.equal(a, b)
    ]
    assert changed, f"{preset}: no parameter changed"
    row = result.last_metrics
    for key in (
        "reward",
        "reward_std",
        "reward_digits",
        "entropy",
        "clipfrac_low",
        "clipfrac_high",
        "response_len_mean",
        "response_len_max",
        "clipped_ratio",
        "zero_var_groups",
        "time_sample",
        "time_score",
        "time_reference",
        "time_update",
        "tokens_per_s",
        "grad_norm",
    ):
        assert key in row, f"{preset}: metric {key} missing"
    assert ("kl_ref" in row) == (PRESETS[preset]["kl"]["coef"] > 0)
    assert "eval_accuracy" in result.final_eval


# --- micro-batching, dynamic sampling, ReMax ------------------------------------------------------------


@pytest.mark.parametrize("preset", ["grpo", "dapo", "dr_grpo", "dcpo"])
def test_micro_batch_size_does_not_change_the_update(preset, tiny_model, reward_file) -> None:
    cfg = small_cfg(tiny_model, reward_file, algorithm=preset, max_new_tokens=4).resolved()
    batch, model = fixed_batch(tiny_model)
    batch.advantages = torch.randn(6, 4, generator=torch.Generator().manual_seed(1)) * batch.loss_mask
    results = []
    for micro in (None, 1, 4):
        m = copy.deepcopy(model)
        params = [p for p in m.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=0.5)  # linear in the gradient (Adam would magnify float noise)
        stats = policy_update(
            m,
            optimizer,
            params,
            batch,
            loss_settings(cfg),
            kl_coef=cfg.kl.coef,
            ppo_epochs=2,
            num_minibatches=2,
            micro_batch_size=micro,
            max_grad_norm=1.0,
            generator=torch.Generator().manual_seed(0),
        )
        assert stats["optimizer_steps"] == 4
        results.append((weights(m), stats["loss"]))
    start = weights(model)
    assert not torch.equal(results[0][0]["model.embed_tokens.weight"], start["model.embed_tokens.weight"])
    for w, loss in results[1:]:
        assert loss == pytest.approx(results[0][1], rel=1e-4, abs=1e-6)
        for name in w:
            torch.testing.assert_close(w[name], results[0][0][name], rtol=1e-4, atol=1e-6, msg=name)


class ScriptedRewards:
    """A reward set whose value depends on the prompt: prompt rows listed in ``flat`` get 0 for every
    completion (a zero-variance group); others get the completion's digit fraction."""

    names = ("scripted",)

    def __init__(self, flat_answers: set[str]):
        self.flat = flat_answers

    def __call__(self, prompts, completions, rows=None, completion_lengths=None) -> RewardResult:
        values = [
            0.0 if a in self.flat else (sum(c.isdigit() for c in t) + 1) / (len(t) + 2) + i * 1e-3
            for i, (a, t) in enumerate(zip(rows["answer"], completions, strict=True))
        ]
        total = torch.tensor(values)
        return RewardResult(total, {"scripted": total}, torch.ones(len(values), dtype=torch.bool), 0)


def _examples(tiny_model: str, n: int = 16):
    from rlft.data import encode_prompts, load_records

    records = load_records(f"task:arithmetic?max_operand=9&n={n}", fmt="prompt_only")
    return list(encode_prompts(records, load_tokenizer(tiny_model)))


def test_dynamic_sampling_keeps_only_groups_with_variance_and_stops_at_its_cap(tiny_model) -> None:
    examples = _examples(tiny_model)
    sampler = HFSampler(load_causal_lm(tiny_model), load_tokenizer(tiny_model))
    params = SamplingParams(max_new_tokens=4, n=4)
    flat = {e.extra["answer"] for e in examples[::2]}  # about half the prompts give all-equal rewards
    stream = PromptStream(len(examples), seed=0)
    batch, stats = collect_rollout(
        sampler, ScriptedRewards(flat), examples, stream, params, 4, 0, dynamic_sampling=True, max_rounds=10
    )
    assert torch.unique(batch.group_ids).numel() == 4 and len(batch) == 16
    assert not bool(zero_variance_groups(batch.scores, batch.group_ids).any())
    assert stats.rounds >= 2 and stats.zero_variance > 0
    assert all(examples[int(i)].extra["answer"] not in flat for i in batch.prompt_index)
    # every group flat: the cap stops it, with a message that says what to change
    everything = {e.extra["answer"] for e in examples}
    with pytest.raises(DynamicSamplingError, match=r"0 of 4 prompt groups.*3 rounds.*max_sample_rounds=3"):
        collect_rollout(
            sampler,
            ScriptedRewards(everything),
            examples,
            PromptStream(len(examples), 0),
            params,
            4,
            0,
            dynamic_sampling=True,
            max_rounds=3,
        )


def test_remax_baseline_is_the_reward_of_the_greedy_decode(tiny_model) -> None:
    examples = _examples(tiny_model)
    model, tokenizer = load_causal_lm(tiny_model), load_tokenizer(tiny_model)
    rewards = ScriptedRewards(set())
    params = SamplingParams(max_new_tokens=5, n=3, temperature=1.5)
    batch, _ = collect_rollout(
        HFSampler(model, tokenizer),
        rewards,
        examples,
        PromptStream(len(examples), 0),
        params,
        4,
        0,
        greedy_baseline=True,
        seed=3,
    )
    picked = PromptStream(len(examples), 0).take(4)
    greedy = sample(
        model,
        tokenizer,
        [examples[i].prompt_ids for i in picked],
        SamplingParams(max_new_tokens=5, greedy=True),
    )
    expected = rewards(
        None, greedy.texts, rows={"answer": [examples[i].extra["answer"] for i in picked]}
    ).total
    torch.testing.assert_close(batch.baseline_scores, expected[batch.group_ids])
    assert not torch.equal(batch.scores, batch.baseline_scores)  # sampled completions differ from greedy
    adv, _, _ = estimate_advantages(
        "remax",
        batch,
        kl=None,
        kl_coef=0.0,
        gamma=1.0,
        lam=1.0,
        scale="group",
        unbiased=None,
        state=AdvantageState(),
    )
    m = batch.loss_mask.float()
    torch.testing.assert_close(adv, (batch.scores - expected[batch.group_ids])[:, None] * m)


# --- resume, errors, config -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"algorithm": "dcpo", "ppo_epochs": 2, "num_minibatches": 2},  # SAS state, shuffled mini-batches
        {"algorithm": "grpo", "kl": KLConfig(controller="adaptive", target=0.01, horizon=10.0)},
        {"algorithm": "reinforce"},  # the moving-average baseline
    ],
    ids=["dcpo", "grpo-adaptive-kl", "reinforce"],
)
def test_resume_equals_an_uninterrupted_run(changes, tiny_model, reward_file, tmp_path) -> None:
    cfg = small_cfg(tiny_model, reward_file, max_steps=5, save_every=2, warmup_steps=2, **changes)
    full = train_rl(cfg, RunDir.create(tmp_path / "full"), **QUIET)
    run = RunDir.create(tmp_path / "cut")
    cut = train_rl(cfg, run, stop_after=3, **QUIET)  # "crash" after step 3
    assert cut.steps == 3 and not cut.model_dir.exists()
    assert latest_checkpoint(run).name == "step-2"
    state = load_trainer_state(latest_checkpoint(run))
    if cfg.algorithm == "dcpo":
        assert len(state["advantage_state"]["sas"]) == 4  # 2 steps × 2 prompts seen
    resumed = train_rl(cfg, run, resume=True, **QUIET)
    assert resumed.steps == 5
    w_full = weights(load_causal_lm(str(full.model_dir)))
    w_resumed = weights(load_causal_lm(str(resumed.model_dir)))
    for name in w_full:
        assert torch.equal(w_full[name], w_resumed[name]), name
    rows = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    assert [r["step"] for r in rows if "reward" in r] == [1, 2, 3, 4, 5]
    full_rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["reward"] for r in rows if "reward" in r] == [r["reward"] for r in full_rows if "reward" in r]


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("wrong_count", r"'wrong_count' returned 7 values for 8 completions"),
        ("nan_reward", r"'nan_reward'.*nan"),
    ],
)
def test_a_bad_reward_function_fails_clearly(function, message, tiny_model, reward_file, tmp_path) -> None:
    cfg = small_cfg(tiny_model, reward_file, rewards=[{"function": f"{reward_file}:{function}"}])
    with pytest.raises(RewardError, match=message):
        train_rl(cfg, RunDir.create(tmp_path / "run"), **QUIET)


def test_cli_reports_errors_in_one_line(tiny_model, reward_file, tmp_path, capsys) -> None:
    from rlft.cli import main

    config = tmp_path / "rl.yaml"
    config.write_text(
        f"model: {tiny_model}\ndata: '{DATA}'\nrewards: [{{function: '{reward_file}:wrong_count'}}]\n"
        "sampling: {prompts_per_step: 2, num_generations: 2, max_new_tokens: 3}\nmax_steps: 1\ntorch_threads: 1\n"
    )
    code = main(["rl", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert re.fullmatch(
        r"rlft: error: reward function 'wrong_count' returned \d+ values for \d+ completions", err[-1]
    )
    assert main(["rl", "--config", str(config), "--algorithm", "ppo2", "--out", str(tmp_path / "r2")]) == 2
    assert "expected 'custom' or a preset" in capsys.readouterr().err


def test_config_presets_and_overrides(tiny_model) -> None:
    cfg = load_config(
        RLConfig,
        overrides=[
            "--model",
            tiny_model,
            "--data",
            DATA,
            "--algorithm",
            "dapo",
            "--clip_high",
            "0.3",
            "--kl.coef",
            "0.01",
            "--kl.placement",
            "loss",
        ],
    )
    r = cfg.resolved()
    assert (r.advantage, r.policy_loss, r.aggregation) == ("group_norm", "ppo_clip", "token-mean")
    assert (r.clip_low, r.clip_high, r.dynamic_sampling, r.overlong_buffer) == (0.2, 0.3, True, 0.2)
    assert (r.kl.placement, r.kl.estimator, r.kl.coef) == ("loss", "k3", 0.01)
    assert cfg.preset_overrides() == {"clip_high": 0.3, "kl.placement": "loss", "kl.coef": 0.01}
    with pytest.raises(ConfigError, match=r"'advantage'.*algorithm 'custom' sets no default"):
        load_config(RLConfig, overrides=["--model", "m", "--data", "d", "--algorithm", "custom"])
    custom = load_config(
        RLConfig,
        overrides=[
            "--model",
            "m",
            "--data",
            "d",
            "--algorithm",
            "custom",
            "--advantage",
            "rloo",
            "--policy_loss",
            "cispo",
            "--aggregation",
            "token-mean",
        ],
    ).resolved()
    assert custom.kl.placement == "none" and custom.clip_low == 0.2
    with pytest.raises(ConfigError, match=r"policy_loss.*one of"):
        load_config(RLConfig, overrides=["--model", "m", "--data", "d", "--policy_loss", "ppo2"])
    with pytest.raises(ConfigError, match=r"num_generations.*at least 2"):
        load_config(RLConfig, overrides=["--model", "m", "--data", "d", "--sampling.num_generations", "1"])


def test_presets_listing_and_algorithm_description_read_the_sections(capsys) -> None:
    from rlft.cli import main
    from rlft.train.online.setup import describe_algorithm

    assert main(["rl", "--presets"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert len(listing) == len(PRESETS)
    assert listing[sorted(PRESETS).index("ppo")] == (
        "ppo                    advantage=gae, policy_loss=ppo_clip, clip_low=0.2, clip_high=0.2, "
        "aggregation=token-mean, kl={'placement': 'reward', 'estimator': 'k1', 'coef': 0.05}, "
        "whiten_advantages=True"
    )
    ppo = load_config(RLConfig, overrides={"model": "m", "data": "d", "algorithm": "ppo"})
    assert describe_algorithm(ppo) == (
        "algorithm ppo: advantage=gae, policy_loss=ppo_clip, clip=0.2/0.2, kl=k1 in the reward, β=0.05, "
        "aggregation=token-mean, G=8 × 8 prompts, ≤32 tokens at τ=1, μ=1 × 1 mini-batch(es), advantages "
        "whitened, critic (init auto, ε_v=0.2, γ=1, λ=0.95), lr=1e-06"
    )
    grpo = load_config(
        RLConfig,
        overrides={
            "model": "m",
            "data": "task:arithmetic",
            "clip_low": 0.3,
            "kl.coef": 0.1,
            "entropy_coef": 0.01,
            "mask_truncated": True,
            "optim": {"lr": 2e-6, "ppo_epochs": 2},
            "sampling": {
                "prompts_per_step": 3,
                "num_generations": 4,
                "max_new_tokens": 16,
                "temperature": 0.7,
            },
            "ptx": {"data": "task:preference", "coef": 0.5},
        },
    )
    assert describe_algorithm(grpo) == (
        "algorithm grpo: advantage=group_norm (scale group), policy_loss=ppo_clip, clip=0.3/0.2, kl=k3 in the "
        "loss, β=0.1, aggregation=seq-mean-token-mean, G=4 × 3 prompts, ≤16 tokens at τ=0.7, μ=2 × 1 "
        "mini-batch(es), truncated completions masked, entropy bonus 0.01, ptx 0.5·NLL(task:preference), "
        "lr=2e-06; changed from the preset: {'clip_low': 0.3, 'kl.coef': 0.1}"
    )


def test_lora_trains_adapters_and_uses_the_base_as_reference(tiny_model, reward_file, tmp_path) -> None:
    from rlft.train import LoRAConfig

    cfg = small_cfg(
        tiny_model,
        reward_file,
        algorithm="grpo",
        lora=LoRAConfig(r=2, target_modules=["q_proj", "v_proj"]),
        max_steps=2,
        save_every=1,
    )
    run = RunDir.create(tmp_path / "run")
    result = train_rl(cfg, run, **QUIET)
    assert (latest_checkpoint(run) / "adapter_config.json").is_file()  # checkpoints hold the adapters
    assert result.last_metrics["kl_ref"] > 0  # the reference (adapters off) differs from the policy
    before, after = weights(load_causal_lm(tiny_model)), weights(load_causal_lm(str(result.model_dir)))
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(n.endswith(("q_proj.weight", "v_proj.weight")) for n in changed)  # merged adapters


def test_weighted_rewards_are_logged_per_function_and_invalid_samples_can_be_skipped(
    tiny_model, reward_file, tmp_path
) -> None:
    cfg = small_cfg(
        tiny_model,
        reward_file,
        rewards=[
            {"function": f"{reward_file}:digits", "weight": 2.0},
            {"function": f"{reward_file}:nan_reward", "alias": "flaky"},
        ],
        on_invalid_reward="skip",
        max_steps=1,
    )
    run = RunDir.create(tmp_path / "run")
    result = train_rl(cfg, run, **QUIET)
    row = json.loads(run.metrics_path.read_text().splitlines()[1])  # line 0: the eval before training
    assert row["reward_skipped"] == 1  # the NaN sample carries no loss instead of stopping the run
    assert {"reward_digits", "reward_digits_std", "reward_flaky"} <= set(row)
    # total = 2·digits + flaky (0 where valid)
    assert row["reward"] == pytest.approx(2 * row["reward_digits"], rel=0.2)
    assert result.steps == 1


def test_entropy_bonus_subtracts_c_times_the_aggregated_entropy(tiny_model, reward_file) -> None:
    from rlft.models.logprobs import token_logprobs

    cfg = small_cfg(tiny_model, reward_file, algorithm="dapo", max_new_tokens=4).resolved()
    batch, model = fixed_batch(tiny_model)
    batch.advantages = torch.ones(6, 4) * batch.loss_mask
    n = global_normalizer(batch.loss_mask.float(), "token-mean")
    plain, _ = micro_batch_loss(model, batch, loss_settings(cfg), 0.0, n)
    bonus, stats = micro_batch_loss(
        model, batch, loss_settings(dataclasses.replace(cfg, entropy_coef=0.1)), 0.0, n
    )
    ids = torch.cat([batch.prompt_ids, batch.response_ids], 1)
    mask = torch.cat([batch.prompt_mask, batch.response_mask], 1)
    _, entropy = token_logprobs(
        model, ids, mask, logits_to_keep_from=batch.prompt_ids.shape[1] - 1, return_entropy=True
    )
    m = batch.loss_mask.float()
    mean_entropy = (entropy * m).sum() / m.sum()
    torch.testing.assert_close(bonus, plain - 0.1 * mean_entropy, rtol=1e-5, atol=1e-6)
    assert stats["entropy"] == pytest.approx(float(mean_entropy), rel=1e-5)


def test_demo_stage_runs_grpo_from_a_model_and_reports_before_and_after(tiny_model, tmp_path, capsys) -> None:
    from rlft.commands.demo import rl_demo_stage

    out = rl_demo_stage(tmp_path, tiny_model, seed=0, show_progress=False, steps=2)
    assert out["steps"] == 2 and (out["model_dir"] / "config.json").is_file()
    assert 0.0 <= out["before"] <= 1.0 and 0.0 <= out["after"] <= 1.0
    assert "greedy acc" in capsys.readouterr().out


# The trainer inputs and config values that estimators and losses take under their own parameter names.
TRAINER_INPUTS = {
    *("scores", "group_ids", "mask", "token_rewards", "rewards", "greedy_scores", "values", "kl"),
    *("kl_coef", "gamma", "lam", "scale", "unbiased", "prompt_keys", "state", "baseline"),
}
LOSS_CONFIG_KEYS = {"clip_low", "clip_high", "dual_clip", "tau_pos", "tau_neg", "max_ratio"}


@pytest.mark.parametrize("name", ADVANTAGES.names())
def test_every_estimator_has_a_call_line_giving_each_input_it_names(name) -> None:
    args = estimator_args(name)
    params = inspect.signature(ADVANTAGES.get(name)).parameters
    assert set(args) == TRAINER_INPUTS & set(params)
    inspect.signature(ADVANTAGES.get(name)).bind(**dict.fromkeys(args))  # every required parameter is there


@pytest.mark.parametrize("name", POLICY_LOSSES.names())
def test_every_policy_loss_has_a_call_line_giving_each_config_value_it_names(name) -> None:
    cfg = dataclasses.replace(RLConfig(model="m", data="d").resolved(), policy_loss=name)
    args = policy_loss_args(cfg)
    params = inspect.signature(POLICY_LOSSES.get(name)).parameters
    assert set(args) == LOSS_CONFIG_KEYS & set(params)
    assert all(value == getattr(cfg, key) for key, value in args.items() if key != "dual_clip")


def test_dual_clip_zero_is_off_for_ppo_clip_and_raised_to_max_ratio_by_dcpo() -> None:
    cfg = dataclasses.replace(RLConfig(model="m", data="d").resolved(), dual_clip=0.0)
    assert policy_loss_args(dataclasses.replace(cfg, policy_loss="ppo_clip"))["dual_clip"] is None
    assert policy_loss_args(dataclasses.replace(cfg, policy_loss="dcpo"))["dual_clip"] == 0.0
    on = dataclasses.replace(cfg, policy_loss="ppo_clip", dual_clip=3.0)
    assert policy_loss_args(on)["dual_clip"] == 3.0


def test_a_registered_estimator_or_loss_without_a_call_line_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(ADVANTAGES._entries, "mine", lambda scores: scores)
    with pytest.raises(ConfigError, match=r"'mine' is registered .* no line in .*ESTIMATOR_ARGS"):
        needs_critic("mine")
    monkeypatch.setitem(POLICY_LOSSES._entries, "mine", ppo_clip_loss)
    cfg = dataclasses.replace(RLConfig(model="m", data="d").resolved(), policy_loss="mine")
    with pytest.raises(ConfigError, match=r"'mine' is registered .* no line in .*POLICY_LOSS_ARGS"):
        loss_settings(cfg)


def test_unknown_advantage_and_loss_kwargs_are_one_line_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"^config key 'advantage_kwargs': 'grpo' takes no argument 'epz'$"):
        check_advantage("grpo", has_critic=False, extra={"eps": 1e-3, "epz": 1})
    check_advantage("grpo", has_critic=False, extra={"eps": 1e-3, "scale": "none"})
    with pytest.raises(ConfigError, match="'gae' needs critic values"):
        check_advantage("gae", has_critic=False, extra={})
    cfg = RLConfig(model="m", data="d", loss_kwargs={"clip_lo": 0.1}).resolved()
    with pytest.raises(
        ConfigError, match=r"^config key 'loss_kwargs': policy loss 'ppo_clip' takes no 'clip_lo'$"
    ):
        loss_settings(cfg)
    cfg = RLConfig(model="m", data="d", loss_kwargs={"clip_low": 0.1}).resolved()
    assert loss_settings(cfg).loss_kwargs["clip_low"] == 0.1  # loss_kwargs win over the config values


def test_advantage_kwargs_override_the_trainer_inputs_and_reach_the_estimator() -> None:
    scores, groups, ones = torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([0, 0, 1, 1]), torch.ones(4, 2)
    batch = RolloutBatch(*[ones] * 4, torch.ones(4, dtype=torch.bool), groups, groups, ones, scores)
    batch.loss_mask = ones
    common = dict(kl=None, kl_coef=0.0, gamma=1.0, lam=1.0, unbiased=None, state=AdvantageState())
    adv, _, _ = estimate_advantages("grpo", batch, scale="group", extra={"scale": "none"}, **common)
    torch.testing.assert_close(adv[:, 0], group_normalized_advantages(scores, groups, scale="none"))
    batch.baseline_scores = None
    with pytest.raises(ConfigError, match="advantage 'remax' needs 'greedy_scores'"):
        estimate_advantages("remax", batch, scale="group", **common)


def test_seed_derivations_keep_their_values() -> None:
    # Exact resume and recorded runs depend on these numbers: they must never change.
    assert rollout_seed(3, 5) == (3 * 1_000_003 + 5) * 1009
    assert minibatch_seed(3, 5) == (3 * 1_000_003 + 5) * 7919
    assert epoch_seed(3, 5) == 3 * 1_000_003 + 5
    assert ptx_stream_seed(3) == 3 * 1_000_003 + 17
    assert win_rate_seed(3) == 3 + 7919
    assert episode_reset_seed(3, 5) == 3 + 7919 * 5
