"""One process per run directory: a second trainer on the same --out, or a --resume of a run that is still
training, stops with one line naming the holder's PID; the lock dies with its holder, even on kill -9."""

from __future__ import annotations

import os

import pytest
from fault_cases import rlft_process, trainer_config, wait_for_rows, write_config

from rlft.run import RunDir, RunInUseError


def test_a_second_claim_names_the_holder(tmp_path):
    first = RunDir.create(tmp_path / "run").claim()
    with pytest.raises(RunInUseError, match=f"in use by process {os.getpid()}"):
        RunDir(tmp_path / "run").claim()
    first.release()
    RunDir(tmp_path / "run").claim().release()


def test_two_processes_on_one_run_directory(assets, tmp_path):
    cfg = trainer_config("sft", assets, tmp_path, max_steps=1_000_000)
    config = write_config(cfg, tmp_path / "sft.yaml")
    out = tmp_path / "run"
    first = rlft_process("sft", "--config", str(config), "--out", str(out), "--no-progress")
    try:
        wait_for_rows(first, out / "metrics.jsonl", 1)
        config_before = (out / "config.yaml").read_bytes()
        for args in (["--config", str(config), "--out", str(out)], ["--resume", str(out)]):
            second = rlft_process("sft", *args, "--no-progress", "--max_steps", "3")
            _, err = second.communicate(timeout=120)
            assert second.returncode == 2, err
            assert err.strip().splitlines()[-1] == (
                f"rlft: error: run directory {out} is in use by process {first.pid}; wait for it to "
                "finish, stop it, or pass another --out"
            )
        assert (out / "config.yaml").read_bytes() == config_before
        assert first.poll() is None  # the holder was not disturbed
    finally:
        first.kill()
        first.communicate(timeout=60)
    RunDir(out).claim().release()  # kill -9 released the lock
