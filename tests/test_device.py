"""``device`` and ``precision``: the keys are checked in one line, a GPU that is not there is refused (never
a silent fall-back to the CPU), bfloat16 autocast reaches every trainer's passes, and inputs follow the
model's device. The runs on a GPU themselves are in test_gpu.py."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from rlft.models.device import model_device, to_device
from rlft.run import ConfigError, RunDir, load_config
from rlft.run.device import resolve_device
from rlft.train import DPOConfig, RLConfig, RMConfig, SFTConfig, train_rm, train_sft

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


@pytest.mark.parametrize("cls", [SFTConfig, RMConfig, DPOConfig, RLConfig])
def test_every_trainer_config_checks_device_and_precision(cls) -> None:
    base = ["--model", "m", "--data", "d"]
    cfg = load_config(cls, overrides=[*base, "--device", "cuda:1", "--precision", "bf16"])
    assert (cfg.device, cfg.precision, cfg.bf16) == ("cuda:1", "bf16", True)
    assert load_config(cls, overrides=base).bf16 is False  # fp32 by default
    for key, value, expected in [
        ("device", "gpu", "auto, cpu, cuda or cuda:N"),
        ("device", "cuda:x", "auto, cpu, cuda or cuda:N"),
        ("precision", "fp16", "one of fp32, bf16"),
    ]:
        with pytest.raises(ConfigError) as err:
            load_config(cls, overrides=[*base, f"--{key}", value]).validate()
        assert str(err.value) == f"command line: config key '{key}': expected {expected}, got {value!r}"


def test_device_resolution_on_this_machine() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == (
        torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    )


@no_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:0"])
def test_a_missing_gpu_is_one_line_not_a_cpu_run(spec) -> None:
    with pytest.raises(ConfigError, match=rf"config key 'device': {spec} asked for, but torch sees no CUDA"):
        resolve_device(spec)


@no_cuda
def test_trainer_and_commands_refuse_a_missing_gpu_before_loading(micro_llamas, tmp_path) -> None:
    cfg = SFTConfig(model=str(tmp_path / "absent"), data="task:arithmetic", device="cuda")
    with pytest.raises(ConfigError, match="config key 'device': cuda asked for"):
        train_sft(cfg, RunDir.create(tmp_path / "run"), show_progress=False)
    proc = subprocess.run(
        [sys.executable, "-m", "rlft", "generate", "--model", micro_llamas["arithmetic"], "--task", "arithmetic",
         "--device", "cuda"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].endswith("use device: cpu or auto")
    assert "Traceback" not in proc.stderr


def test_to_device_moves_nested_tensors_and_keeps_the_rest() -> None:
    batch = {"ids": torch.ones(2), "pair": (torch.zeros(1), 3), "name": "x"}
    moved = to_device(batch, torch.device("cpu"))
    assert moved["ids"] is batch["ids"]  # already there: the same tensor, no copy
    assert moved["pair"][0] is batch["pair"][0] and moved["pair"][1] == 3 and moved["name"] == "x"
    assert model_device(torch.nn.Linear(2, 2)) == torch.device("cpu")


def _train_rows(run: RunDir) -> list[dict]:
    return [r for r in map(json.loads, run.metrics_path.read_text().splitlines()) if "loss" in r]


@pytest.mark.parametrize(
    ("train", "cfg_of", "task"),
    [
        (train_sft, lambda m: SFTConfig(model=m, data="task:arithmetic?max_operand=9&n=32", batch_size=8,
                                        lr=1e-3, max_steps=3, eval_samples=8, eval_generate=False), "arithmetic"),
        (train_rm, lambda m: RMConfig(model=m, data="task:preference?n=32", batch_size=8, lr=1e-3, max_steps=3,
                                      epochs=None, eval_samples=8, norm_samples=16), "preference"),
    ],
    ids=["sft", "rm"],
)  # fmt: skip
def test_bf16_precision_runs_the_model_under_autocast(micro_llamas, tmp_path, train, cfg_of, task) -> None:
    """bfloat16 autocast changes the losses by rounding only: close to float32, but not the same numbers
    (so the setting reaches the passes)."""
    losses = {}
    for precision in ("fp32", "bf16"):
        cfg = dataclasses.replace(
            cfg_of(micro_llamas[task]), precision=precision, device="cpu", torch_threads=1
        )
        run = RunDir.create(tmp_path / precision)
        train(cfg, run, show_progress=False, log=lambda _: None)
        losses[precision] = [r["loss"] for r in _train_rows(run)]
    assert len(losses["bf16"]) == 3
    assert losses["bf16"] != losses["fp32"]
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)


def test_generate_takes_device_and_precision(micro_llamas) -> None:
    gen = subprocess.run(
        [sys.executable, "-m", "rlft", "generate", "--model", micro_llamas["arithmetic"], "--task", "arithmetic",
         "--limit", "2", "--greedy", "--max-new-tokens", "4", "--device", "cpu", "--precision", "bf16"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert gen.returncode == 0, gen.stderr[-2000:]
    assert gen.stdout.count("→") == 2
