"""Stopping and resuming: SIGTERM / Ctrl-C write a checkpoint and say how to resume; kill -9 at any moment
(also inside a checkpoint write) loses nothing that was checkpointed; a resumed run is the run that was
not interrupted — same weights bit for bit, each metric step once, TensorBoard complete up to the last
checkpoint and no temporaries left behind."""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import time

import pytest
import torch
from fault_cases import rlft_process, trainer_config, wait_for_rows, write_config
from safetensors.torch import load_file

from rlft.run import CheckpointError, MetricsWriter, RunDir, RunInterrupted, StopSignals, read_metrics
from rlft.train import latest_checkpoint, train_dpo, train_rl, train_rm, train_sft

TRAIN = {"sft": train_sft, "rm": train_rm, "dpo": train_dpo, "rl": train_rl}


def quiet(_: str) -> None:
    pass


def model_weights(directory) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def assert_same_weights(a, b) -> None:
    wa, wb = model_weights(a), model_weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def training_steps(run: RunDir) -> list[int]:
    return [r["step"] for r in read_metrics(run.metrics_path) if "lr" in r]


def signal_at_step(monkeypatch, signum: int, at_step: int) -> None:
    """Send ``signum`` to this process when the trainer logs ``at_step``'s metrics (mid-loop)."""
    original = MetricsWriter.log

    def log(self, step, metrics):
        original(self, step, metrics)
        if step == at_step and "lr" in metrics:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(MetricsWriter, "log", log)


@pytest.mark.parametrize("kind", ["sft", "rm", "dpo", "rl"])
def test_sigterm_checkpoints_then_resume_equals_the_uninterrupted_run(kind, assets, tmp_path, monkeypatch):
    cfg = trainer_config(kind, assets, tmp_path)
    train = TRAIN[kind]
    whole = RunDir.create(tmp_path / "whole")
    train(cfg, whole, show_progress=False, log=quiet)

    run = RunDir.create(tmp_path / "stopped")
    with monkeypatch.context() as patch:
        signal_at_step(patch, signal.SIGTERM, 3)
        with pytest.raises(RunInterrupted) as stop:
            train(cfg, run, show_progress=False, log=quiet)
    assert stop.value.exit_code == 143
    message = str(stop.value)
    assert "SIGTERM" in message and f"resume with: rlft {kind} --resume {run.root}" in message
    assert latest_checkpoint(run) == run.checkpoints / "step-3"  # save_every 0: written for the signal
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the loop

    train(cfg, run, resume=True, show_progress=False, log=quiet)
    assert_same_weights(run.root / "model", whole.root / "model")
    assert training_steps(run) == list(range(1, 9))


def test_ctrl_c_checkpoints_with_exit_status_130(assets, tmp_path, monkeypatch):
    cfg = trainer_config("sft", assets, tmp_path)
    run = RunDir.create(tmp_path / "run")
    signal_at_step(monkeypatch, signal.SIGINT, 2)
    with pytest.raises(RunInterrupted) as stop:
        train_sft(cfg, run, show_progress=False, log=quiet)
    assert stop.value.exit_code == 130 and "SIGINT" in str(stop.value)
    assert latest_checkpoint(run) == run.checkpoints / "step-2"


def test_a_second_ctrl_c_leaves_at_once():
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.requested and signals.exit_code == 130
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("kind", ["rm", "dpo"])
def test_resume_before_the_first_checkpoint_starts_again_without_the_dead_runs_rows(kind, assets, tmp_path):
    cfg = trainer_config(kind, assets, tmp_path, max_steps=3)
    run = RunDir.create(tmp_path / "run")
    with open(run.metrics_path, "w") as f:  # what a run killed at step 2 leaves
        for step in (0, 1, 2):
            f.write(json.dumps({"step": step, "time": 0.1, "loss": 99.0, "lr": 1.0}) + "\n")
    train = TRAIN[kind]
    train(cfg, run, resume=True, show_progress=False, log=quiet)
    rows = read_metrics(run.metrics_path)
    assert training_steps(run) == [1, 2, 3]
    assert all(r.get("loss") != 99.0 for r in rows)


def test_cli_sigterm_prints_where_to_resume_and_exits_143(assets, tmp_path):
    cfg = trainer_config("sft", assets, tmp_path, max_steps=1_000_000)
    config = write_config(cfg, tmp_path / "sft.yaml")
    out = tmp_path / "run"
    child = rlft_process("sft", "--config", str(config), "--out", str(out), "--no-progress")
    wait_for_rows(child, out / "metrics.jsonl", 2)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("rlft: stopped by SIGTERM") and f"rlft sft --resume {out}" in last
    assert "Traceback" not in err
    assert latest_checkpoint(RunDir(out)) is not None


def test_kill_9_at_random_moments_then_resume_loses_nothing(assets, tmp_path):
    """Three seeded kill points (right after start, and mid-run where every step writes a checkpoint, so
    most kills land inside a write), each followed by --resume; the last resume finishes the run."""
    cfg = trainer_config("sft", assets, tmp_path, max_steps=12, save_every=1)
    whole = RunDir.create(tmp_path / "whole")
    train_sft(cfg, whole, show_progress=False, log=quiet)
    config = write_config(cfg, tmp_path / "sft.yaml")
    out = tmp_path / "run"
    rng = random.Random(17)
    for attempt, rows in enumerate((0, 3, 7)):
        args = ["--config", str(config), "--out", str(out)] if attempt == 0 else ["--resume", str(out)]
        child = rlft_process("sft", *args, "--no-progress")
        if rows:
            wait_for_rows(child, out / "metrics.jsonl", rows)
        else:  # from the moment the run exists (its config written), not before
            while not (out / "config.yaml").exists() and child.poll() is None:
                time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        if child.poll() is None:
            child.kill()
        _, err = child.communicate(timeout=60)
        assert child.returncode == -signal.SIGKILL, err
        run = RunDir(out)
        last = latest_checkpoint(run)
        if last is not None:  # whatever survived is complete: the same checkpoint as the whole run's
            assert_same_weights(last, whole.checkpoints / last.name)
            assert_tensorboard_reaches(run, int(last.name.split("-")[1]))
    child = rlft_process("sft", "--resume", str(out), "--no-progress")
    _, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    run = RunDir(out)
    assert_same_weights(run.root / "model", whole.root / "model")
    assert training_steps(run) == list(range(1, 13))
    leftovers = [p.name for p in run.checkpoints.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def assert_tensorboard_reaches(run: RunDir, step: int) -> None:
    """TensorBoard's events (read as TensorBoard reads them) hold every training step up to ``step``."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run.root / "tb"), size_guidance={"scalars": 0}).Reload()
    steps = sorted({e.step for e in events.Scalars("loss")}) if "loss" in events.Tags()["scalars"] else []
    assert steps[:step] == list(range(1, step + 1))


@pytest.mark.parametrize(
    "content", [b"", b"not a zip", pickle.dumps({"step": 1})], ids=["empty", "junk", "pickle"]
)
def test_a_corrupt_trainer_state_is_one_line(content, assets, tmp_path):
    cfg = trainer_config("sft", assets, tmp_path, max_steps=2, save_every=1)
    run = RunDir.create(tmp_path / "run")
    train_sft(cfg, run, show_progress=False, log=quiet, stop_after=1)
    (run.checkpoints / "step-1" / "trainer_state.pt").write_bytes(content)
    with pytest.raises(
        CheckpointError, match=r"trainer_state\.pt: not a trainer state this version can read"
    ):
        train_sft(cfg, run, resume=True, show_progress=False, log=quiet)
