"""The non-finite policy: a step whose loss, gradient or rewards are NaN/inf is skipped (weights untouched)
and counted in ``skipped_steps``; ``max_consecutive_skips`` such steps in a row stop the run with one line;
non-finite weights are never saved."""

from __future__ import annotations

import math

import pytest
import torch
from fault_cases import trainer_config, write_config
from safetensors.torch import load_file

from rlft.cli import main
from rlft.run import NonFiniteError, RunDir, read_metrics
from rlft.train import latest_checkpoint, train_dpo, train_rl, train_rm, train_sft

TRAIN = {"sft": train_sft, "rm": train_rm, "dpo": train_dpo, "rl": train_rl}


def quiet(_: str) -> None:
    pass


def poison_gradients(monkeypatch, bad_calls) -> list[int]:
    """Make the gradient of the listed optimiser steps (1-based calls of clip_grad_norm_) NaN."""
    original = torch.nn.utils.clip_grad_norm_
    calls = [0]

    def clip(params, max_norm, *args, **kwargs):
        calls[0] += 1
        params = list(params)
        if bad_calls == "all" or calls[0] in bad_calls:
            for p in params:
                if p.grad is not None:
                    p.grad.fill_(math.nan)
        return original(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    return calls


def all_finite(directory) -> bool:
    return all(
        bool(torch.isfinite(t).all()) for t in load_file(str(directory / "model.safetensors")).values()
    )


@pytest.mark.parametrize("kind", ["sft", "rm", "dpo", "rl"])
def test_a_nan_gradient_skips_that_step_and_training_goes_on(kind, assets, tmp_path, monkeypatch):
    cfg = trainer_config(kind, assets, tmp_path, max_steps=4)
    run = RunDir.create(tmp_path / "run")
    poison_gradients(monkeypatch, {2})
    TRAIN[kind](cfg, run, show_progress=False, log=quiet)
    rows = [r for r in read_metrics(run.metrics_path) if "lr" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["skipped_steps"] for r in rows] == [0, 1, 1, 1]
    assert all_finite(run.root / "model")


@pytest.mark.parametrize("kind", ["sft", "rm", "dpo", "rl"])
def test_consecutive_nan_steps_stop_the_run_and_save_nothing_non_finite(kind, assets, tmp_path, monkeypatch):
    cfg = trainer_config(kind, assets, tmp_path, max_steps=8, save_every=1, max_consecutive_skips=3)
    run = RunDir.create(tmp_path / "run")
    calls = poison_gradients(monkeypatch, "all")
    with pytest.raises(NonFiniteError, match="3 consecutive steps skipped"):
        TRAIN[kind](cfg, run, show_progress=False, log=quiet)
    assert calls[0] == 3
    assert not (run.root / "model").exists()
    for checkpoint in run.checkpoints.glob("step-*"):
        assert all_finite(checkpoint)


def test_rewards_that_are_all_none_stop_the_run_with_one_line(assets, tmp_path, capsys):
    cfg = trainer_config(
        "rl",
        assets,
        tmp_path,
        rewards=[{"function": f"{assets['reward_file']}:nothing"}],
        max_consecutive_skips=2,
    )
    config = write_config(cfg, tmp_path / "rl.yaml")
    code = main(["rl", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "step 1: reward is nan; step skipped" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("rlft: error: step 2: 2 consecutive steps skipped for a non-finite reward")
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "skipped_steps" in r]
    assert [r["skipped_steps"] for r in rows] == [1]
    assert latest_checkpoint(RunDir(tmp_path / "run")) is None
