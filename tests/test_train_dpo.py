"""The offline preference trainer: worked examples through its loss path, reference cache, every loss
trains, named data errors, exact resume, the CLI."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from numeric import close
from safetensors import safe_open
from safetensors.torch import save_file

from rlft.cli import main
from rlft.data import DataError, get_task, load_records, save_records
from rlft.models import build_tiny_model, load_causal_lm, load_tokenizer
from rlft.models.fused import kernels as K
from rlft.models.fused.kernels import training as T
from rlft.run import ConfigError, RunDir, load_config, read_metrics
from rlft.train import DPOConfig, latest_checkpoint, offline_loss, train_dpo
from rlft.train.common.epochs import length_limits
from rlft.train.preference.data import OfflineData, load_offline
from rlft.train.preference.evaluation import evaluate_offline
from rlft.train.preference.ref_cache import model_fingerprint, reference_logprob_sums
from rlft.train.preference.scoring import Reference, micro_batch_loss

QUIET = {"show_progress": False, "log": lambda _: None}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("tiny") / "model"
    corpus = get_task("preference").corpus(300)
    return str(build_tiny_model(out, size="1m", corpus=corpus, vocab_size=300, max_position_embeddings=64))


@pytest.fixture(scope="module")
def data_files(tmp_path_factory) -> dict[str, str]:
    """16 records of each offline format, from the built-in preference task, as .jsonl files."""
    root = tmp_path_factory.mktemp("data")
    out = {}
    for fmt in ("preference", "unpaired", "ranked"):
        path = root / f"{fmt}.jsonl"
        source = "task:preference?n=16&seed=3" + ("&k=3" if fmt == "ranked" else "")
        save_records(load_records(source, fmt=fmt), path)
        out[fmt] = str(path)
    return out


def small_cfg(model: str, data: str, tmp_path, **changes) -> DPOConfig:
    base = DPOConfig(
        model=model,
        data=data,
        eval_data=data,
        batch_size=8,
        lr=3e-3,
        max_steps=4,
        eval_samples=16,
        torch_threads=1,
        ref_cache_dir=str(tmp_path / "ref-cache"),
    )
    return dataclasses.replace(base, **changes)


# --- worked examples (docs/algorithms.md §Preference losses) through the trainer's loss path ---------


def loss_of(loss: str, policy, counts, reference=None, **kw):
    cfg = DPOConfig(model="m", data="d", loss=loss, **{k: v for k, v in kw.items() if k in DPO_KEYS})
    extra = {k: v for k, v in kw.items() if k not in DPO_KEYS}
    t = torch.tensor
    ref = None if reference is None else t(reference, dtype=torch.float32)
    return offline_loss(cfg, t(policy, dtype=torch.float32), t(counts), ref, **extra)


DPO_KEYS = {"beta", "gamma", "label_smoothing", "rrhf_weight", "length_penalty"}


@pytest.mark.parametrize(
    ("loss", "kw", "expected"),
    [
        ("sigmoid", {}, 0.598139),
        ("dpo", {}, 0.598139),
        ("cdpo", {"label_smoothing": 0.1}, 0.618139),
        ("robust", {"label_smoothing": 0.1}, 0.573139),
        ("hinge", {}, 0.8),  # max(0, 1 − βh) = 1 − 0.2
    ],
)
def test_dpo_family_worked_example(loss, kw, expected) -> None:
    # β = 0.1, log π(y_w) = −10, log π(y_l) = −12, both reference −11 ⇒ h = 2
    losses, mets = loss_of(loss, [-10.0, -12.0], [5, 5], [-11.0, -11.0], beta=0.1, **kw)
    close(losses, [expected], tol=1e-6)
    close(mets["rewards/chosen"], [0.1])
    close(mets["rewards/rejected"], [-0.1])
    close(mets["rewards/margins"], [0.2])
    close(mets["rewards/accuracies"], [1.0])
    close(mets["logps/chosen"], [-10.0])


def test_ipo_uses_length_averaged_log_ratios() -> None:
    # τ = 0.1, h = 2 with one token per side: (2 − 1/(2τ))² = 9
    close(loss_of("ipo", [-10.0, -12.0], [1, 1], [-11.0, -11.0], beta=0.1)[0], [9.0])
    # four tokens per side: h = 2/4 − (−2/4)... each side's log-ratio divided by its length
    close(loss_of("ipo", [-10.0, -12.0], [4, 4], [-11.0, -11.0], beta=0.1)[0], [(0.5 - 5) ** 2])


def test_simpo_and_orpo_use_mean_log_probs_and_no_reference() -> None:
    # mean log π(y_w) = −1.0 (−10 over 10 tokens), mean log π(y_l) = −1.2 (−12 over 10)
    simpo, mets = loss_of("simpo", [-10.0, -12.0], [10, 10], beta=2.0, gamma=1.0)
    close(simpo, [1.037488], tol=1e-6)
    close(mets["rewards/chosen"], [-2.0])  # β · mean log π
    # ORPO: L_OR = 0.554231; with the chosen NLL (token mean) 1.0 and λ = 0.1 the total is 1.055423
    close(loss_of("orpo", [-10.0, -12.0], [10, 10], beta=0.1)[0], [1.055423], tol=1e-6)


def test_kto_worked_example() -> None:
    # β = 0.1, z₀ = 0.5; desirable r = 2 and undesirable r = −1 both give 1 − σ(0.15) = 0.462570
    losses, mets = loss_of(
        "kto", [-9.0, -12.0], [3, 3], [-11.0, -11.0], beta=0.1, labels=torch.tensor([True, False]), z0=0.5
    )
    close(losses, [0.462570, 0.462570], tol=1e-6)
    assert float(mets["rewards/chosen"][0]) == pytest.approx(0.2)
    assert math.isnan(float(mets["rewards/chosen"][1])) and float(
        mets["rewards/rejected"][1]
    ) == pytest.approx(-0.1)


def test_rrhf_worked_example() -> None:
    # r = [0.9, 0.2, 0.5], p = [−1.0, −0.8, −1.5] (sums over 10 tokens each) ⇒ L_rank = 0.9, L_ft = 10
    scores = torch.tensor([[0.9, 0.2, 0.5]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    losses, mets = loss_of(
        "rrhf", [[-10.0, -8.0, -15.0]], [[10, 10, 10]], scores=scores, valid=valid, rrhf_weight=1.0
    )
    close(losses, [10.9])
    close(
        loss_of(
            "rrhf", [[-10.0, -8.0, -15.0]], [[10, 10, 10]], scores=scores, valid=valid, rrhf_weight=100.0
        )[0],
        [100.0],
    )
    close(mets["rank_accuracy"], [1 / 3])  # of the ordered pairs only (3,1) has p_3 < p_1


def test_micro_batch_path_feeds_the_registry_loss(tiny_model, data_files, monkeypatch) -> None:
    """The whole micro-batch path (row layout, reference lookup, ranked reshaping) with scores we control."""
    import rlft.train.preference.scoring as dpo_scoring

    tokenizer = load_tokenizer(tiny_model)
    cfg = DPOConfig(model=tiny_model, data="d", beta=0.1)
    pref = load_offline(data_files["preference"], "preference", tokenizer, length_limits(cfg))
    # every chosen sequence scores −10 and every rejected −12 (rows are [chosen…, rejected…])
    fake = {s: -10.0 if s % 2 == 0 else -12.0 for s in range(len(pref.sequences))}

    def fake_score(model, data, rows, pad_id, cfg):
        return torch.tensor([fake[r] for r in rows]), torch.full((len(rows),), 10)

    monkeypatch.setattr(dpo_scoring, "score_sequences", fake_score)
    reference = Reference(None, 0, cfg)
    reference.tables[id(pref)] = torch.full((len(pref.sequences),), -11.0)
    losses, _ = micro_batch_loss(None, pref, [0, 5, 7], 0, cfg, reference)
    close(losses, [0.598139] * 3, tol=1e-6)

    ranked = load_offline(data_files["ranked"], "ranked", tokenizer, length_limits(cfg))
    ranked.scores[0] = [0.9, 0.2, 0.5]
    fake = dict.fromkeys(range(len(ranked.sequences)), -10.0)
    fake.update({0: -10.0, 1: -8.0, 2: -15.0})
    losses, _ = micro_batch_loss(None, ranked, [0], 0, dataclasses.replace(cfg, loss="rrhf"), None)
    close(losses, [10.9])


# --- reference log-probs: cache vs on the fly, cache keys --------------------------------------------------


def test_cached_and_on_the_fly_reference_give_the_same_losses(tiny_model, data_files, tmp_path) -> None:
    logs: list[str] = []
    cfg = small_cfg(tiny_model, data_files["preference"], tmp_path, max_steps=3)
    cached = train_dpo(cfg, RunDir.create(tmp_path / "a"), show_progress=False, log=logs.append)
    online_cfg = dataclasses.replace(cfg, precompute_ref=False)
    online = train_dpo(online_cfg, RunDir.create(tmp_path / "b"), show_progress=False, log=logs.append)
    rows_a = [r for r in read_metrics(tmp_path / "a" / "metrics.jsonl") if "loss" in r]
    rows_b = [r for r in read_metrics(tmp_path / "b" / "metrics.jsonl") if "loss" in r]
    assert len(rows_a) == len(rows_b) == 3
    for a, b in zip(rows_a, rows_b, strict=True):
        for key in ("loss", "rewards/chosen", "rewards/margins"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    assert cached.final_eval["eval_loss"] == pytest.approx(online.final_eval["eval_loss"], abs=1e-5)
    assert rows_a[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)  # step 1: policy = reference
    # a second run with the same data and reference reads the cache instead of scoring again
    logs.clear()
    train_dpo(cfg, RunDir.create(tmp_path / "c"), show_progress=False, log=logs.append)
    assert sum("from cache" in m for m in logs) == 2 and not any("computed" in m for m in logs)


def test_a_cache_from_another_model_or_dataset_is_never_reused(tiny_model, data_files, tmp_path) -> None:
    model = load_causal_lm(tiny_model)
    tokenizer = load_tokenizer(tiny_model)
    cfg = DPOConfig(model=tiny_model, data="d")
    data = load_offline(data_files["preference"], "preference", tokenizer, length_limits(cfg))
    cache = tmp_path / "cache"
    logs: list[str] = []

    def ref(m, seqs, **kw):
        return reference_logprob_sums(m, seqs, 0, cache_dir=cache, log=logs.append, **kw)

    first = ref(model, data.sequences)
    again = ref(model, data.sequences)
    assert torch.equal(first, again) and "from cache" in logs[-1]
    # another model (one weight nudged): a new key, recomputed, different numbers
    other = load_causal_lm(tiny_model)
    with torch.no_grad():
        other.model.layers[0].mlp.down_proj.weight.add_(0.05)
    assert model_fingerprint(other) != model_fingerprint(model)
    changed = ref(other, data.sequences)
    assert "computed" in logs[-1] and not torch.allclose(changed, first)
    # another dataset (one token of one completion changed): recomputed
    edited = list(data.sequences)
    prompt, completion = edited[3]
    edited[3] = (prompt, [*completion[:-1], (completion[-1] + 1) % 250])
    ref(model, edited)
    assert "computed" in logs[-1]
    # the same data in another order, or another compute dtype, is another key too
    ref(model, list(reversed(data.sequences)))
    assert "computed" in logs[-1]
    ref(model, data.sequences, bf16=True)
    assert "computed" in logs[-1]
    assert len(list(cache.glob("*.safetensors"))) == 5
    # a file under the right name but holding another key is not trusted
    for path in cache.glob("*.safetensors"):
        with safe_open(path, "pt") as f:
            metadata, logps = f.metadata(), f.get_tensor("logps")
        save_file({"logps": logps}, path, metadata={**metadata, "key": "0" * 64})
    assert torch.equal(ref(model, data.sequences), first) and "computed" in logs[-1]
    assert "holds other data" in logs[-2]


# --- every loss trains --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "loss", ["sigmoid", "cdpo", "robust", "ipo", "hinge", "simpo", "orpo", "kto", "rrhf"]
)
def test_each_loss_trains(loss, tiny_model, data_files, tmp_path) -> None:
    fmt = {"kto": "unpaired", "rrhf": "ranked"}.get(loss, "preference")
    # KTO sees one completion per prompt (half the signal of a pair) and its z₀ tracks the drift: 16 steps.
    steps = 16 if loss == "kto" else 8
    cfg = small_cfg(tiny_model, data_files[fmt], tmp_path, loss=loss, max_steps=steps, lr=5e-3)
    result = train_dpo(cfg, RunDir.create(tmp_path / "run"), **QUIET)
    before, after = result.initial_eval["eval_loss"], result.final_eval["eval_loss"]
    assert after < 0.85 * before, (before, after)  # every loss here is positive
    start, trained = (
        load_causal_lm(tiny_model).state_dict(),
        load_causal_lm(str(result.model_dir)).state_dict(),
    )
    assert all(not torch.equal(start[k], trained[k]) for k in start if k.endswith("proj.weight"))
    if fmt == "preference":
        assert result.final_eval["eval_rewards/accuracies"] > 0.5


def test_unpaired_layout_pairs_each_prompt_with_the_next_completion(tiny_model, data_files) -> None:
    tokenizer = load_tokenizer(tiny_model)
    data = load_offline(data_files["unpaired"], "unpaired", tokenizer, length_limits(DPOConfig()))
    n = len(data)
    for i in range(n):
        own, mismatched = (data.sequences[s] for s in data.groups[i])
        assert mismatched[0] == own[0]
        assert mismatched[1] == data.sequences[data.groups[(i + 1) % n][0]][1]
    assert data.rows([2, 5]) == [4, 10] and data.mismatched_rows([2, 5]) == [5, 11]


def test_kto_logs_its_kl_baseline(tiny_model, data_files, tmp_path) -> None:
    cfg = small_cfg(tiny_model, data_files["unpaired"], tmp_path, loss="kto", max_steps=2)
    train_dpo(cfg, RunDir.create(tmp_path / "run"), **QUIET)
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert rows[0]["kl"] == 0.0  # policy = reference at step 1: every log-ratio is 0, z₀ = max(0, 0)
    assert rows[1]["kl"] >= 0.0 and {"rewards/chosen", "rewards/rejected"} <= set(rows[1])


# --- data errors, resume, CLI ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {"prompt": "Describe the soup briefly:", "chosen": " tasty"},
            r"bad\.jsonl:2: field 'rejected': missing",
        ),
        (
            {"prompt": "Describe the soup briefly:", "chosen": "", "rejected": " x"},
            r"bad\.jsonl:2: field 'chosen': empty string",
        ),
        ({"prompt": "", "chosen": " a", "rejected": " b"}, r"bad\.jsonl:2: field 'prompt': empty string"),
    ],
)
def test_malformed_preference_rows_give_the_named_error(row, message, tiny_model, tmp_path) -> None:
    good = {"prompt": "Describe the soup briefly:", "chosen": " tasty warm", "rejected": " metal"}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=message):
        train_dpo(small_cfg(tiny_model, str(path), tmp_path), RunDir.create(tmp_path / "run"), **QUIET)


def test_resume_is_bitwise_identical(tiny_model, data_files, tmp_path) -> None:
    # 16 pairs / 8 per step = 2 steps per epoch, so 5 steps cross two epoch boundaries
    cfg = small_cfg(tiny_model, data_files["preference"], tmp_path, max_steps=5, save_every=2, warmup_steps=2)
    full = train_dpo(cfg, RunDir.create(tmp_path / "full"), **QUIET)
    run = RunDir.create(tmp_path / "cut")
    cut = train_dpo(cfg, run, stop_after=3, **QUIET)
    assert cut.steps == 3 and latest_checkpoint(run).name == "step-2"
    resumed = train_dpo(cfg, run, resume=True, **QUIET)
    assert resumed.steps == 5
    a, b = (
        load_causal_lm(str(full.model_dir)).state_dict(),
        load_causal_lm(str(resumed.model_dir)).state_dict(),
    )
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert [r["step"] for r in read_metrics(run.metrics_path) if "loss" in r] == [1, 2, 3, 4, 5]


def test_training_kernels_are_used_by_a_run_with_eval_data(tiny_model, data_files, tmp_path) -> None:
    """A run with eval data evaluates under no_grad before its first step; the kernels' load-time check
    must not depend on that (tests/test_models_kernels.py checks a first load under no_grad directly),
    or a resumed run (no step-0 eval) would train on another path than an uninterrupted one."""
    if K._compiler() is None:
        pytest.skip("no C compiler: rlft runs on its torch fallback here")
    T.train_kernels.cache_clear()
    try:
        cfg = small_cfg(tiny_model, data_files["preference"], tmp_path, max_steps=1)
        train_dpo(cfg, RunDir.create(tmp_path / "run"), **QUIET)
        assert T.train_kernels.cache_info().currsize == 1  # the run asked for them
        assert T.train_kernels() is not None, K.unavailable_reason()
    finally:
        T.train_kernels.cache_clear()


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="config key 'loss'"):
        load_config(DPOConfig, overrides=["--model", "m", "--data", "d", "--loss", "nope"])
    with pytest.raises(ConfigError, match="config key 'format'"):
        load_config(
            DPOConfig, overrides=["--model", "m", "--data", "d", "--loss", "kto", "--format", "ranked"]
        )
    with pytest.raises(ConfigError, match="label_smoothing"):
        load_config(DPOConfig, overrides=["--model", "m", "--data", "d", "--label_smoothing", "0.5"])
    assert (
        load_config(DPOConfig, overrides=["--model", "m", "--data", "d", "--loss", "dpo"]).loss == "sigmoid"
    )


def test_cli_dpo_and_rrhf(tiny_model, data_files, tmp_path, capsys) -> None:
    config = tmp_path / "dpo.yaml"
    config.write_text(
        f"model: {tiny_model}\ndata: {data_files['preference']}\nbatch_size: 8\nmax_steps: 2\n"
        f"torch_threads: 1\nref_cache_dir: {tmp_path / 'cache'}\n"
    )
    assert main(["dpo", "--config", str(config), "--out", str(tmp_path / "r1"), "--no-progress"]) == 0
    assert (tmp_path / "r1" / "model" / "config.json").is_file()
    rows = read_metrics(tmp_path / "r1" / "metrics.jsonl")
    assert {"rewards/accuracies", "logps/chosen", "logps/rejected"} <= set(rows[-1])
    args = ["--data", data_files["ranked"], "--no-progress", "--out", str(tmp_path / "r2")]
    assert main(["rrhf", "--config", str(config), *args]) == 0
    assert "rank_accuracy" in read_metrics(tmp_path / "r2" / "metrics.jsonl")[-1]
    assert main(["dpo", "--config", str(config), "--loss", "bogus", "--out", str(tmp_path / "r3")]) == 2
    assert "rlft: error: command line: config key 'loss'" in capsys.readouterr().err


def test_eval_needs_no_gradients(tiny_model, data_files, tmp_path) -> None:
    model = load_causal_lm(tiny_model)
    tokenizer = load_tokenizer(tiny_model)
    cfg = small_cfg(tiny_model, data_files["preference"], tmp_path, precompute_ref=False)
    data = load_offline(data_files["preference"], "preference", tokenizer, length_limits(cfg))
    out = evaluate_offline(model, data, 0, cfg, Reference(model, 0, cfg))
    assert out["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference: −log σ(0)
    assert all(p.grad is None for p in model.parameters())
    assert isinstance(data, OfflineData)


def test_shared_prompt_rows_give_the_same_metrics(tiny_model, data_files, tmp_path) -> None:
    model = load_causal_lm(tiny_model)
    tokenizer = load_tokenizer(tiny_model)
    with torch.no_grad():  # move the policy away from the reference so the metrics are not all zero
        model.model.layers[1].mlp.up_proj.weight.mul_(1.5)
    for fmt, loss in (("preference", "sigmoid"), ("ranked", "rrhf"), ("unpaired", "kto")):
        cfg = small_cfg(tiny_model, data_files[fmt], tmp_path, loss=loss, precompute_ref=False)
        data = load_offline(data_files[fmt], fmt, tokenizer, length_limits(cfg))
        reference = Reference(load_causal_lm(tiny_model), 0, cfg)
        shared = evaluate_offline(model, data, 0, cfg, reference)
        plain_cfg = dataclasses.replace(cfg, share_prompts=False)
        plain = evaluate_offline(model, data, 0, plain_cfg, Reference(reference.model, 0, plain_cfg))
        assert shared.keys() == plain.keys()
        for key, value in shared.items():
            assert value == pytest.approx(plain[key], abs=1e-4), (fmt, key)


def test_demo_stage_reports_the_gold_win_rate(tiny_model, tmp_path, capsys) -> None:
    from rlft.commands.demo import dpo_demo_stage

    out = dpo_demo_stage(
        tmp_path,
        tiny_model,
        show_progress=False,
        max_steps=2,
        eval_every=2,
        n=32,
        batch_size=8,
        warmup_steps=0,
        eval_samples=16,
        win_rate_samples=1,
        win_rate_max_new_tokens=4,
        torch_threads=1,
    )
    assert out["steps"] == 2 and out["model_dir"].is_dir()
    assert out["win_rate_before"] == 0.5  # the same seeds for policy and reference: identical samples
    assert 0.0 <= out["win_rate_after"] <= 1.0
    assert "gold win rate vs SFT model" in capsys.readouterr().out
    rows = read_metrics(out["run_dir"] / "metrics.jsonl")
    assert {"eval_win_rate", "eval_gold_score", "eval_ref_gold_score"} <= set(rows[-1])


def test_on_the_fly_reference_packs_its_weights_once_and_scores_the_same(tiny_model, data_files) -> None:
    from rlft.models.forward_path import plan_for
    from rlft.train.preference.scoring import Reference, score_sequences

    model = load_causal_lm(tiny_model)
    tokenizer = load_tokenizer(tiny_model)
    cfg = DPOConfig(model=tiny_model, data="d", precompute_ref=False)
    data = load_offline(data_files["preference"], "preference", tokenizer, length_limits(cfg))
    reference = Reference(model, tokenizer.pad_token_id, cfg)
    reference.follow(plan_for("dpo", model, cfg, reference=reference))  # the run's plan decides the packing
    rows = data.rows([0, 1, 2])
    got = reference(data, rows)
    assert reference.frozen is not None  # the packed body was built and used
    with torch.no_grad():
        own = dataclasses.replace(cfg, forward="hf")
        expected = score_sequences(model, data, rows, tokenizer.pad_token_id, own)[0]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
