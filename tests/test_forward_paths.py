"""The forward-path plan: which decoder, training body and reference body a run takes, said in one line —
checked against the predicates the code paths call (so the plan cannot drift from what runs), for a
Llama, a non-Llama and the options that flip the choice; and a trainer that writes it to forward.txt."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from arch_zoo import FAMILIES, family_model, family_tokenizer
from micro_models import perturbed_llama

from rlft.models import FastLlamaDecoder, HFDecoder, ModelError, SamplingParams, make_decoder
from rlft.models.forward_path import (
    decoder_choice,
    forward_plan,
    plan_for,
    record_forward,
)
from rlft.models.fused.kernels import kernels
from rlft.models.fused.llama_decoder import fast_path_blocker
from rlft.models.fused.llama_forward import use_fused_forward
from rlft.run import RunDir

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llama():
    return perturbed_llama()


@pytest.fixture(scope="module")
def gpt2():
    family = FAMILIES["gpt2"]
    return family_model(family, family_tokenizer(family))


@pytest.fixture(scope="module")
def gemma2():
    family = FAMILIES["gemma2"]
    return family_model(family, family_tokenizer(family))


def test_llama_takes_the_fused_paths(llama) -> None:
    plan = forward_plan(llama, reference=llama)
    assert (plan.decoder, plan.training, plan.reference, plan.dtype) == (
        "fast",
        "fused",
        "packed",
        torch.float32,
    )
    text = plan.description
    assert "\n" not in text and text.startswith("forward — sampling: fused Llama decoder")
    assert ("C kernels (float32)" in text.split(";")[0]) == (kernels() is not None)
    assert "training: fused Llama body" in text and "reference: packed frozen Llama body (float32)" in text


def test_options_flip_the_paths(llama) -> None:
    hf = forward_plan(llama, decoder="hf", forward="hf", reference=llama)
    assert (hf.decoder, hf.training, hf.reference) == ("hf", "hf", "hf")
    assert "sampling: Hugging Face body (decoder='hf')" in hf.description
    assert "training: Hugging Face body (float32; forward='hf')" in hf.description

    bf16 = forward_plan(llama, bf16=True)
    assert bf16.dtype == torch.bfloat16 and bf16.decoder == "fast"
    assert "fused Llama decoder, torch ops (bfloat16)" in bf16.description  # no C kernels in bfloat16
    assert "training: fused Llama body" in bf16.description and "(bfloat16" in bf16.description

    quiet = forward_plan(llama, sampling=False, forward=None)
    assert quiet.decoder is None and "sampling" not in quiet.description
    assert (
        "training: Hugging Face body (float32; this trainer runs the model's own forward)"
        in quiet.description
    )


def test_packed_reference_only_where_the_grouped_passes_use_it(llama) -> None:
    assert forward_plan(llama, grouped=True, share_prompts=True, reference=llama).reference == "packed"
    unshared = forward_plan(llama, grouped=True, share_prompts=False, reference=llama)
    assert unshared.reference == "fused" and "no packing without shared prompts" in unshared.description
    # rollouts (rollout_logprobs) use the packed body for either layout
    assert forward_plan(llama, share_prompts=False, reference=llama).reference == "packed"
    assert forward_plan(llama, reference="table").reference == "table"
    assert "reference: policy with adapters disabled" in forward_plan(llama, reference="policy").description


def test_a_non_llama_says_why_it_is_not_fused(gpt2) -> None:
    plan = forward_plan(gpt2, onednn_linear=True, reference=gpt2)
    assert (plan.decoder, plan.training, plan.reference) == ("hf", "hf", "hf")
    blocker = fast_path_blocker(gpt2)
    assert "model_type 'gpt2'" in blocker
    assert f"sampling: Hugging Face body ({blocker})" in plan.description
    assert plan.description.count(blocker) == 1  # each reason said once
    assert "oneDNN" not in plan.description  # GPT-2's projections are Conv1D: nothing to route


def test_a_demanded_fused_forward_is_described_not_raised(gpt2) -> None:
    plan = forward_plan(gpt2, forward="fast")
    assert plan.training == "hf" and "forward='fast' is not possible for this model" in plan.description
    with pytest.raises(ModelError, match="forward='fast' is not possible"):
        use_fused_forward(gpt2, "fast")  # the pass itself still refuses


def test_gemma2_names_its_blocker(gemma2) -> None:
    plan = forward_plan(gemma2)
    assert plan.decoder == "hf" and fast_path_blocker(gemma2) in plan.description


@pytest.mark.parametrize("name", ["llama", "gpt2", "gemma2"])
@pytest.mark.parametrize("forward", ["auto", "hf"])
@pytest.mark.parametrize("bf16", [False, True])
def test_plan_agrees_with_the_predicates_the_paths_call(request, name, forward, bf16) -> None:
    model = request.getfixturevalue(name)
    plan = forward_plan(model, forward=forward, bf16=bf16, reference=model)
    assert (plan.training == "fused") == use_fused_forward(model, forward)
    assert (plan.reference == "packed") == use_fused_forward(model, forward)  # rollouts pack whenever fused
    params = SamplingParams(max_new_tokens=2, bf16=bf16)
    for decoder in ("auto", "hf"):
        dec = make_decoder(model, params, decoder)
        kind = forward_plan(model, decoder=decoder, bf16=bf16).decoder
        assert type(dec) is (FastLlamaDecoder if kind == "fast" else HFDecoder)
        if kind == "fast":
            assert dec.weight_dtype == (torch.bfloat16 if bf16 else torch.float32)


def test_decoder_choice_keeps_make_decoders_errors(gpt2) -> None:
    with pytest.raises(ModelError, match="decoder='fast' is not available for this model: model_type"):
        decoder_choice(gpt2, "fast")
    with pytest.raises(ModelError, match="unknown decoder 'fused'"):
        make_decoder(gpt2, SamplingParams(), "fused")


def test_lora_wrapped_policy_falls_back_to_the_hf_body(llama) -> None:
    peft = pytest.importorskip("peft")
    import copy

    wrapped = peft.get_peft_model(
        copy.deepcopy(llama), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    )
    plan = forward_plan(wrapped, reference="policy")
    assert (plan.decoder, plan.training, plan.reference) == ("hf", "hf", "policy")
    assert "not a plain nn.Linear" in plan.description


def test_plan_for_reads_each_trainers_config(llama) -> None:
    from rlft.train import DPOConfig, RLConfig, SFTConfig
    from rlft.train.online.config import PerformanceConfig

    performance = PerformanceConfig(forward="hf")
    rl = plan_for("rl", llama, RLConfig(precision="bf16", performance=performance), reference=llama)
    assert (rl.decoder, rl.training, rl.reference, rl.dtype) == ("fast", "hf", "hf", torch.bfloat16)
    assert "fused Llama decoder, torch ops (bfloat16)" in rl.description  # bf16 autocast while sampling

    dpo = plan_for("dpo", llama, DPOConfig(precision="bf16", share_prompts=False), reference=llama, sampling=True)
    assert (dpo.training, dpo.reference, dpo.dtype) == ("fused", "fused", torch.bfloat16)
    assert "C kernels (float32)" in dpo.description or kernels() is None  # the win rate samples in float32

    prepared = SimpleNamespace(model=None, tables={0: torch.zeros(1)})  # a wrapper left with its table
    assert plan_for("dpo", llama, DPOConfig(), reference=prepared).reference == "table"
    assert plan_for("sft", llama, SFTConfig(eval_generate=False)).decoder is None
    assert plan_for("sft", llama, SFTConfig()).decoder == "fast"
    assert plan_for("rm", llama, object()).decoder is None
    with pytest.raises(ModelError, match="trainer='ppo'"):
        plan_for("ppo", llama, RLConfig())


def test_record_forward_writes_the_line(llama, tmp_path) -> None:
    run = RunDir.create(tmp_path / "run")
    plan = forward_plan(llama)
    assert record_forward(run, plan) == plan.description
    assert (run.root / "forward.txt").read_text() == plan.description + "\n"


def test_sft_run_records_its_forward(tmp_path) -> None:
    from rlft.data import get_task
    from rlft.models import build_tiny_model
    from rlft.train import SFTConfig, train_sft

    corpus = get_task("arithmetic").corpus(300)
    model = build_tiny_model(
        tmp_path / "model", size="1m", corpus=corpus, vocab_size=280, max_position_embeddings=64
    )
    cfg = SFTConfig(
        model=str(model),
        data="task:arithmetic?max_operand=9&n=40",
        batch_size=8,
        max_steps=1,
        eval_samples=8,
        eval_generate=True,
        eval_max_new_tokens=2,
        torch_threads=1,
    )
    lines: list[str] = []
    run = RunDir.create(tmp_path / "run")
    train_sft(cfg, run, show_progress=False, log=lines.append)
    written = (run.root / "forward.txt").read_text().strip()
    assert written in lines and lines.count(written) == 1
    assert "sampling: fused Llama decoder" in written
    assert "training: Hugging Face body (float32; this trainer runs the model's own forward)" in written
