"""Every trainer on a CUDA GPU: in float32 the weights after 4 steps equal the CPU run's (the device path
moves every input, and nothing is computed on the wrong side); in bfloat16 the run trains; sampling on the
GPU reports the log-probs the CPU recomputes; a checkpoint written on the GPU resumes on the CPU; with two
GPUs, two ranks (NCCL) compute what one computes.

Skipped without CUDA: run them with ``pytest tests/test_gpu.py`` on a machine with a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import (
    CASES,
    COMMON,
    REWARDS,
    assert_same_update,
    model_weights,
    ok,
    rlft,
    rows,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

OFFLINE = ("sft", "rm", "dpo")  # no sampling in training: the GPU run must equal the CPU run


def start_of(models: dict[str, str], name: str) -> dict[str, torch.Tensor]:
    return load_file(Path(models[CASES[name][1]]) / "model.safetensors")


def config(models: dict[str, str], root: Path, name: str, extra: str) -> Path:
    _, task, lines = CASES[name]
    (root / "rewards.py").write_text(REWARDS)
    path = root / f"{name}.yaml"
    path.write_text(COMMON.format(model=models[task]) + lines.format(root=root) + extra)
    return path


def train(models, root: Path, name: str, device: str, precision: str = "fp32", ranks: int = 1) -> Path:
    cfg = config(models, root, f"{name}", f"device: {device}\nprecision: {precision}\n")
    out = root / f"{name}-{device.replace(':', '')}-{precision}-{ranks}"
    ok(rlft(CASES[name][0], "--config", str(cfg), "--out", str(out), ranks=ranks))
    return out


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_trainers_on_the_gpu_equal_the_cpu(micro_llamas, tmp_path, name) -> None:
    cpu = train(micro_llamas, tmp_path, name, "cpu")
    gpu = train(micro_llamas, tmp_path, name, "cuda")
    # float32 on both sides (PyTorch leaves TF32 off for matmuls): only summation order differs
    assert_same_update(model_weights(gpu), model_weights(cpu), start_of(micro_llamas, name), atol=1e-4)
    assert "Hugging Face body" in (gpu / "forward.txt").read_text()  # the fused CPU paths stay on the CPU


@pytest.mark.parametrize("name", ["sft", "rm", "dpo", "grpo", "ppo"])
def test_every_trainer_trains_on_the_gpu_in_bf16(micro_llamas, tmp_path, name) -> None:
    out = train(micro_llamas, tmp_path, name, "cuda", "bf16")
    loss_rows = [r for r in rows(out) if "loss" in r]
    assert len(loss_rows) == 4 and "NaN" not in json.dumps(loss_rows)
    assert (out / "model" / "config.json").is_file()


def test_gpu_sampling_reports_the_logprobs_the_cpu_recomputes(micro_llamas) -> None:
    from rlft.models import SamplingParams, load_causal_lm, load_tokenizer, response_logprobs, sample
    from rlft.models.device import place

    path = micro_llamas["arithmetic"]
    tokenizer, cpu_model = load_tokenizer(path), load_causal_lm(path)
    gpu_model = place(load_causal_lm(path), torch.device("cuda"))
    params = SamplingParams(max_new_tokens=6, n=4, temperature=0.7, seed=1)
    rollout = sample(gpu_model, tokenizer, ["1+2=", "3+4="], params)
    assert rollout.response_ids.device.type == "cpu"  # the rollout lives on the CPU
    r = rollout
    again = response_logprobs(
        cpu_model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask, temperature=0.7
    )
    torch.testing.assert_close(rollout.logprobs, again, rtol=0, atol=1e-4)


def test_a_gpu_checkpoint_resumes_on_the_cpu(micro_llamas, tmp_path) -> None:
    cfg = config(micro_llamas, tmp_path, "sft", "device: cuda\n")
    run = tmp_path / "moved"
    ok(rlft("sft", "--config", str(cfg), "--out", str(run), "--stop-after", "2"))
    saved = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(saved.replace("device: cuda", "device: cpu"))
    ok(rlft("sft", "--resume", str(run)))
    uninterrupted = train(micro_llamas, tmp_path, "sft", "cuda")
    assert_same_update(
        model_weights(run), model_weights(uninterrupted), start_of(micro_llamas, "sft"), atol=1e-4
    )


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_two_gpus_equal_one(micro_llamas, tmp_path, mode) -> None:
    one = train(micro_llamas, tmp_path, "dpo", "cuda")
    cfg = config(micro_llamas, tmp_path, "dpo", f"device: cuda\nparallel: {mode}\n")
    two = tmp_path / f"two-{mode}"
    ok(rlft("dpo", "--config", str(cfg), "--out", str(two), ranks=2))
    assert_same_update(model_weights(two), model_weights(one), start_of(micro_llamas, "dpo"), atol=1e-4)
