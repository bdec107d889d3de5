"""The reward-model trainer: docs/algorithms.md §Reward-model losses worked examples through its loss path,
K-wise with K = 2 equals pairwise, learning, accumulation, exact resume, normalisation stats, reload
through transformers."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch
from numeric import close
from transformers import AutoModelForSequenceClassification

from rlft.data import DataError, PreferenceRecord, RankedRecord, get_task, load_records
from rlft.models import (
    build_tiny_model,
    load_reward_model,
    load_tokenizer,
    reward_model_from_causal_lm,
    sequence_scores,
)
from rlft.run import ConfigError, RunDir, load_config
from rlft.train import RMConfig, latest_checkpoint, rm_loss, train_rm
from rlft.train.reward.data import collate_groups, encode_groups, group_rewards

DATA = "task:preference?n=96&label_noise=0"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("tiny") / "model"
    corpus = get_task("preference").corpus(400)
    return str(build_tiny_model(out, size="1m", corpus=corpus, vocab_size=300, max_position_embeddings=64))


def small_cfg(model: str, **changes) -> RMConfig:
    base = RMConfig(
        model=model,
        data=DATA,
        batch_size=8,
        lr=1e-3,
        max_steps=6,
        epochs=None,
        eval_samples=32,
        norm_samples=64,
        torch_threads=1,
    )
    return dataclasses.replace(base, **changes)


def quiet(_: str) -> None:
    pass


# --- the loss path: docs/algorithms.md §Bradley–Terry ---------------------------------------------------


def pair(rw: float, rl: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.tensor([[rw, rl]]), torch.tensor([[1.0, 0.0]]), torch.ones(1, 2, dtype=torch.bool)


def test_pairwise_and_margin_worked_examples() -> None:
    rewards, ranks, valid = pair(2.0, 0.0)
    close(rm_loss(rewards, ranks, valid, "pairwise"), [0.126928])
    close(rm_loss(rewards, ranks, valid, "pairwise", margin=torch.tensor([1.0])), [0.313262])
    close(rm_loss(rewards, ranks, valid, "pairwise", margin=torch.tensor([float("nan")])), [0.126928])
    # centring η(r_w + r_l)² with η = 0.01: 0.126928 + 0.01·4
    close(rm_loss(rewards, ranks, valid, "pairwise", center_coef=0.01), [0.166928])


def test_kwise_worked_example_one_element_per_prompt() -> None:
    # K = 3 rewards [3, 1, 0] in ranked order ⇒ pair losses 0.126928, 0.048587, 0.313262, mean 0.162926
    rewards, valid = torch.tensor([[3.0, 1.0, 0.0]]), torch.ones(1, 3, dtype=torch.bool)
    close(rm_loss(rewards, torch.tensor([[2.0, 1.0, 0.0]]), valid, "kwise"), [0.162926])
    # the order of the responses inside a group does not matter, only their ranks
    close(
        rm_loss(torch.tensor([[0.0, 3.0, 1.0]]), torch.tensor([[0.0, 2.0, 1.0]]), valid, "kwise"), [0.162926]
    )
    # pairwise on the same group: three elements, the individual pair losses
    pairs = rm_loss(rewards, torch.tensor([[2.0, 1.0, 0.0]]), valid, "pairwise")
    close(pairs.sort().values, sorted([0.126928, 0.048587, 0.313262]))


def test_kwise_with_k2_equals_pairwise() -> None:
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(7, 2, generator=gen)
    ranks = torch.tensor([[1.0, 0.0], [0.0, 1.0]] * 3 + [[1.0, 0.0]])
    valid = torch.ones(7, 2, dtype=torch.bool)
    for eta in (0.0, 0.01):
        torch.testing.assert_close(
            rm_loss(rewards, ranks, valid, "kwise", center_coef=eta),
            rm_loss(rewards, ranks, valid, "pairwise", center_coef=eta),
        )


def test_groups_score_each_response_once_in_its_slot(tiny_model) -> None:
    tokenizer = load_tokenizer(tiny_model)
    records = [
        RankedRecord(
            prompt="Describe the forest briefly:",
            responses=[" green", " loud calm", " wild"],
            scores=[3, 1, 2],
        ),
        RankedRecord(prompt="Describe the soup simply:", responses=[" tasty", " metal"], scores=[1, 0]),
    ]
    groups = encode_groups(records, tokenizer)
    batch = collate_groups(groups, tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 5 and batch["valid"].tolist() == [[True] * 3, [True, True, False]]
    rm = reward_model_from_causal_lm(tiny_model)
    with torch.no_grad():
        rewards = group_rewards(rm, batch)
        one = torch.tensor([groups[1].seqs[0]])
        alone = sequence_scores(rm, one, torch.ones_like(one))
    torch.testing.assert_close(rewards[1, 0], alone[0], atol=1e-5, rtol=0)
    assert rewards[1, 2] == 0


# --- training -----------------------------------------------------------------------------------------------


def weights(path) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in load_reward_model(path)[0].state_dict().items()}


def write_pairs(path, n: int, seed: int) -> str:
    """Pairs that differ only in their last word: chosen ends in 'green', rejected in 'metal'."""
    rng = random.Random(seed)
    task = get_task("preference")
    with open(path, "w") as f:
        for _ in range(n):
            words = task.sample_completion(rng).split()[:3]
            row = {"prompt": rng.choice(task.prompts("train")), "chosen": " " + " ".join([*words, "green"])}
            f.write(json.dumps({**row, "rejected": " " + " ".join([*words, "metal"])}) + "\n")
    return str(path)


def test_training_learns_saves_hf_reward_model_with_norm(tiny_model, tmp_path) -> None:
    train, held_out = (
        write_pairs(tmp_path / "train.jsonl", 160, 0),
        write_pairs(tmp_path / "eval.jsonl", 32, 1),
    )
    cfg = small_cfg(tiny_model, data=train, eval_data=held_out, max_steps=10, batch_size=16, lr=2e-3)
    run = RunDir.create(tmp_path / "run")
    result = train_rm(cfg, run, show_progress=False, log=quiet)
    assert result.steps == 10
    assert result.initial_eval["eval_accuracy"] < 0.5 and result.final_eval["eval_accuracy"] == 1.0
    assert result.final_eval["eval_loss"] < 0.1 < 0.6 < result.initial_eval["eval_loss"]
    assert result.final_eval["eval_reward_gap"] > 1.0
    rows = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    assert {"loss", "accuracy", "reward_gap", "lr", "grad_norm", "seqs_per_s"} <= set(rows[1])
    # the saved model: plain transformers, num_labels 1, the norm = mean/std of the training responses
    hf = AutoModelForSequenceClassification.from_pretrained(str(result.model_dir)).eval()
    model, tokenizer, norm = load_reward_model(result.model_dir)
    assert hf.num_labels == 1 and norm == result.norm
    groups = encode_groups(load_records(cfg.data), tokenizer)
    seqs = [s for g in groups for s in g.seqs][: cfg.norm_samples]
    batch = collate_groups(groups[:32], 0)
    with torch.no_grad():
        scores = torch.cat(
            [sequence_scores(model, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)) for s in seqs]
        )
        ours = sequence_scores(model, batch["input_ids"], batch["attention_mask"])
        theirs = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    assert norm["mean"] == pytest.approx(float(scores.mean()), abs=1e-4)
    assert norm["std"] == pytest.approx(float(scores.std()), abs=1e-4)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


def test_kwise_training_on_ranked_records(tiny_model, tmp_path) -> None:
    cfg = small_cfg(
        tiny_model,
        data="task:preference?n=64&k=4",
        loss="kwise",
        max_steps=4,
        center_coef=0.01,
        eval_samples=8,
    )
    result = train_rm(cfg, RunDir.create(tmp_path / "run"), show_progress=False, log=quiet)
    assert result.steps == 4 and set(result.final_eval) >= {
        "eval_accuracy",
        "eval_gold_accuracy",
        "eval_loss",
    }
    assert (result.model_dir / "config.json").is_file()


def test_grad_accum_matches_one_big_batch(tiny_model, tmp_path) -> None:
    big = small_cfg(tiny_model, batch_size=8, grad_accum=1, max_steps=2, eval_samples=1, max_grad_norm=0.0)
    acc = dataclasses.replace(big, batch_size=4, grad_accum=2)
    a = train_rm(big, RunDir.create(tmp_path / "a"), show_progress=False, log=quiet)
    b = train_rm(acc, RunDir.create(tmp_path / "b"), show_progress=False, log=quiet)
    wa, wb = weights(a.model_dir), weights(b.model_dir)
    # Adam's m/√v turns float-summation noise into a visible update where a gradient is near zero (a rare
    # token's embedding row); a wrong normaliser would move every element by about lr = 1e-3.
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=1e-4, rtol=1e-4)


def test_exact_resume_matches_uninterrupted_run(tiny_model, tmp_path) -> None:
    cfg = small_cfg(
        tiny_model, max_steps=6, save_every=2, data="task:preference?n=40&label_noise=0.2", eval_samples=4
    )
    full = train_rm(cfg, RunDir.create(tmp_path / "full"), show_progress=False, log=quiet)
    run = RunDir.create(tmp_path / "cut")
    cut = train_rm(cfg, run, show_progress=False, stop_after=3, log=quiet)  # crosses an epoch boundary later
    assert cut.steps == 3 and latest_checkpoint(run).name == "step-2"
    resumed = train_rm(cfg, run, resume=True, show_progress=False, log=quiet)
    assert resumed.steps == 6
    wa, wb = weights(full.model_dir), weights(resumed.model_dir)
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    assert resumed.norm == full.norm
    steps = [json.loads(line)["step"] for line in run.metrics_path.read_text().splitlines()]
    assert steps == sorted(steps)  # metrics after the checkpoint were trimmed, then logged again


def test_margins_from_the_data_are_used(tiny_model, tmp_path) -> None:
    path = tmp_path / "pairs.jsonl"
    task = get_task("preference")
    pairs = task.preference_pairs(16, label_noise=0.0)
    path.write_text("".join(json.dumps({**p.to_row(), "margin": 5.0}) + "\n" for p in pairs))
    with_m = train_rm(
        small_cfg(tiny_model, data=str(path), max_steps=1),
        RunDir.create(tmp_path / "m"),
        show_progress=False,
        log=quiet,
    )
    without = train_rm(
        small_cfg(tiny_model, data=str(path), max_steps=1, use_margin=False),
        RunDir.create(tmp_path / "n"),
        show_progress=False,
        log=quiet,
    )
    assert with_m.train_loss > without.train_loss + 3.0  # −log σ(Δ − 5) ≈ 5 at Δ ≈ 0, vs log 2


# --- errors -------------------------------------------------------------------------------------------------


def test_errors(tiny_model, tmp_path) -> None:
    tokenizer = load_tokenizer(tiny_model)
    sft_rows = tmp_path / "sft.jsonl"
    sft_rows.write_text('{"prompt": "a", "completion": "b"}\n' * 20)
    with pytest.raises(DataError, match="needs preference or ranked records, got PromptCompletionRecord"):
        train_rm(
            small_cfg(tiny_model, data=str(sft_rows)),
            RunDir.create(tmp_path / "e1"),
            show_progress=False,
            log=quiet,
        )
    with pytest.raises(DataError, match="same score"):
        encode_groups(
            [RankedRecord(prompt="p", responses=["a", "b"], scores=[1, 1], where="x.jsonl:3")], tokenizer
        )
    with pytest.raises(DataError, match="fewer than one step's batch_size"):
        train_rm(
            small_cfg(tiny_model, data="task:preference?n=4", batch_size=8),
            RunDir.create(tmp_path / "e2"),
            show_progress=False,
            log=quiet,
        )
    with pytest.raises(ConfigError, match="config key 'loss'"):
        load_config(RMConfig, overrides=["--model", tiny_model, "--data", DATA, "--loss", "listwise"])
    with pytest.raises(ConfigError, match="config key 'model'"):
        train_rm(RMConfig(data=DATA), RunDir.create(tmp_path / "e3"), show_progress=False, log=quiet)
    pairs = [PreferenceRecord(prompt="p", chosen="a", rejected="b")]
    assert encode_groups(pairs, tokenizer)[0].texts == ["a", "b"]
