"""Control runs end to end: run-directory contents, save → load → eval, exact resume, the CLI and its errors."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rlft.cli import main
from rlft.control import ControlConfig, evaluate, preset_for, train
from rlft.control.envs import EnvError, make_vec_env
from rlft.control.evaluate import load_run_policy
from rlft.run import RunDir, load_config, save_config


def make_run(tmp_path, algo="ppo", env="CartPole-v1", **overrides):
    cfg = load_config(
        ControlConfig,
        overrides={"algo": algo, "env": env, "seed": 3, **overrides},
        base=preset_for(algo, env)[1],
    )
    run = RunDir.create(tmp_path / "run")
    save_config(cfg, run.config_path)
    return cfg, run


def test_run_directory_contents(tmp_path):
    cfg, run = make_run(tmp_path, total_steps=2048)
    result = train(cfg, run, show_progress=False)
    rows = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    assert len(rows) == 2048 // 256 and rows[-1]["step"] == result.steps
    assert {
        "return_mean_window",
        "approx_kl",
        "clipfrac",
        "explained_variance",
        "steps_per_second",
        "pg_loss",
        "value_loss",
        "entropy",
    } <= rows[-1].keys()
    with_eps = [r for r in rows if "episode_return" in r]
    assert with_eps and all(r["episode_return"] == pytest.approx(r["episode_length"]) for r in with_eps)
    assert load_file(str(run.root / "policy.safetensors"))["actor.0.weight"].shape == (64, 4)
    assert (run.checkpoints / "last.pt").exists()
    assert list((run.root / "tb").iterdir()), "TensorBoard events expected (tensorboard is installed in dev)"


def test_native_vector_env_and_env_errors():
    assert type(make_vec_env("CartPole-v1", 4, seed=0)).__name__ == "CartPoleVectorEnv"
    with pytest.raises(EnvError, match="unknown gymnasium environment 'CartPol-v1'"):
        make_vec_env("CartPol-v1", 2, seed=0)


class MultiDiscreteEnv(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.MultiDiscrete([2, 2])

    def reset(self, *, seed=None, options=None):
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, True, False, {}


gym.register("rlft-tests/MultiDiscrete-v0", entry_point=MultiDiscreteEnv)


def test_action_space_mismatch_is_a_clear_error():
    with pytest.raises(
        EnvError, match=r"rlft-tests/MultiDiscrete-v0: action space .* is not Discrete or Box"
    ):
        make_vec_env("rlft-tests/MultiDiscrete-v0", 2, seed=0)


@pytest.mark.parametrize(
    "algo,env", [("ppo", "CartPole-v1"), ("trpo", "Pendulum-v1"), ("reinforce", "CartPole-v1")]
)
def test_resume_equals_uninterrupted_run(tmp_path, algo, env):
    over = {
        "total_steps": 3072,
        "normalize_obs": env == "Pendulum-v1",
        "normalize_reward": env == "Pendulum-v1",
    }
    if algo == "reinforce":
        over["total_steps"] = 12_000
    cfg, whole = make_run(tmp_path / "a", algo, env, **over)
    train(cfg, whole, show_progress=False)
    cfg, part = make_run(tmp_path / "b", algo, env, **over)
    first = train(cfg, part, show_progress=False, stop_at_step=over["total_steps"] // 2)
    assert first.steps < over["total_steps"]
    second = train(cfg, part, show_progress=False, resume=True)
    assert second.steps == first.steps + (second.steps - first.steps) and second.steps >= over["total_steps"]
    a = load_file(str(whole.root / "policy.safetensors"))
    b = load_file(str(part.root / "policy.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows_a = [json.loads(x) for x in whole.metrics_path.read_text().splitlines()]
    rows_b = [json.loads(x) for x in part.metrics_path.read_text().splitlines()]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("time", "steps_per_second")} for r in rows]  # noqa: E731
    assert strip(rows_a) == strip(rows_b)


def test_save_load_eval_reproduces_returns(tmp_path):
    cfg, run = make_run(tmp_path, total_steps=20_000, normalize_obs=True)
    train(cfg, run, show_progress=False)
    first = evaluate(run.root, episodes=3, seed=5)
    again = evaluate(run.root, episodes=3, seed=5)
    assert first.returns == again.returns
    # the same numbers from the in-memory policy, stepping the environment by hand
    _, policy, obs_norm = load_run_policy(run.root)
    env = gym.make("CartPole-v1")
    manual = []
    for ep in range(3):
        obs, _ = env.reset(seed=5 + ep)
        total, done = 0.0, False
        while not done:
            x = obs_norm(np.asarray(obs, np.float32).reshape(1, -1), update=False)
            obs, r, term, trunc, _ = env.step(int(policy.act(torch.from_numpy(x), deterministic=True)[0]))
            total, done = total + r, term or trunc
        manual.append(total)
    assert manual == first.returns
    assert first.mean > 30  # it learned something in 20k steps


def test_eval_cli_writes_gif(tmp_path, capsys):
    cfg, run = make_run(tmp_path, total_steps=512)
    train(cfg, run, show_progress=False)
    gif = tmp_path / "ep.gif"
    assert main(["control", "eval", str(run.root), "--episodes", "2", "--video", str(gif)]) == 0
    assert gif.read_bytes()[:6] == b"GIF89a"
    assert "2 deterministic episodes: return" in capsys.readouterr().out


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
    assert "epochs: 2" in (out / "config.yaml").read_text()
    assert "curve:" in capsys.readouterr().out


def test_cli_resume_continues_a_run(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["control", "train", "--total-steps", "512", "--out", str(out), "--no-progress"]) == 0
    assert main(["control", "train", "--resume", str(out), "--total_steps", "1024", "--no-progress"]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [256, 512, 768, 1024]


def test_resume_from_an_incompatible_optimizer_state_fails_clearly(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["control", "train", "--total-steps", "512", "--out", str(out), "--no-progress"]) == 0
    ckpt = out / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    # an optimizer over one tensor per layer, as checkpoints before flat per-network parameters had
    old = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2)) for _ in range(12)])
    state["algo"]["optimizer"] = old.state_dict()
    torch.save(state, ckpt)
    assert main(["control", "train", "--resume", str(out), "--total_steps", "1024", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "last.pt: the optimizer state does not fit" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["control", "train", "--algo", "ppx"],
            "unknown control algorithm 'ppx'; expected one of: a2c, ppo, ppo_penalty, reinforce, trpo",
        ),
        (["control", "train", "--ppo.lrr", "1e-3"], "unknown config key 'ppo.lrr'"),
        (["control", "train", "--lr", "fast"], "config key 'lr': expected a float, got 'fast'"),
        (["control", "train", "--lr", "-0.001"], "config key 'lr': expected a positive number, got -0.001"),
        (["control", "train", "--n_steps", "0"], "config key 'n_steps': expected a positive integer, got 0"),
        (["control", "train", "--ppo.minibatches", "3"], "num_envs × n_steps = 256 is not divisible by 3"),
        (
            ["control", "train", "--env", "NoSuchEnv-v0", "--total-steps", "64"],
            "unknown gymnasium environment 'NoSuchEnv-v0'",
        ),
        (["control", "train", "--preset", "ppo/Nope-v0"], "unknown preset 'ppo/Nope-v0'"),
        (
            ["control", "train", "--env", "rlft-tests/MultiDiscrete-v0", "--preset", "none"],
            "is not Discrete or Box",
        ),
        (["plot", "/nonexistent/run"], "no run directory at /nonexistent/run"),
        (["control", "eval", "/nonexistent/run"], "no run directory at /nonexistent/run"),
    ],
)
def test_cli_bad_input_gives_one_line_error(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "r")] if argv[1:2] == ["train"] else argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("rlft: error: ") and message in err[-1], err


def test_cli_malformed_yaml_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\nppo:\n  clip: [0.2\n")
    assert main(["control", "train", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{bad}:" in err and "invalid YAML" in err


def test_cli_refuses_to_mix_two_runs_in_one_directory(tmp_path, capsys):
    argv = ["control", "train", "--total-steps", "256", "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 0
    assert main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_demo_control_stage(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--no-progress", "--control-only"]) == 0
    out = capsys.readouterr().out
    assert "reached 475.0" in out and (tmp_path / "demo" / "control" / "plots" / "metrics.png").exists()
