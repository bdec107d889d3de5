"""Disks that refuse: a full disk keeps the last complete checkpoint and removes the incomplete one; a
read-only or blocked output path is one line naming the path. Full and read-only disks are small tmpfs
mounts (skipped where the test may not mount one)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from fault_cases import trainer_config, write_config

from rlft.cli import main
from rlft.run import RunDir, RunDirError
from rlft.train import latest_checkpoint, load_trainer_state, train_sft


def quiet(_: str) -> None:
    pass


def mount_tmpfs(where: Path, options: str) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    return where


@pytest.fixture
def tmpfs(tmp_path):
    mounted: list[Path] = []

    def mount(name: str, options: str) -> Path:
        mounted.append(mount_tmpfs(tmp_path / name, options))
        return mounted[-1]

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("room", [1.15, 1.6], ids=["model write fails", "state write fails"])
def test_a_full_disk_keeps_the_last_complete_checkpoint(room, assets, tmp_path, tmpfs):
    cfg = trainer_config("sft", assets, tmp_path, max_steps=4, save_every=1)
    probe = RunDir.create(tmp_path / "probe")
    train_sft(cfg, probe, show_progress=False, log=quiet, stop_after=1)
    one_checkpoint = tree_bytes(probe.root)
    disk = tmpfs("disk", f"size={int(one_checkpoint * room) // 4096 * 4096 + 4096}")
    run = RunDir.create(disk / "run")
    with pytest.raises(RunDirError) as err:
        train_sft(cfg, run, show_progress=False, log=quiet)
    message = str(err.value)
    assert "step-2" in message and "No space left on device" in message
    assert f"the last complete checkpoint is {run.checkpoints / 'step-1'}" in message
    assert latest_checkpoint(run) == run.checkpoints / "step-1"
    assert load_trainer_state(run.checkpoints / "step-1")["step"] == 1
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["step-1"]


def test_a_read_only_output_is_one_line(assets, tmp_path, tmpfs, capsys):
    read_only = tmpfs("ro", "ro,size=1m")
    config = write_config(trainer_config("sft", assets, tmp_path), tmp_path / "sft.yaml")
    code = main(["sft", "--config", str(config), "--out", str(read_only / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == f"rlft: error: cannot create run directory at {read_only / 'run'}: Read-only file system"


@pytest.mark.parametrize("layout", ["file", "under a file"])
def test_an_output_path_blocked_by_a_file_is_one_line(layout, assets, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    out = blocker if layout == "file" else blocker / "run"
    config = write_config(trainer_config("sft", assets, tmp_path), tmp_path / "sft.yaml")
    code = main(["sft", "--config", str(config), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"rlft: error: cannot create run directory at {out}")
