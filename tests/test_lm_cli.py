"""The language-model commands through the real ``rlft`` entry point: init-model, sft, generate, errors."""

from __future__ import annotations

import argparse

import pytest
from transformers import AutoModelForCausalLM

import rlft.cli
from rlft.commands.lm import add_lm_commands


@pytest.fixture(autouse=True, scope="module")
def lm_commands():
    """Use rlft.cli.main as is; add the lm commands if cli.py does not register them (yet)."""
    original = rlft.cli.build_parser

    def build_parser() -> argparse.ArgumentParser:
        parser = original()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        if "sft" not in sub.choices:
            add_lm_commands(sub)
        return parser

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rlft.cli, "build_parser", build_parser)
        yield


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("cli") / "tiny"
    code = rlft.cli.main(["init-model", "--size", "1m", "--out", str(out), "--vocab-size", "280"])
    assert code == 0
    return str(out)


def test_init_model_writes_a_hf_model(model_dir) -> None:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.config.hidden_size == 128


def test_sft_from_config_file_then_resume_and_generate(model_dir, tmp_path, capsys) -> None:
    config = tmp_path / "sft.yaml"
    config.write_text(
        f"model: {model_dir}\n"
        "data: task:arithmetic?max_operand=9&n=32\n"
        "batch_size: 8\nmax_steps: 4\nsave_every: 2\neval_samples: 8\neval_max_new_tokens: 4\n"
        "torch_threads: 1\n"
    )
    out = tmp_path / "run"
    code = rlft.cli.main(
        ["sft", "--config", str(config), "--out", str(out), "--no-progress", "--lr", "0.003"]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "done: 4 steps" in text and "eval_accuracy" in text
    assert (out / "model" / "config.json").is_file()
    assert (out / "checkpoints" / "step-4" / "trainer_state.pt").is_file()
    assert (out / "plots" / "metrics.png").is_file()
    assert "lr: 0.003" in (out / "config.yaml").read_text()
    # resuming a finished run is a no-op that still succeeds
    assert rlft.cli.main(["sft", "--resume", str(out), "--no-progress"]) == 0
    capsys.readouterr()

    code = rlft.cli.main(
        [
            "generate",
            "--model",
            str(out / "model"),
            "--task",
            "arithmetic",
            "--limit",
            "3",
            "--greedy",
            "--max-new-tokens",
            "4",
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and "→" in lines[0] and "reward" in lines[0]
    assert lines[-1].startswith("mean reward")

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("1+2=\n3+4=\n")
    assert (
        rlft.cli.main(
            [
                "generate",
                "--model",
                str(out / "model"),
                "--prompts",
                str(prompts),
                "--n",
                "2",
                "--max-new-tokens",
                "3",
            ]
        )
        == 0
    )
    assert len(capsys.readouterr().out.splitlines()) == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch_sise", "4"], "unknown config key 'batch_sise' (did you mean 'batch_size'?)"),
        (["--lr", "fast"], "lr"),
        (["--max_steps", "0"], "max_steps"),
    ],
)
def test_bad_config_is_one_line_error(model_dir, tmp_path, capsys, args, message) -> None:
    base = ["sft", "--out", str(tmp_path / "r"), "--model", model_dir, "--data", "task:arithmetic"]
    assert rlft.cli.main([*base, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rlft: error:") and message in err and "\n" not in err


def test_missing_data_file_is_a_data_error(model_dir, tmp_path, capsys) -> None:
    missing = tmp_path / "nope.jsonl"
    code = rlft.cli.main(
        ["sft", "--out", str(tmp_path / "r"), "--model", model_dir, "--data", str(missing), "--no-progress"]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"rlft: error: {missing}: file not found"


def test_missing_model_is_a_model_error(tmp_path, capsys) -> None:
    code = rlft.cli.main(["generate", "--model", str(tmp_path / "none"), "--task", "arithmetic"])
    assert code == 2
    assert "no model at" in capsys.readouterr().err
