"""Tests for rlft.run's atomic writes, metrics log, progress bar, seeding, run directories and plots."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rlft.run import (
    MetricsWriter,
    Progress,
    RunDir,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    capture_rng_state,
    plot_metrics,
    plot_run,
    read_metrics,
    restore_rng_state,
    seed_everything,
)

# --- atomic writes ----------------------------------------------------------------------------------


def test_atomic_writes_leave_no_temp_file(tmp_path):
    atomic_write_text(tmp_path / "sub" / "a.txt", "hello")
    atomic_write_bytes(tmp_path / "sub" / "b.bin", b"\x00\x01")
    atomic_write_json(tmp_path / "sub" / "c.json", {"x": [1, 2]})
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["a.txt", "b.bin", "c.json"]
    assert (tmp_path / "sub" / "a.txt").read_text() == "hello"
    assert (tmp_path / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "sub" / "c.json").read_text() == '{\n  "x": [\n    1,\n    2\n  ]\n}\n'


def test_atomic_path_exception_keeps_old_content(tmp_path):
    target = tmp_path / "state.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".state.txt.tmp-")
        tmp.write_text("half-written")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.txt"]


def test_atomic_path_replaces(tmp_path):
    target = tmp_path / "state.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"  # not visible until the block finishes
    assert target.read_text() == "new"


# --- metrics ----------------------------------------------------------------------------------------


def test_metrics_jsonl_content_and_nan(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        writer.log(1, {"loss": torch.tensor(0.5), "acc": np.float32(0.25), "n": np.int64(3), "lr": 1e-3})
        writer.log(2, {"loss": float("nan"), "ret": float("inf"), "t": torch.tensor([2.0])})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert list(first) == ["step", "time", "loss", "acc", "n", "lr"]
    assert first["step"] == 1 and first["loss"] == 0.5 and first["acc"] == 0.25 and first["n"] == 3
    assert isinstance(first["time"], float) and first["time"] >= 0
    assert second["loss"] is None and second["ret"] is None and second["t"] == 2.0
    assert "NaN" not in lines[1] and "Infinity" not in lines[1]
    assert read_metrics(tmp_path / "metrics.jsonl") == [first, second]


def test_metrics_lines_are_flushed_before_close(tmp_path):
    writer = MetricsWriter(tmp_path, tensorboard=False)
    writer.log(0, {"x": 1.0})
    assert read_metrics(tmp_path / "metrics.jsonl")[0]["x"] == 1.0
    writer.close()
    writer.close()  # idempotent


def test_metrics_rejects_bad_values(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        with pytest.raises(ValueError, match="metric 'x': expected a number, got 'a' \\(str\\)"):
            writer.log(0, {"x": "a"})
        with pytest.raises(ValueError, match="metric 'v': expected a scalar"):
            writer.log(0, {"v": torch.zeros(3)})


def test_metrics_disabled_writes_nothing(tmp_path):
    with MetricsWriter(tmp_path / "run", enabled=False) as writer:
        writer.log(0, {"x": 1.0})
    assert not (tmp_path / "run").exists()


def test_metrics_tensorboard_optional(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        writer.log(0, {"x": 1.0})
    assert read_metrics(tmp_path / "metrics.jsonl")[0]["x"] == 1.0
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        assert not (tmp_path / "tb").exists()
    else:
        assert any((tmp_path / "tb").iterdir())


def test_read_metrics_skips_truncated_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "x": 1}\n{"step": 2, "x": 2}\n{"step": 3, "x"')
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_read_metrics_corrupt_line_names_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": oops}\n{"step": 3}\n')
    with pytest.raises(ValueError, match=rf"^{path}:2: corrupt metrics line"):
        read_metrics(path)


def test_resumed_writer_drops_partial_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "x": 1}\n{"step": 2, "x"')
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        writer.log(2, {"x": 2.0})
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_import_is_lightweight():
    code = "import sys, rlft.run; print(sorted(m for m in sys.modules if 'tensorboard' in m or 'matplotlib' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- progress ---------------------------------------------------------------------------------------


def test_progress_shows_compact_postfix(capsys):
    with Progress(total=4, desc="train", unit="ep") as bar:
        bar.update(2, **{"return": 475.23456, "kl": 1e-5, "episodes": 7})
        bar.update(2)
    err = capsys.readouterr().err
    assert "train" in err and "4/4" in err and "ep" in err
    assert "return=475.2" in err and "kl=1e-05" in err and "episodes=7" in err


def test_progress_with_a_time_budget_shows_the_earlier_end(capsys):
    # 10 of a huge step count done in 60 s of a 5-minute budget: the budget ends first (4 min left) …
    with Progress(total=10**9, desc="rl", time_budget_s=300, initial=5) as bar:
        bar.update(10, budget_used_s=60.0)
        assert bar.time_left(60.0) == 240.0
    err = capsys.readouterr().err
    assert "left=04:00" in err and "15/1000000000" in err
    # … while 10 steps of 20 done in 60 s of a 1-hour budget end with the steps (60 s left).
    with Progress(total=20, time_budget_s=3600) as bar:
        bar.update(10, budget_used_s=60.0)
        assert bar.time_left(60.0) == 60.0


def test_progress_disabled_is_silent(capsys):
    with Progress(total=3, enabled=False) as bar:
        bar.update(1, loss=0.5)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


# --- seeding ----------------------------------------------------------------------------------------


def draw() -> tuple:
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(), torch.randn(2).tolist()


def test_seed_everything_is_reproducible():
    seed_everything(123)
    first = draw()
    seed_everything(123)
    assert draw() == first
    seed_everything(2**40)  # larger than NumPy's 32-bit seed range


def test_rng_capture_restore_through_torch_save(tmp_path):
    seed_everything(7)
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    state = capture_rng_state()
    expected = draw()
    torch.save(state, tmp_path / "rng.pt")
    draw()
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draw() == expected


def test_restore_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown RNG state keys \\['bogus'\\]"):
        restore_rng_state({"bogus": 1})


# --- run directory ----------------------------------------------------------------------------------


def test_rundir_layout(tmp_path):
    run = RunDir.create(tmp_path / "exp")
    assert run.root == tmp_path / "exp"
    assert run.config_path == run.root / "config.yaml"
    assert run.metrics_path == run.root / "metrics.jsonl"
    assert run.checkpoints.is_dir() and run.checkpoints == run.root / "checkpoints"
    assert run.plots.is_dir() and run.plots == run.root / "plots"
    assert RunDir.open(tmp_path / "exp") == run


def test_rundir_default_names_are_unique(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("rlft.run.rundir.time.strftime", lambda fmt: "20240102-030405")
    first = RunDir.create(prefix="ppo")
    second = RunDir.create(prefix="ppo")
    third = RunDir.create(prefix="ppo")
    assert first.root == Path("runs/ppo-20240102-030405")  # relative to the working directory
    assert second.root == Path("runs/ppo-20240102-030405-2")
    assert third.root == Path("runs/ppo-20240102-030405-3")
    assert third.checkpoints.is_dir() and third.plots.is_dir()


def test_rundir_open_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no run directory at {tmp_path / 'nope'}"):
        RunDir.open(tmp_path / "nope")


# --- plots ------------------------------------------------------------------------------------------


def test_plot_run_writes_png(tmp_path):
    run = RunDir.create(tmp_path / "run")
    rng = np.random.default_rng(0)
    with MetricsWriter(run.root, tensorboard=False) as writer:
        for step in range(50):
            metrics = {"return": float(step + 20 * rng.standard_normal()), "loss": 1.0 / (step + 1)}
            if step % 5 == 0:
                metrics["kl"] = float("nan") if step == 10 else 0.01 * step  # sparse and with a null
            writer.log(step, metrics)
    out = plot_run(run)
    assert out == run.plots / "metrics.png"
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 1000
    assert sorted(p.name for p in run.plots.iterdir()) == ["metrics.png"]


def test_plot_metrics_selected_keys_and_x(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        "".join(json.dumps({"step": i, "time": i * 0.1, "a": math.sin(i)}) + "\n" for i in range(20))
    )
    out = plot_metrics(path, tmp_path / "figs" / "a.png", keys=["a"], x="time")
    assert out.stat().st_size > 0
    with pytest.raises(ValueError, match="no numeric metrics to plot"):
        plot_metrics(path, tmp_path / "b.png", keys=[])
