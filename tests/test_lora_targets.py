"""LoRA target modules on every architecture of the zoo: by default every ``nn.Linear`` and transformers
``Conv1D`` except the output head gets an adapter (GPT-2's fused ``c_attn`` / ``Conv1D`` layers, Phi-3's
``qkv_proj`` / ``gate_up_proj``), one line reports what was adapted, merging reproduces the adapted model,
and a list of names that matches nothing is a one-line ConfigError naming the model's linear layers."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from arch_zoo import ARCHITECTURES, build_family
from peft.tuners.lora import LoraLayer
from transformers.pytorch_utils import Conv1D

from rlft.models import load_causal_lm
from rlft.run import ConfigError, load_config
from rlft.train import LoRAConfig, RLConfig
from rlft.train.online.setup import load_policy

pytestmark = pytest.mark.usefixtures("one_thread")

LLAMA_NAMES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # the old default


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("lora-zoo")
    return {name: str(build_family(name, root / name)) for name in ARCHITECTURES}


def rl_cfg(model: str, **lora) -> RLConfig:
    return RLConfig(model=model, data="task:arithmetic", lora=LoRAConfig(r=2, alpha=4.0, **lora))


def expected_targets(model_dir: str) -> set[str]:
    """Every Linear / Conv1D of the plain model but the output head (named independently of rlft)."""
    model = load_causal_lm(model_dir)
    head = model.get_output_embeddings()
    names = {
        n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not head
    }
    assert names and all(not n.startswith("lm_head") for n in names)
    return names


def adapted(policy: torch.nn.Module) -> set[str]:
    prefix = "base_model.model."
    return {n.removeprefix(prefix) for n, m in policy.named_modules() if isinstance(m, LoraLayer)}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_default_adapts_every_linear_layer_but_the_head(zoo, arch) -> None:
    lines: list[str] = []
    policy = load_policy(rl_cfg(zoo[arch]), None, lines.append)
    expected = expected_targets(zoo[arch])
    assert adapted(policy) == expected
    base = policy.get_base_model()
    assert not isinstance(base.get_output_embeddings(), LoraLayer)
    assert not isinstance(base.get_input_embeddings(), LoraLayer)  # tied or not, embeddings stay plain
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    short = list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in sorted(expected, key=list(expected).index)))
    assert len(lines) == 1 and lines[0].startswith("lora: adapters on ")
    assert lines[0].endswith(f"({len(expected)} modules)")
    assert set(lines[0].removeprefix("lora: adapters on ").split(" (")[0].split(", ")) == set(short)
    if arch == "gpt2":
        assert {"c_attn", "c_proj", "c_fc"} <= set(short)
    if arch == "phi3":
        assert {"qkv_proj", "gate_up_proj", "o_proj", "down_proj"} == set(short)


@pytest.mark.parametrize("arch", ["gpt2", "phi3", "qwen2", "llama3"])
def test_merged_adapters_reproduce_the_adapted_model(zoo, arch) -> None:
    """``save_final`` merges adapters into the base weights: Conv1D (transposed weights) included."""
    policy = load_policy(rl_cfg(zoo[arch]), None, lambda _: None)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    policy.eval()
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        with_adapters = policy(input_ids=ids).logits
        with policy.disable_adapter():
            base = policy(input_ids=ids).logits
        merged = policy.merge_and_unload()(input_ids=ids).logits
    assert not torch.allclose(with_adapters, base, atol=1e-4)  # the adapters do something
    torch.testing.assert_close(merged, with_adapters, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["gpt2", "phi3", "gemma2"])
def test_a_list_that_matches_nothing_is_one_line_naming_the_linear_layers(zoo, arch) -> None:
    with pytest.raises(ConfigError) as err:
        load_policy(rl_cfg(zoo[arch], target_modules=["attn_qkv", "mlp_in"]), None, lambda _: None)
    message = str(err.value)
    assert "\n" not in message and "lora.target_modules" in message and "attn_qkv" in message
    short = {n.rsplit(".", 1)[-1] for n in expected_targets(zoo[arch])}
    assert all(name in message for name in short), message
    assert "all-linear" in message


def test_llama_names_on_gpt2_are_a_config_error_not_a_peft_traceback(zoo) -> None:
    with pytest.raises(ConfigError, match=r"lora\.target_modules.*c_attn, c_proj, c_fc"):
        load_policy(rl_cfg(zoo["gpt2"], target_modules=LLAMA_NAMES), None, lambda _: None)


def test_a_partial_match_names_what_matched_nothing(zoo) -> None:
    lines: list[str] = []
    policy = load_policy(rl_cfg(zoo["phi3"], target_modules=LLAMA_NAMES), None, lines.append)
    assert {n.rsplit(".", 1)[-1] for n in adapted(policy)} == {"o_proj", "down_proj"}
    assert len(lines) == 1 and lines[0].startswith("lora: adapters on o_proj, down_proj (4 modules)")
    assert "q_proj, k_proj, v_proj, gate_proj, up_proj matched nothing" in lines[0]


def test_a_name_peft_cannot_adapt_is_one_line(zoo) -> None:
    with pytest.raises(ConfigError) as err:
        load_policy(rl_cfg(zoo["llama3"], target_modules=["input_layernorm"]), None, lambda _: None)
    assert "\n" not in str(err.value) and "lora.target_modules" in str(err.value)


def test_config_accepts_all_linear_or_a_list() -> None:
    base = ["--model", "m", "--data", "d"]
    assert load_config(RLConfig, overrides=[*base, "--lora.r", "4"]).lora.target_modules == "all-linear"
    cfg = load_config(RLConfig, overrides=[*base, "--lora.target_modules", "[c_attn, c_fc]"])
    assert cfg.lora.target_modules == ["c_attn", "c_fc"]
    cfg.validate()
    for bad in ("all_linear", []):
        wrong = dataclasses.replace(cfg, lora=LoRAConfig(target_modules=bad))
        with pytest.raises(ConfigError, match=r"lora\.target_modules.*all-linear or a non-empty list"):
            wrong.validate()
