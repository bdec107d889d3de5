"""`rlft control train` under faults: kill -9 and resume, SIGTERM/SIGINT, a planted checkpoint that would
run code, two trainers on one directory, a run killed before its first checkpoint, a full disk, and
non-finite losses."""

from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import rlft.control.ppo as ppo_module
from rlft.cli import main
from rlft.control import ControlConfig, preset_for, train
from rlft.control.common import NonFiniteGuard
from rlft.control.policies import ActorCritic
from rlft.control.saving import save_policy
from rlft.run import NonFiniteError, RunDir, load_config, read_metrics, save_config

# The CartPole PPO preset collects 256 steps per update.
UPDATE = 256


def cli(out: Path, *extra: str) -> list[str]:
    return ["control", "train", "--out", str(out), "--no-progress", *extra]


def spawn(argv: list[str], log: Path, **kwargs) -> subprocess.Popen:
    """`python -m rlft ARGV` with stderr to `log` (a file: polling it never blocks on a full pipe)."""
    stderr = open(log, "w")  # noqa: SIM115 - the child holds it; closed when this process exits
    return subprocess.Popen(
        [sys.executable, "-m", "rlft", *argv], stdout=subprocess.DEVNULL, stderr=stderr, **kwargs
    )


def wait_for(condition, what: str, proc: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def has_rows(run: Path) -> bool:
    path = run / "metrics.jsonl"
    return path.exists() and path.stat().st_size > 0


def strays(run: Path) -> list[Path]:
    return [p for d in (run, run / "checkpoints") if d.is_dir() for p in d.iterdir() if ".tmp-" in p.name]


def metric_steps(run: Path) -> list[int]:
    return [row["step"] for row in read_metrics(run / "metrics.jsonl")]


def final_policy(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "policy.safetensors"))


def assert_same_policy(a: Path, b: Path) -> None:
    pa, pb = final_policy(a), final_policy(b)
    assert pa.keys() == pb.keys()
    for key in pa:
        assert torch.equal(pa[key], pb[key]), key


def test_kill_9_at_random_moments_then_resume_completes(tmp_path):
    out, total = tmp_path / "run", 40 * UPDATE
    rng = random.Random(1234)
    # right after start (likely before the first checkpoint), then at seeded moments of later resumes
    delays = [0.0, rng.uniform(0.0, 0.6), rng.uniform(0.0, 0.6)]
    argv = cli(out, "--total-steps", str(total), "--checkpoint_every", "1")
    for attempt, delay in enumerate(delays):
        log = tmp_path / f"attempt{attempt}.log"
        proc = spawn(
            argv if attempt == 0 else ["control", "train", "--resume", str(out), "--no-progress"], log
        )
        wait_for(lambda log=log: "run dir" in log.read_text(), "the trainer to start", proc)
        time.sleep(delay)
        proc.kill()
        proc.wait()
    assert main(["control", "train", "--resume", str(out), "--no-progress"]) == 0
    steps = metric_steps(out)
    assert steps == sorted(set(steps)) and steps[-1] == total
    assert steps == list(range(UPDATE, total + 1, UPDATE))
    assert strays(out) == []
    assert (out / "policy.safetensors").exists()


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_a_checkpoint_and_resume_equals_an_uninterrupted_run(tmp_path, capsys, sig, code):
    total = 64 * UPDATE
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(cli(whole, "--total-steps", str(total))) == 0
    log = tmp_path / "part.log"
    proc = spawn(cli(part, "--total-steps", str(total)), log)
    wait_for(lambda: has_rows(part), "the first update", proc)
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == code
    last = log.read_text().strip().splitlines()[-1]
    assert last.startswith(f"rlft: stopped by {signal.Signals(sig).name}: checkpoint ")
    assert f"resume with: rlft control train --resume {part}" in last
    assert (part / "checkpoints" / "last.pt").exists()
    stopped_at = metric_steps(part)[-1]
    assert stopped_at < total
    assert main(["control", "train", "--resume", str(part), "--no-progress"]) == 0
    steps = metric_steps(part)
    assert steps == list(range(UPDATE, total + 1, UPDATE))
    assert_same_policy(whole, part)


class _RunsCode:
    """Unpickling this creates a directory: what a planted checkpoint would do with a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize(
    "payload",
    [
        lambda marker: {"policy": _RunsCode(marker)},
        # the layout of older checkpoints: NumPy arrays and pickled bytes, readable only by unpickling
        lambda marker: {"collector": {"obs": np.zeros(4)}, "step": 256},
    ],
    ids=["planted", "old-format"],
)
def test_a_checkpoint_that_needs_unpickling_is_refused(tmp_path, capsys, payload):
    out, marker = tmp_path / "run", tmp_path / "marker"
    assert main(cli(out, "--total-steps", str(2 * UPDATE))) == 0
    torch.save(payload(marker), out / "checkpoints" / "last.pt")
    capsys.readouterr()
    assert main(["control", "train", "--resume", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "checkpoint format not supported" in err[-1] and "last.pt" in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not marker.exists()


def test_a_second_trainer_on_the_same_directory_names_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    holder = spawn(cli(out, "--total-steps", str(2000 * UPDATE)), tmp_path / "holder.log")
    try:
        wait_for(lambda: has_rows(out), "the holder's first update", holder)
        assert main(cli(out, "--total-steps", str(2 * UPDATE))) == 2
        assert main(["control", "train", "--resume", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 2
        assert all(f"is in use by process {holder.pid}" in line for line in err), err
    finally:
        holder.send_signal(signal.SIGTERM)
        assert holder.wait(timeout=120) == 143


def test_resume_before_the_first_checkpoint_starts_again(tmp_path, capsys):
    out, total = tmp_path / "run", 4 * UPDATE
    cfg = load_config(
        ControlConfig, overrides={"total_steps": total}, base=preset_for("ppo", "CartPole-v1")[1]
    )
    run = RunDir.create(out)
    save_config(cfg, run.config_path)
    # what a run killed between its first update and its first checkpoint leaves
    run.metrics_path.write_text('{"step": 256, "time": 0.1, "episodes": 3}\n{"step": 512, "ti')
    assert main(["control", "train", "--resume", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "last.pt does not exist (the run stopped before its first checkpoint); starting it again" in err
    assert metric_steps(out) == [256, 512, 768, 1024]
    assert (out / "checkpoints" / "last.pt").exists()


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_checkpoint_write_that_fails_leaves_the_previous_one(tmp_path):
    out = tmp_path / "run"
    assert main(cli(out, "--total-steps", str(2 * UPDATE))) == 0
    ckpt = out / "checkpoints" / "last.pt"
    before = ckpt.read_bytes()
    assert len(before) > 64_000  # the limit below stops the checkpoint, not the small files
    log = tmp_path / "resume.log"
    proc = spawn(
        ["control", "train", "--resume", str(out), "--total_steps", str(4 * UPDATE), "--no-progress"],
        log,
        preexec_fn=_limit_file_size(64_000),
    )
    assert proc.wait(timeout=120) == 2
    err = log.read_text().strip().splitlines()
    assert err[-1] == f"rlft: error: cannot write {ckpt}: File too large", err
    assert "Traceback" not in log.read_text()
    assert ckpt.read_bytes() == before
    assert strays(out) == []


# --- non-finite numbers ---------------------------------------------------------------------------


def ppo_run(tmp_path, **overrides):
    base = preset_for("ppo", "CartPole-v1")[1]
    cfg = load_config(ControlConfig, overrides={"total_steps": 4 * UPDATE, **overrides}, base=base)
    run = RunDir.create(tmp_path / "run")
    save_config(cfg, run.config_path)
    return cfg, run


def nan_loss_on(monkeypatch, calls: set[int] | None) -> None:
    """Make PPO's policy loss NaN on the given calls (every call when None)."""
    original, count = ppo_module.ppo_clip_loss, [0]

    def loss(*args, **kwargs):
        count[0] += 1
        value, info = original(*args, **kwargs)
        return (value * float("nan"), info) if calls is None or count[0] in calls else (value, info)

    monkeypatch.setattr(ppo_module, "ppo_clip_loss", loss)


def test_non_finite_losses_are_skipped_and_counted(tmp_path, monkeypatch, capsys):
    cfg, run = ppo_run(tmp_path)  # 5 epochs per update, one minibatch: 20 optimiser steps
    nan_loss_on(monkeypatch, {2, 3, 11})
    result = train(cfg, run, show_progress=False)
    assert result.steps == 4 * UPDATE
    rows = read_metrics(run.metrics_path)
    assert [r["skipped_steps"] for r in rows] == [2, 2, 3, 3]
    err = capsys.readouterr().err
    assert "step 256: loss is nan; step skipped (weights unchanged)" in err
    for tensor in final_policy(run.root).values():
        assert torch.isfinite(tensor).all()


def test_consecutive_non_finite_losses_stop_the_run_without_saving(tmp_path, monkeypatch):
    cfg, run = ppo_run(tmp_path, max_consecutive_skips=3, checkpoint_every=1)
    nan_loss_on(monkeypatch, None)
    with pytest.raises(NonFiniteError, match="3 consecutive steps skipped for a non-finite loss"):
        train(cfg, run, show_progress=False)
    assert not (run.checkpoints / "last.pt").exists()
    assert not (run.root / "policy.safetensors").exists()


def test_a_skipped_step_leaves_weights_and_optimizer_unchanged():
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    before = [p.detach().clone() for p in net.parameters()]
    guard = NonFiniteGuard(max_consecutive_skips=5)
    loss = net(torch.ones(1, 3)).sum() * float("inf")
    assert not guard.step_optimizer(optimizer, net.parameters(), loss, max_grad_norm=0.5)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    assert optimizer.state_dict()["state"] == {} and guard.skipped == 1


def test_non_finite_weights_are_never_written(tmp_path, monkeypatch, capsys):
    cfg, run = ppo_run(tmp_path, checkpoint_every=1)
    original = ppo_module.PPO.update

    def diverge(self, batch, frac):
        stats = original(self, batch, frac)
        with torch.no_grad():
            next(self.policy.parameters()).fill_(float("inf"))
        return stats

    monkeypatch.setattr(ppo_module.PPO, "update", diverge)
    with pytest.raises(NonFiniteError, match=r"last.pt: not written: policy parameter .* NaN or infinite"):
        train(cfg, run, show_progress=False)
    assert not (run.checkpoints / "last.pt").exists()
    policy_path = run.root / "policy.safetensors"
    policy = ActorCritic(4, 2, True, cfg.hidden, cfg.init_log_std)
    with torch.no_grad():
        next(policy.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"policy\.safetensors: not written"):
        save_policy(policy, None, policy_path, cfg)
    assert not policy_path.exists()


def test_an_environment_without_plain_state_restarts_its_episodes_on_resume(tmp_path, capsys):
    pytest.importorskip("Box2D")
    over = {"env": "LunarLander-v3", "num_envs": 2, "n_steps": 16, "total_steps": 96}
    cfg = load_config(ControlConfig, overrides={**over, "ppo": {"minibatches": 1, "epochs": 1}})
    run = RunDir.create(tmp_path / "run")
    save_config(cfg, run.config_path)
    train(cfg, run, show_progress=False, stop_at_step=32)
    result = train(cfg, run, show_progress=False, resume=True)
    assert result.steps == 96 and metric_steps(run.root) == [32, 64, 96]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "rlft: the environment state was not saved (LunarLander.world is a b2World); resumed episodes "
        "start afresh (reseeded), so this run will not repeat an uninterrupted one exactly"
    ]
