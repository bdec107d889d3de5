"""Every command on tiny random models of eight architectures, each with its family's chat template and
tokenizer conventions (``arch_zoo``), on data in the Hugging Face / TRL conversational formats.

Per architecture: rlft's log-probs equal a plain HF forward (padded batch against each sequence alone, on
the RL path too); SFT (multi-turn chat, packed where the model allows it), reward model, ``score``, DPO,
KTO, RRHF, online RL (GRPO, DAPO, GSPO, RLOO, PPO with a critic and the reward model), GRPO under LoRA
and ``generate`` with string and chat prompts all run through ``rlft.cli.main``; every output reloads in
plain ``transformers``, and the reward model scores there exactly as in rlft. Packed and unpacked SFT
losses and gradients are compared in ``test_sft_packing_archs.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from arch_zoo import ARCHITECTURES, FAMILIES, build_zoo
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

import rlft.cli
from rlft.models import load_causal_lm, load_tokenizer, response_logprobs, token_logprobs
from rlft.models.scalar_head import load_reward_model, sequence_scores

pytestmark = pytest.mark.usefixtures("one_thread")

QUESTIONS = [(a, b) for a in range(2, 9) for b in range(1, 4)]


def _chat(a: int, b: int) -> list[dict]:
    return [{"role": "user", "content": f"what is {a} plus {b}?"}]


def _rows() -> dict[str, list[dict]]:
    conversations, preference, unpaired, ranked, prompts, scored = [], [], [], [], [], []
    for i, (a, b) in enumerate(QUESTIONS):
        right, wrong = str(a + b), str(a + b + 1)
        conversations.append(
            {
                "messages": [
                    {"role": "system", "content": "answer with a number"},
                    *_chat(a, b),
                    {"role": "assistant", "content": f"the answer is {right}"},
                    {"role": "user", "content": "and plus one?"},
                    {"role": "assistant", "content": str(a + b + 1)},
                ]
            }
        )
        preference.append(
            {
                "prompt": _chat(a, b),
                "chosen": [{"role": "assistant", "content": right}],
                "rejected": [{"role": "assistant", "content": wrong}],
            }
        )
        unpaired.append(
            {"prompt": _chat(a, b), "completion": right if i % 2 else wrong, "label": bool(i % 2)}
        )
        ranked.append({"prompt": _chat(a, b), "responses": [right, wrong, "no"], "scores": [1.0, 0.5, 0.0]})
        prompts.append({"prompt": _chat(a, b), "answer": right})
        scored.append({"prompt": _chat(a, b), "completion": right})
    return {
        "chat": conversations,
        "preference": preference,
        "unpaired": unpaired,
        "ranked": ranked,
        "prompts": prompts,
        "scored": scored,
    }


REWARDS = """
def digits(prompts, completions, **fields):
    return [sum(c.isdigit() for c in t) / max(len(t), 1) for t in completions]
"""


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> dict[str, Path]:
    return build_zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("chat_data")
    paths = {}
    for name, rows in _rows().items():
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths[name] = str(path)
    (root / "rewards_fn.py").write_text(REWARDS)
    paths["reward_fn"] = f"{root / 'rewards_fn.py'}:digits"
    (root / "prompts.txt").write_text("what is 2 plus 3?\nwhat is 4 plus 1?\n")
    paths["txt"] = str(root / "prompts.txt")
    return paths


def run_cli(args: list[str], config: dict | None, tmp: Path, name: str) -> Path:
    """``rlft <args> --config <config.yaml> --out <tmp/name>``; asserts exit code 0; returns the run dir."""
    out = tmp / name
    if config is not None:
        path = tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        args = [*args, "--config", str(path)]
    code = rlft.cli.main([*args, "--out", str(out), "--no-progress"])
    assert code == 0, f"rlft {' '.join(args)} exited {code}"
    return out


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def reloads_as_causal_lm(model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer.apply_chat_template(_chat(2, 3), add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def stops_at_end_of_turn(model_dir: Path, arch: str) -> None:
    """The trained model's generation config lists the family's end-of-turn token among its EOS ids, so
    rlft's sampler and plain ``generate`` both stop at the end of the assistant's turn."""
    end = FAMILIES[arch].end_of_turn
    if end is not None:
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
        eos = [eos] if isinstance(eos, int) else eos
        assert AutoTokenizer.from_pretrained(model_dir).convert_tokens_to_ids(end) in eos


COMMON = {"torch_threads": 1, "seed": 0}


# --- log-probs --------------------------------------------------------------------------------------------


def _unpadded_logprobs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_logprobs_equal_a_plain_hf_forward(zoo, arch) -> None:
    model, tokenizer = load_causal_lm(str(zoo[arch])), load_tokenizer(str(zoo[arch]))
    texts = ["what is 2 plus 3? the answer is 5", "one", "the big dog sees a red bird and 12+34=46"]
    seqs = [tokenizer(t)["input_ids"] for t in texts]
    width = max(map(len, seqs))
    pad = int(tokenizer.pad_token_id)
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    with torch.no_grad():
        ours = token_logprobs(model, ids, mask)
    for row, s in enumerate(seqs):
        expected = _unpadded_logprobs(model, s)
        torch.testing.assert_close(ours[row, width - len(s) :], expected, atol=2e-5, rtol=1e-5)

    # the RL path: prompts left-padded, responses right-padded
    prompts, responses = [s[:3] for s in seqs], [s[3:] or [pad] for s in seqs]
    p_ids = torch.tensor([[pad] * (3 - len(p)) + p for p in prompts])
    p_mask = (torch.arange(3)[None] >= torch.tensor([3 - len(p) for p in prompts])[:, None]).long()
    r_width = max(map(len, responses))
    r_ids = torch.tensor([r + [pad] * (r_width - len(r)) for r in responses])
    r_mask = torch.tensor([[1] * len(r) + [0] * (r_width - len(r)) for r in responses])
    with torch.no_grad():
        rl = response_logprobs(model, p_ids, p_mask, r_ids, r_mask)
    for row, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        expected = _unpadded_logprobs(model, p + r)[len(p) - 1 :]
        torch.testing.assert_close(rl[row, : len(r)], expected, atol=2e-5, rtol=1e-5)


# --- supervised fine-tuning --------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_sft_on_multi_turn_chat_packed_and_not(zoo, data, arch, tmp_path) -> None:
    base = {**COMMON, "model": str(zoo[arch]), "data": data["chat"], "batch_size": 4, "max_steps": 2}
    run = run_cli(["sft"], {**base, "lr": 1e-3}, tmp_path, "sft")
    reloads_as_causal_lm(run / "model")
    stops_at_end_of_turn(run / "model", arch)
    assert all(math.isfinite(r["loss"]) for r in metrics(run) if "loss" in r)
    packed = run_cli(["sft"], {**base, "pack": True, "max_len": 96}, tmp_path, "packed")
    reloads_as_causal_lm(packed / "model")


# --- reward model and score --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def reward_models(zoo, data, tmp_path_factory) -> dict[str, Path]:
    """One trained reward model per architecture (2 steps on conversational preference pairs)."""
    root = tmp_path_factory.mktemp("rm")
    out = {}
    for arch in ARCHITECTURES:
        cfg = {**COMMON, "model": str(zoo[arch]), "data": data["preference"], "batch_size": 4, "max_steps": 2}
        out[arch] = run_cli(["rm"], {**cfg, "lr": 1e-2, "norm_samples": 8}, root, arch) / "model"
    return out


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_reward_model_scores_the_same_in_transformers(reward_models, data, arch, tmp_path) -> None:
    model_dir = reward_models[arch]
    ours, tokenizer, _ = load_reward_model(str(model_dir))
    hf = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    texts = ["what is 2 plus 3? 5", "no", "the big dog sees a red bird"]
    seqs = [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    width = max(map(len, seqs))
    pad = int(tokenizer.pad_token_id)
    for side in ("left", "right"):
        rows = [
            ([pad] * (width - len(s)) + s) if side == "left" else (s + [pad] * (width - len(s))) for s in seqs
        ]
        masks = [
            ([0] * (width - len(s)) + [1] * len(s))
            if side == "left"
            else ([1] * len(s) + [0] * (width - len(s)))
            for s in seqs
        ]
        ids, mask = torch.tensor(rows), torch.tensor(masks)
        # plain transformers numbers positions from the first column; left padding needs them passed
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            expected = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, 0]
            got = sequence_scores(ours, ids, mask)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)

    out = tmp_path / "scores.jsonl"
    code = rlft.cli.main(
        [
            "score",
            "--data",
            data["scored"],
            "--reward-model",
            str(model_dir),
            "--out",
            str(out),
            "--limit",
            "4",
        ]
    )
    assert code == 0
    assert all(math.isfinite(json.loads(line)["reward"]) for line in out.read_text().splitlines())


# --- offline preference ------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_dpo_kto_rrhf(zoo, data, arch, tmp_path) -> None:
    base = {**COMMON, "model": str(zoo[arch]), "batch_size": 4, "max_steps": 2, "lr": 1e-3}
    dpo = run_cli(["dpo"], {**base, "data": data["preference"]}, tmp_path, "dpo")
    stops_at_end_of_turn(dpo / "model", arch)
    # no dropout by default: the policy equals its reference at step 1, so the DPO loss is log 2
    assert metrics(dpo)[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    reloads_as_causal_lm(dpo / "model")
    kto = run_cli(["dpo"], {**base, "data": data["unpaired"], "loss": "kto"}, tmp_path, "kto")
    reloads_as_causal_lm(kto / "model")
    rrhf = run_cli(["dpo"], {**base, "data": data["ranked"], "loss": "rrhf"}, tmp_path, "rrhf")
    reloads_as_causal_lm(rrhf / "model")


# --- online RL ---------------------------------------------------------------------------------------------

RL_BASE = {
    **COMMON,
    "sampling": {"prompts_per_step": 2, "num_generations": 3, "max_new_tokens": 5},
    "max_steps": 1,
    "optim": {"lr": 1e-3},
    "eval": {"samples": 1},
}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_rl_presets(zoo, data, reward_models, arch, tmp_path) -> None:
    base = {
        **RL_BASE,
        "model": str(zoo[arch]),
        "data": data["prompts"],
        "rewards": [{"function": data["reward_fn"]}],
    }
    for algorithm in ("grpo", "dapo", "gspo", "rloo"):
        run = run_cli(["rl"], {**base, "algorithm": algorithm}, tmp_path, algorithm)
        assert any("loss" in r for r in metrics(run)), algorithm
    reloads_as_causal_lm(run / "model")
    stops_at_end_of_turn(run / "model", arch)
    ppo = {**base, "algorithm": "ppo", "rewards": [], "reward_model": str(reward_models[arch])}
    run = run_cli(["rl"], ppo, tmp_path, "ppo")
    assert any("value_loss" in r or "critic_loss" in r or "vf_loss" in r for r in metrics(run))
    reloads_as_causal_lm(run / "model")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_grpo_under_lora(zoo, data, arch, tmp_path) -> None:
    cfg = {
        **RL_BASE,
        "model": str(zoo[arch]),
        "data": data["prompts"],
        "rewards": [{"function": data["reward_fn"]}],
        "lora": {"r": 4, "alpha": 8},
    }
    run = run_cli(["rl"], cfg, tmp_path, "lora")
    reloads_as_causal_lm(run / "model")


# --- generation --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_generate_string_and_chat_prompts_stop_at_end_of_turn(zoo, data, arch, capsys) -> None:
    model = str(zoo[arch])
    base = ["generate", "--model", model, "--max-new-tokens", "6", "--n", "2"]
    assert rlft.cli.main([*base, "--prompts", data["txt"]]) == 0
    assert rlft.cli.main([*base, "--prompts", data["prompts"], "--limit", "3"]) == 0
    printed = capsys.readouterr().out
    assert "what is 2 plus 1?" in printed and printed.count("→") == 2 * 2 + 3 * 2

    family = FAMILIES[arch]
    if family.end_of_turn is not None:
        from rlft.models import SamplingParams, sample
        from rlft.train.common.chat_stops import stop_at_end_of_turn

        lm, tokenizer = load_causal_lm(model), load_tokenizer(model)
        end = tokenizer.convert_tokens_to_ids(family.end_of_turn)
        assert end in stop_at_end_of_turn(lm, tokenizer)
        # force the end-of-turn token to be the likeliest: sampling must stop right there
        with torch.no_grad():
            lm.get_output_embeddings().bias = torch.nn.Parameter(torch.zeros(lm.config.vocab_size))
            lm.get_output_embeddings().bias[end] = 1e4
        rollout = sample(lm, tokenizer, ["hi"], SamplingParams(max_new_tokens=5, seed=0), decoder="hf")
        assert rollout.response_ids[0].tolist() == [end] and bool(rollout.finished[0])


# --- regressions -------------------------------------------------------------------------------------------


def test_dropout_is_off_in_training_unless_kept(zoo, data, tmp_path) -> None:
    """GPT-2's config enables dropout (p = 0.1): trainers zero it, so DPO starts at exactly log 2 (see
    test_dpo_kto_rrhf); ``keep_dropout: true`` keeps it, and the policy then disagrees with its reference."""
    from rlft.models import training_mode

    model = training_mode(load_causal_lm(str(zoo["gpt2"])))
    assert model.training
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    base = {**COMMON, "model": str(zoo["gpt2"]), "batch_size": 4, "max_steps": 1, "data": data["preference"]}
    kept = run_cli(["dpo"], {**base, "keep_dropout": True}, tmp_path, "kept")
    assert abs(metrics(kept)[0]["loss"] - math.log(2)) > 1e-3


@pytest.mark.parametrize("arch", ["qwen2", "gemma2", "gpt2"])
def test_cache_is_passed_without_deprecated_arguments(zoo, arch) -> None:
    """transformers 5.24 renamed the body's ``past_key_values`` to ``cache`` (the old name warns until its
    removal in 5.40): sampling and the shared-prompt RL pass must use whichever name the model takes."""
    import warnings

    from rlft.models import SamplingParams, sample
    from rlft.models.logprobs import response_states

    model, tokenizer = load_causal_lm(str(zoo[arch])), load_tokenizer(str(zoo[arch]))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*")
        rollout = sample(model, tokenizer, ["hi", "what is"], SamplingParams(max_new_tokens=3, n=2, seed=0))
        with torch.no_grad():
            shared = response_states(model, rollout.responses, share_prompts=True, forward="hf", frozen=None)
            plain = response_states(model, rollout.responses, share_prompts=False, forward="hf", frozen=None)
    keep = rollout.response_mask.bool()
    torch.testing.assert_close(shared[keep], plain[keep], atol=2e-5, rtol=1e-5)


def test_installed_transformers_is_in_the_declared_range() -> None:
    import tomllib

    import transformers
    from packaging.requirements import Requirement

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    spec = next(Requirement(d) for d in deps if Requirement(d).name == "transformers").specifier
    assert spec.contains(transformers.__version__), (transformers.__version__, str(spec))
    assert not spec.contains("4.57.6") and not spec.contains("6.0.0")  # the range is bounded both ways


def test_chat_template_kwargs_reach_every_rendering(zoo, data, tmp_path, monkeypatch, capsys) -> None:
    """``chat_template_kwargs`` (here Qwen3's ``enable_thinking``) are passed to every chat-template call
    of every command that renders chat data."""
    from transformers import PreTrainedTokenizerBase

    calls: list[dict] = []
    original = PreTrainedTokenizerBase.apply_chat_template

    def spy(self, conversation, *args, **kwargs):
        calls.append(kwargs)
        return original(self, conversation, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerBase, "apply_chat_template", spy)
    model, thinking = str(zoo["qwen3"]), {"enable_thinking": False}
    base = {**COMMON, "model": model, "batch_size": 4, "max_steps": 1, "chat_template_kwargs": thinking}
    run_cli(["sft"], {**base, "data": data["chat"]}, tmp_path, "sft")
    run_cli(["rm"], {**base, "data": data["preference"], "norm_samples": 4}, tmp_path, "rm")
    run_cli(["dpo"], {**base, "data": data["preference"]}, tmp_path, "dpo")
    rl = {**RL_BASE, "model": model, "data": data["prompts"], "rewards": [{"function": data["reward_fn"]}]}
    run_cli(["rl"], {**rl, "chat_template_kwargs": thinking}, tmp_path, "rl")
    args = [
        "generate",
        "--model",
        model,
        "--prompts",
        data["prompts"],
        "--limit",
        "2",
        "--max-new-tokens",
        "2",
    ]
    assert rlft.cli.main([*args, "--chat-template-kwargs", '{"enable_thinking": false}']) == 0
    rendered = [c for c in calls if "add_generation_prompt" in c]
    assert len(rendered) > 50 and all(c.get("enable_thinking") is False for c in rendered)
    assert "enable_thinking" in next(c for c in calls if c.get("add_generation_prompt"))
    assert rlft.cli.main([*args, "--chat-template-kwargs", "[1]"]) == 2
    assert "--chat-template-kwargs: expected a JSON object" in capsys.readouterr().err
