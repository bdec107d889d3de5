"""The reward commands through the real ``rlft`` entry point: ``rm`` (train, resume) and ``score``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import rlft.cli
from rlft.data import get_task
from rlft.models import build_tiny_model, load_reward_model, load_tokenizer
from rlft.rewards import build_rewards, dapo_overlong_penalty


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("cli") / "tiny"
    corpus = get_task("preference").corpus(300)
    return str(build_tiny_model(out, size="1m", corpus=corpus, vocab_size=300, max_position_embeddings=64))


@pytest.fixture(scope="module")
def trained_rm(model_dir, tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("rmcli")
    config = root / "rm.yaml"
    config.write_text(
        f"model: {model_dir}\n"
        "data: task:preference?n=48&label_noise=0\n"
        "batch_size: 8\nmax_steps: 4\nepochs: null\nsave_every: 2\neval_samples: 16\nnorm_samples: 32\n"
        "torch_threads: 1\n"
    )
    out = root / "run"
    assert (
        rlft.cli.main(["rm", "--config", str(config), "--out", str(out), "--no-progress", "--lr", "0.002"])
        == 0
    )
    return str(out)


def test_rm_trains_and_resumes_from_the_run_dir(trained_rm, capsys) -> None:
    model, _, norm = load_reward_model(f"{trained_rm}/model")
    assert model.config.num_labels == 1 and norm is not None
    assert Path(trained_rm, "checkpoints", "step-4", "trainer_state.pt").is_file()
    assert Path(trained_rm, "plots").is_dir() and Path(trained_rm, "config.yaml").is_file()
    # resuming a finished run: nothing left to train, the final model is written again
    assert rlft.cli.main(["rm", "--resume", trained_rm, "--no-progress"]) == 0
    assert "done: 4 steps" in capsys.readouterr().out


def test_score_writes_each_row_with_total_and_per_function(trained_rm, tmp_path, capsys) -> None:
    rows = [
        {"prompt": "Describe the forest briefly:", "completion": " green calm", "answer": "green calm"},
        {"prompt": "Describe the soup simply:", "completion": " metal loud", "answer": None},
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scores.jsonl"
    args = [
        "score",
        "--data",
        str(data),
        "--out",
        str(out),
        "--reward-model",
        f"{trained_rm}/model",
        "--normalize",
    ]
    args += ["--reward", "exact_match", "--reward", "{name: overlong, max_len: 3, cache: 2, weight: 0.5}"]
    assert rlft.cli.main(args) == 0
    assert "scored 2 rows with reward_model, exact_match, overlong" in capsys.readouterr().out
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["answer"] for g in got] == ["green calm", None]  # extra fields kept
    assert got[1]["rewards"]["exact_match"] is None  # no answer: no reward from exact_match
    assert got[0]["rewards"]["exact_match"] == 1.0
    expected = build_rewards([{"reward_model": f"{trained_rm}/model", "normalize": True}])(
        [r["prompt"] for r in rows], [r["completion"] for r in rows]
    ).total
    torch.testing.assert_close(torch.tensor([g["rewards"]["reward_model"] for g in got]), expected)
    # token counts come from the reward model's tokenizer
    tokenizer = load_tokenizer(f"{trained_rm}/model")
    n0 = len(tokenizer(rows[0]["completion"], add_special_tokens=False)["input_ids"])
    assert got[0]["rewards"]["overlong"] == dapo_overlong_penalty(n0, 3, 2)
    total0 = got[0]["rewards"]["reward_model"] + 1.0 + 0.5 * got[0]["rewards"]["overlong"]
    assert got[0]["reward"] == pytest.approx(total0, abs=1e-5)


def test_score_errors_are_one_line(tmp_path, capsys) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text('{"prompt": "p", "completion": "c"}\n')
    out = str(tmp_path / "o.jsonl")
    assert rlft.cli.main(["score", "--data", str(data), "--out", out, "--reward", "nope"]) == 2
    assert "rlft: error: rewards[0]: unknown reward function 'nope'" in capsys.readouterr().err
    assert rlft.cli.main(["score", "--data", str(data), "--out", out]) == 2
    assert "give --reward-model DIR" in capsys.readouterr().err
    assert rlft.cli.main(["score", "--data", str(data), "--out", out, "--reward", "exact_match"]) == 2
    assert "needs the row field 'answer'" in capsys.readouterr().err
    spec = tmp_path / "rewards.yaml"
    spec.write_text("rewards: [exact_match]\nextra: 1\n")
    assert rlft.cli.main(["score", "--data", str(data), "--out", out, "--rewards", str(spec)]) == 2
    assert "expected keys 'rewards'" in capsys.readouterr().err


def test_score_takes_device_and_precision(trained_rm, tmp_path) -> None:
    """``--precision bf16`` scores under bfloat16 autocast: close to float32, not the same numbers."""
    data = tmp_path / "rows.jsonl"
    data.write_text(
        json.dumps({"prompt": "Describe the forest briefly:", "completion": " green calm"}) + "\n"
    )
    scores = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.jsonl"
        args = ["score", "--data", str(data), "--out", str(out), "--reward-model", f"{trained_rm}/model"]
        assert rlft.cli.main([*args, "--device", "cpu", "--precision", precision]) == 0
        scores[precision] = json.loads(out.read_text())["reward"]
    assert scores["bf16"] != scores["fp32"]
    assert scores["bf16"] == pytest.approx(scores["fp32"], abs=0.05 + 0.05 * abs(scores["fp32"]))
