"""PPO on CartPole-v1 end to end: it learns within a budget, writes its run directory, and the CLI
reports bad input in one line."""

import json

import pytest
from safetensors.torch import load_file

from rlft.cli import main
from rlft.control.config import ControlConfig, preset_for
from rlft.control.envs import EnvError, make_vec_env
from rlft.control.ppo import train_ppo
from rlft.run import RunDir, load_config


def cartpole_config(**overrides) -> ControlConfig:
    _, preset = preset_for("ppo", "CartPole-v1")
    return load_config(ControlConfig, overrides={"seed": 1, **overrides}, base=preset)


def test_ppo_learns_cartpole_within_budget(tmp_path):
    cfg = cartpole_config(total_steps=60_000, target_return=400.0)
    result = train_ppo(cfg, RunDir.create(tmp_path / "run"), show_progress=False)
    assert result.solved_at_step is not None, (
        f"mean return only {result.mean_return:.1f} after {result.steps} steps"
    )
    assert result.mean_return >= 400.0
    assert result.steps <= 60_000


def test_run_directory_contents(tmp_path):
    run = RunDir.create(tmp_path / "run")
    cfg = cartpole_config(total_steps=2048)
    result = train_ppo(cfg, run, show_progress=False)
    rows = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    assert len(rows) == 2048 // 256 and rows[-1]["step"] == result.steps
    assert {"return_mean_window", "approx_kl", "clipfrac", "explained_variance", "steps_per_second"} <= rows[
        -1
    ].keys()
    weights = load_file(str(run.root / "policy.safetensors"))
    assert weights["actor.0.weight"].shape == (64, 4)


def test_episode_returns_are_real_cartpole_returns(tmp_path):
    # A fixed-length episode count check: every CartPole episode returns its length (reward 1 per step),
    # so the masked reset steps of next-step autoreset must not leak into episode returns.
    run = RunDir.create(tmp_path / "run")
    train_ppo(cartpole_config(total_steps=2048), run, show_progress=False)
    rows = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    with_eps = [r for r in rows if "episode_return" in r]
    assert with_eps
    for r in with_eps:
        assert r["episode_return"] == pytest.approx(r["episode_length"])


def test_native_vector_env_is_used_for_cartpole():
    envs = make_vec_env("CartPole-v1", 4, seed=0)
    assert type(envs).__name__ == "CartPoleVectorEnv"
    with pytest.raises(EnvError, match="unknown gymnasium environment 'CartPol-v1'"):
        make_vec_env("CartPol-v1", 2, seed=0)


def test_cli_trains_and_writes_plot(tmp_path, capsys):
    out = tmp_path / "cli-run"
    code = main(
        [
            "control",
            "train",
            "--algo",
            "ppo",
            "--env",
            "CartPole-v1",
            "--total-steps",
            "1024",
            "--out",
            str(out),
            "--no-progress",
            "--ppo.epochs",
            "2",
        ]
    )
    assert code == 0
    assert (out / "plots" / "metrics.png").stat().st_size > 1000
    assert (out / "config.yaml").exists() and "epochs: 2" in (out / "config.yaml").read_text()
    assert "curve:" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["control", "train", "--algo", "ppx"], "unknown control algorithm 'ppx'; expected one of: ppo"),
        (["control", "train", "--ppo.lrr", "1e-3"], "unknown config key 'ppo.lrr' (did you mean 'ppo.lr'?)"),
        (["control", "train", "--ppo.lr", "fast"], "config key 'ppo.lr': expected a float, got 'fast'"),
        (
            ["control", "train", "--env", "NoSuchEnv-v0", "--total-steps", "64"],
            "unknown gymnasium environment 'NoSuchEnv-v0'",
        ),
        (["control", "train", "--preset", "ppo/Nope-v0"], "unknown preset 'ppo/Nope-v0'"),
        (["plot", "/nonexistent/run"], "no run directory at /nonexistent/run"),
    ],
)
def test_cli_bad_input_gives_one_line_error(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "r")] if argv[0] == "control" else argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("rlft: error: ") and message in err[-1], err


def test_cli_malformed_yaml_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\nppo:\n  lr: [1e-3\n")
    assert main(["control", "train", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{bad}:" in err and "invalid YAML" in err


def test_cli_refuses_to_mix_two_runs_in_one_directory(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["control", "train", "--total-steps", "256", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    assert main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err
