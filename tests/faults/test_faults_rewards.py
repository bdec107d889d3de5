"""Reward functions under faults: a killed trainer leaves no pool workers behind, and a resumed run scores
with the reward file it started with (or stops, naming the file, when that file changed or is gone)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from fault_cases import rlft_process, trainer_config, write_config

import rlft.cli
from rlft.rewards.pool import start_time
from rlft.run import load_config
from rlft.train import RLConfig

POOLED_TRAINER = """
import sys, time
from rlft.rewards import build_rewards

if __name__ == "__main__":
    rewards = build_rewards([{"function": sys.argv[1] + ":score", "processes": 2}])
    rewards(["p"] * 4, ["a"] * 4)
    print(" ".join(map(str, rewards.pools["score"].worker_pids())), flush=True)
    time.sleep(600)
"""

REWARD = """
def score(prompts, completions, **fields):
    return [float(len(c) % 3) for c in completions]
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_pool_workers_exit_when_the_trainer_is_killed(tmp_path):
    (tmp_path / "reward.py").write_text(REWARD)
    (tmp_path / "trainer.py").write_text(POOLED_TRAINER)
    stderr = tmp_path / "stderr.txt"
    with open(stderr, "w") as err:  # a file, not a pipe: the pool's helpers inherit it
        trainer = subprocess.Popen(
            [sys.executable, str(tmp_path / "trainer.py"), str(tmp_path / "reward.py")],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=tmp_path,
        )
    try:
        line = trainer.stdout.readline()
        workers = {int(pid): start_time(int(pid)) for pid in line.split()}
        assert workers and all(workers.values()), f"trainer printed {line!r}; stderr: {stderr.read_text()}"
    finally:
        trainer.kill()  # SIGKILL: no cleanup of any kind runs in the trainer
        trainer.wait()
    deadline = time.monotonic() + 10.0  # generous; the workers notice within a second
    alive = workers
    while alive and time.monotonic() < deadline:
        alive = {pid: t for pid, t in workers.items() if start_time(pid) == t}
        time.sleep(0.05)
    for pid in alive:  # never leave them behind, even when the assertion fails
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"pool workers {sorted(alive)} outlived the killed trainer"


def test_resumed_run_scores_with_the_file_it_started_with_and_stops_when_it_changed(
    assets, tmp_path, monkeypatch, capsys
):
    start = tmp_path / "start"
    start.mkdir()
    reward = start / "reward.py"
    reward.write_text(REWARD)
    cfg = trainer_config("rl", assets, tmp_path, rewards=["reward.py:score"], max_steps=1)
    config = write_config(cfg, start / "rl.yaml")
    run = tmp_path / "run"
    child = rlft_process("rl", "--config", str(config), "--out", str(run), "--no-progress", cwd=start)
    _, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    assert load_config(RLConfig, run / "config.yaml").rewards == [f"{reward}:score"]
    [entry] = json.loads((run / "reward_sources.json").read_text())
    stored = hashlib.sha256(reward.read_bytes()).hexdigest()
    assert entry == {
        "where": "rewards[0]",
        "function": f"{reward}:score",
        "path": str(reward),
        "sha256": stored,
    }

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "reward.py").write_text(
        "def score(prompts, completions, **fields):\n    raise RuntimeError\n"
    )
    monkeypatch.chdir(elsewhere)  # a relative reward.py here is another file: the run must not load it
    assert rlft.cli.main(["rl", "--resume", str(run), "--no-progress"]) == 0

    reward.write_text(REWARD + "\n# edited\n")
    assert rlft.cli.main(["rl", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"rlft: error: {run / 'reward_sources.json'}: reward file {reward} changed since the run started "
        f"(sha256 {stored[:12]}, now {hashlib.sha256(reward.read_bytes()).hexdigest()[:12]}); restore it to "
        "resume this run, or start a new run with the new file"
    )

    reward.unlink()
    assert rlft.cli.main(["rl", "--resume", str(run), "--no-progress"]) == 2
    assert f"reward file {reward} (sha256 {stored[:12]}) is gone" in capsys.readouterr().err
