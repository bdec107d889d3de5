"""``rlft pipeline``: SFT → reward model → PPO, each stage feeding the next, resumed from its checkpoint
after a crash and skipped once its model exists."""

from __future__ import annotations

import pytest
from micro_models import save_micro_llama

from rlft.cli import main
from rlft.commands.pipeline import run_pipeline
from rlft.run import ConfigError, RunDir, load_config
from rlft.train import RLConfig, latest_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> str:
    return save_micro_llama(tmp_path_factory.mktemp("base") / "model", "preference", 400, 400)


def spec(base_model: str) -> dict:
    common = {"torch_threads": 1, "save_every": 2}
    return {
        "sft": {
            "model": base_model,
            "data": "task:preference?n=64",
            "batch_size": 8,
            "max_steps": 4,
            "eval_samples": 8,
            "eval_generate": False,
            **common,
        },
        "rm": {
            "data": "task:preference?n=64&label_noise=0.1",
            "batch_size": 8,
            "max_steps": 4,
            "epochs": None,
            "eval_samples": 16,
            **common,
        },
        "ppo": {
            "data": "task:preference?n=64",
            "sampling": {"prompts_per_step": 4, "num_generations": 2, "max_new_tokens": 6},
            "max_steps": 3,
            "optim": {"lr": 1e-2},
            "eval": {"samples": 8},
            "ptx": {"data": "task:preference?n=32", "coef": 0.1},
            **common,
        },
    }


def test_stages_feed_each_other_resume_after_a_crash_and_skip_when_done(base_model, tmp_path, capsys) -> None:
    logs: list[str] = []
    quiet = {"show_progress": False, "log": logs.append}
    # First attempt: the reward-model stage "crashes" after 3 of its 4 steps (checkpoint at step 2).
    first = run_pipeline(spec(base_model), tmp_path, stop_after={"rm": 3}, **quiet)
    assert [(r.name, r.status) for r in first] == [("sft", "trained"), ("rm", "stopped")]
    assert (tmp_path / "sft" / "model" / "config.json").is_file()
    assert latest_checkpoint(RunDir.open(tmp_path / "rm")).name == "step-2"
    assert not (tmp_path / "ppo").exists()
    sft_weights = (tmp_path / "sft" / "model" / "model.safetensors").read_bytes()

    # Second attempt: SFT is skipped, the RM resumes at step 2, PPO trains on their outputs.
    logs.clear()
    second = run_pipeline(spec(base_model), tmp_path, **quiet)
    assert [(r.name, r.status) for r in second] == [("sft", "skipped"), ("rm", "resumed"), ("ppo", "trained")]
    assert second[1].result.steps == 4
    assert any("resuming from" in line and "step-2" in line for line in logs)
    assert (tmp_path / "sft" / "model" / "model.safetensors").read_bytes() == sft_weights
    ppo_cfg = load_config(RLConfig, tmp_path / "ppo" / "config.yaml")
    assert ppo_cfg.model == str(tmp_path / "sft" / "model")
    assert ppo_cfg.reward_model == str(tmp_path / "rm" / "model")
    assert ppo_cfg.algorithm == "ppo"
    assert (tmp_path / "ppo" / "critic" / "config.json").is_file()
    assert "reward_gold" in second[2].result.last_metrics
    assert "ptx_nll" in second[2].result.last_metrics

    # Third attempt, through the CLI: everything is skipped.
    import yaml

    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path), **spec(base_model)}))
    capsys.readouterr()
    assert main(["pipeline", "--config", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    for name in ("sft", "rm", "ppo"):
        assert f"{name:8}skipped" in out


def test_ppo_stage_resumes_from_its_checkpoint(base_model, tmp_path) -> None:
    quiet = {"show_progress": False, "log": lambda _: None}
    s = spec(base_model)
    first = run_pipeline(s, tmp_path, stop_after={"ppo": 2}, **quiet)
    assert [r.status for r in first] == ["trained", "trained", "stopped"]
    second = run_pipeline(s, tmp_path, **quiet)
    assert [r.status for r in second] == ["skipped", "skipped", "resumed"]
    assert second[2].result.steps == 3 and (tmp_path / "ppo" / "model" / "config.json").is_file()


def test_bad_pipeline_configs_fail_in_one_line(base_model, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("output_dir: x\nsfft: {}\n")
    assert main(["pipeline", "--config", str(bad)]) == 2
    assert "unknown key 'sfft'" in capsys.readouterr().err
    s = spec(base_model)
    del s["sft"]  # a pipeline may start from an existing SFT model
    s["rm"].update(model=base_model, lr=-1.0)
    with pytest.raises(ConfigError, match=r"section 'rm'.*lr"):
        run_pipeline(s, tmp_path, show_progress=False, log=lambda _: None)
    s = spec(base_model)
    with pytest.raises(ConfigError, match="stage sft has no output"):
        run_pipeline(s, tmp_path / "fresh", stages=("rm", "ppo"), show_progress=False, log=lambda _: None)
