"""The SFT trainer: loss goes down, completion-only labels, gradient accumulation, exact resume, saving."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlft.data import IGNORE_INDEX, DataError, encode_sft, get_task, load_records
from rlft.models import build_tiny_model, load_causal_lm, load_tokenizer
from rlft.run import ConfigError, RunDir, load_config
from rlft.train import SFTConfig, latest_checkpoint, token_loss_sum, train_sft, warmup_cosine
from rlft.train.common.epochs import epoch_order, length_limits
from rlft.train.sft.trainer import step_batches

DATA = "task:arithmetic?max_operand=9&n=40"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("tiny") / "model"
    corpus = get_task("arithmetic").corpus(300)
    return str(build_tiny_model(out, size="1m", corpus=corpus, vocab_size=280, max_position_embeddings=64))


def small_cfg(model: str, **changes) -> SFTConfig:
    base = SFTConfig(
        model=model,
        data=DATA,
        batch_size=8,
        lr=3e-3,
        max_steps=6,
        eval_samples=16,
        eval_generate=False,
        eval_max_new_tokens=4,
        torch_threads=1,
    )
    return dataclasses.replace(base, **changes)


def weights(path) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in load_causal_lm(str(path)).state_dict().items()}


def test_schedule_warmup_then_cosine() -> None:
    assert warmup_cosine(0, 4, 20) == pytest.approx(0.25)
    assert warmup_cosine(3, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine(4, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine(19, 4, 20, min_ratio=0.1) == pytest.approx(0.1)
    values = [warmup_cosine(s, 4, 20) for s in range(4, 20)]
    assert values == sorted(values, reverse=True)


def test_sft_lowers_loss_logs_metrics_and_saves_hf_model(tiny_model, tmp_path) -> None:
    cfg = small_cfg(tiny_model, max_steps=15, eval_every=5, eval_generate=True)
    run = RunDir.create(tmp_path / "run")
    result = train_sft(cfg, run, show_progress=False, log=lambda _: None)
    assert result.steps == 15
    assert result.final_eval["eval_loss"] < result.initial_eval["eval_loss"] - 0.5
    assert 0.0 <= result.final_eval["eval_accuracy"] <= 1.0
    rows = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 16))
    assert {"lr", "grad_norm", "tokens_per_s"} <= set(train_rows[0])
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    assert {r["step"] for r in rows if "eval_ppl" in r} == {0, 5, 10, 15}
    # the final model is a plain HF directory
    model = AutoModelForCausalLM.from_pretrained(result.model_dir)
    final = load_causal_lm(str(result.model_dir))
    for (name, a), b in zip(model.state_dict().items(), final.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_only_completion_tokens_carry_loss(tiny_model) -> None:
    tokenizer = load_tokenizer(tiny_model)
    cfg = small_cfg(tiny_model)
    records = load_records(DATA)
    examples = encode_sft(records, tokenizer, length_limits(cfg))
    batch = step_batches(examples, epoch_order(len(examples), 0, 0), 0, cfg, tokenizer.pad_token_id)[0]
    order = epoch_order(len(examples), 0, 0)[: cfg.batch_size].tolist()
    for row, j in enumerate(order):
        prompt_len = len(tokenizer(records[j].prompt)["input_ids"])
        completion = tokenizer(records[j].completion, add_special_tokens=False)["input_ids"]
        labels = batch["labels"][row]
        assert (labels[:prompt_len] == IGNORE_INDEX).all()
        n = prompt_len + len(completion) + 1  # + EOS
        assert labels[prompt_len:n].tolist() == [*completion, tokenizer.eos_token_id]
        assert (labels[n:] == IGNORE_INDEX).all()  # padding
    model = load_causal_lm(tiny_model)
    loss, n_tokens = token_loss_sum(model, batch)
    assert n_tokens == int((batch["labels"] != IGNORE_INDEX).sum())
    # with completion_only_loss=False the prompt tokens count too
    full = encode_sft(records, tokenizer, length_limits(cfg), completion_only_loss=False)
    full_batch = step_batches(full, epoch_order(len(full), 0, 0), 0, cfg, tokenizer.pad_token_id)[0]
    assert token_loss_sum(model, full_batch)[1] > n_tokens
    assert torch.isfinite(loss)


def test_grad_accumulation_matches_one_big_batch(tiny_model, tmp_path) -> None:
    one = small_cfg(tiny_model, batch_size=8, grad_accum=1, max_steps=2, eval_samples=1)
    acc = small_cfg(tiny_model, batch_size=2, grad_accum=4, max_steps=2, eval_samples=1)
    r1 = train_sft(one, RunDir.create(tmp_path / "one"), show_progress=False, log=lambda _: None)
    r2 = train_sft(acc, RunDir.create(tmp_path / "acc"), show_progress=False, log=lambda _: None)
    w1, w2 = weights(r1.model_dir), weights(r2.model_dir)
    assert not torch.equal(w1["model.embed_tokens.weight"], weights(tiny_model)["model.embed_tokens.weight"])
    for name in w1:
        torch.testing.assert_close(w1[name], w2[name], rtol=1e-4, atol=2e-5, msg=name)
    assert r1.train_loss == pytest.approx(r2.train_loss, rel=1e-5)


def test_resume_is_bitwise_identical(tiny_model, tmp_path) -> None:
    # 40 examples / 8 per step = 5 steps per epoch, so the 7 steps cross an epoch boundary.
    cfg = small_cfg(tiny_model, max_steps=7, save_every=2, warmup_steps=2, weight_decay=0.01)
    full = train_sft(cfg, RunDir.create(tmp_path / "full"), show_progress=False, log=lambda _: None)

    run = RunDir.create(tmp_path / "cut")
    cut = train_sft(cfg, run, show_progress=False, stop_after=5, log=lambda _: None)  # "crash" after step 5
    assert cut.steps == 5 and not cut.model_dir.exists()
    assert latest_checkpoint(run).name == "step-4"
    resumed = train_sft(cfg, run, resume=True, show_progress=False, log=lambda _: None)
    assert resumed.steps == 7
    w_full, w_resumed = weights(full.model_dir), weights(resumed.model_dir)
    for name in w_full:
        assert torch.equal(w_full[name], w_resumed[name]), name
    # metrics logged after the checkpoint by the crashed run were replaced, not duplicated
    rows = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 8))


def test_resume_with_an_optimizer_state_that_does_not_fit_fails_clearly(tiny_model, tmp_path) -> None:
    from rlft.run import CheckpointError
    from rlft.train.common.checkpoint import TRAINER_STATE

    cfg = small_cfg(tiny_model, max_steps=4, save_every=2)
    run = RunDir.create(tmp_path / "cut")
    train_sft(cfg, run, show_progress=False, stop_after=3, log=lambda _: None)
    path = latest_checkpoint(run) / TRAINER_STATE
    state = torch.load(path, weights_only=True)
    state["optimizer"] = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))]).state_dict()
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="step-2: its optimizer state does not fit"):
        train_sft(cfg, run, resume=True, show_progress=False, log=lambda _: None)


def test_bad_config_and_missing_data(tiny_model, tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown config key 'learning_rate'"):
        load_config(SFTConfig, overrides=["--learning_rate", "0.1"])
    with pytest.raises(ConfigError, match="batch_size"):
        load_config(SFTConfig, overrides=["--model", "m", "--data", "d", "--batch_size", "0"])
    cfg = small_cfg(tiny_model, data=str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match=r"missing\.jsonl: file not found"):
        train_sft(cfg, RunDir.create(tmp_path / "run"), show_progress=False, log=lambda _: None)


def test_adamw_is_fused_and_steps_like_the_reference_implementation() -> None:
    from rlft.train.common.optimizer import adamw

    def model_and_grads() -> torch.nn.Module:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4))
        for p in net.parameters():
            p.grad = torch.randn_like(p)
        return net

    ours, ref = model_and_grads(), model_and_grads()
    opt = adamw(ours.parameters(), lr=1e-2, weight_decay=0.1)
    assert opt.defaults["fused"]
    decay = [p for p in ref.parameters() if p.ndim >= 2]
    rest = [p for p in ref.parameters() if p.ndim < 2]
    ref_opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
        lr=1e-2,
        betas=(0.9, 0.95),
        eps=1e-8,
        foreach=False,
    )
    for _ in range(3):
        opt.step()
        ref_opt.step()
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert not torch.equal(ours[0].weight, model_and_grads()[0].weight)  # the step moved the weights
