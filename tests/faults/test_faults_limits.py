"""Sizes checked before anything is built: a generation longer than the model's context is refused with
one line, before its buffers are allocated."""

from __future__ import annotations

import pytest
from fault_cases import trainer_config, write_config

from rlft.cli import main
from rlft.models import ModelError, SamplingParams, load_causal_lm, load_tokenizer, sample


def test_a_generation_past_the_context_is_refused_before_allocation(assets):
    model = load_causal_lm(assets["arithmetic_model"])
    tokenizer = load_tokenizer(assets["arithmetic_model"])
    with pytest.raises(ModelError, match="exceeds the model's context of 64 positions"):
        sample(model, tokenizer, ["1+2="], SamplingParams(max_new_tokens=60_000))


def test_rl_with_too_many_new_tokens_is_one_line(assets, tmp_path, capsys):
    config = write_config(trainer_config("rl", assets, tmp_path, max_new_tokens=1000), tmp_path / "rl.yaml")
    code = main(["rl", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1] == (
        "rlft: error: config key 'sampling.max_new_tokens': expected fewer than the model's context length 64, "
        "got 1000"
    )
