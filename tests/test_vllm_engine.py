"""The vLLM engine behind the Sampler interface (rlft/models/vllm_engine.py) against rlft's own numbers.

The engine tests need vllm (``make vllm-env``; run ``.venv-vllm/bin/python -m pytest tests/test_vllm_engine.py``)
and skip without it; the option and missing-install checks run everywhere. One engine per model for the whole
module, and every test leaves the engine in sync with its model.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from vllm_cases import CASES, PROMPTS, build_case, layer_prefix, perturb

from rlft.models import (
    HFSampler,
    ModelError,
    Rollout,
    SamplingParams,
    filter_logits,
    position_ids_from_mask,
    response_logprobs,
)
from rlft.models.vllm_engine import EngineSyncError, VLLMOptions, VLLMSampler, import_vllm

TOL = 1e-5


@dataclass
class Case:
    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    sampler: VLLMSampler
    kept: dict[str, bool]  # the process state engine start-up must leave as it was


@pytest.fixture(scope="module", params=CASES)
def case(request: pytest.FixtureRequest) -> Iterator[Case]:
    pytest.importorskip("vllm")
    model, tokenizer = build_case(request.param)
    rng, threads, set_num_threads = torch.get_rng_state(), torch.get_num_threads(), torch.set_num_threads
    sampler = VLLMSampler(
        model, tokenizer, options=VLLMOptions(max_model_len=128, cpu_kvcache_space_gb=0.125)
    )
    kept = {
        "torch RNG": torch.equal(rng, torch.get_rng_state()),
        "thread count": torch.get_num_threads() == threads,
        "torch.set_num_threads": torch.set_num_threads is set_num_threads,
    }
    yield Case(request.param, model, tokenizer, sampler, kept)
    sampler.close()


def recomputed(model: PreTrainedModel, rollout: Rollout, temperature: float) -> torch.Tensor:
    """rlft's teacher-forced log-probs of the rollout's own tokens."""
    with torch.no_grad():
        out = response_logprobs(
            model,
            rollout.prompt_ids,
            rollout.prompt_mask,
            rollout.response_ids,
            rollout.response_mask,
            temperature=temperature,
        )
    assert isinstance(out, torch.Tensor)
    return out


def test_engine_start_leaves_the_trainers_process_state(case: Case) -> None:
    assert case.kept == dict.fromkeys(case.kept, True)


def test_sampled_logprobs_are_rlfts_teacher_forced_logprobs(case: Case) -> None:
    params = SamplingParams(max_new_tokens=12, temperature=0.7, n=3, seed=5)
    rollout = case.sampler.sample(PROMPTS, params)
    assert rollout.response_ids.shape[0] == 3 * len(PROMPTS)
    assert rollout.logprobs.dtype == torch.float32
    mask = rollout.response_mask.bool()
    assert (rollout.logprobs[~mask] == 0).all()
    assert torch.allclose(rollout.logprobs, recomputed(case.model, rollout, 0.7), atol=TOL, rtol=0)


def test_a_seed_reproduces_the_rollout_and_rows_differ(case: Case) -> None:
    params = SamplingParams(max_new_tokens=10, temperature=1.0, n=4, seed=11)
    first, again = case.sampler.sample(PROMPTS, params), case.sampler.sample(PROMPTS, params)
    assert torch.equal(first.response_ids, again.response_ids)
    assert torch.equal(first.logprobs, again.logprobs)
    assert first.texts == again.texts
    # Each row has its own random stream: the n samples of a prompt are not copies of one another.
    group = first.response_ids[:4]
    assert len({tuple(row.tolist()) for row in group}) > 1
    other = case.sampler.sample(PROMPTS, SamplingParams(max_new_tokens=10, temperature=1.0, n=4, seed=12))
    assert not torch.equal(first.response_ids, other.response_ids)


def test_synced_weights_are_the_ones_sampled_from(case: Case) -> None:
    params = SamplingParams(max_new_tokens=10, temperature=0.7, n=2, seed=3)
    perturb(case.model, 0.02, seed=1)
    with pytest.raises(EngineSyncError):  # the engine still holds the old weights
        case.sampler.verify_sync(case.model)
    case.sampler.sync_weights(case.model)
    case.model.train()  # a policy mid-update (GPT-2 keeps dropout 0.1): the probe scores without dropout
    try:
        assert case.sampler.verify_sync(case.model) <= 1e-4
        assert case.model.training
    finally:
        case.model.eval()
    rollout = case.sampler.sample(PROMPTS, params)
    assert torch.allclose(rollout.logprobs, recomputed(case.model, rollout, 0.7), atol=TOL, rtol=0)


@pytest.mark.parametrize("left_out", ["lm_head", "one layer"])
def test_a_partial_push_is_caught_by_verify_sync(case: Case, left_out: str) -> None:
    prefix = "lm_head.weight" if left_out == "lm_head" else layer_prefix(case.name, 1)
    perturb(case.model, 0.02, seed=2)
    weights = [(k, v) for k, v in case.model.state_dict().items() if not k.startswith(prefix)]
    assert len(weights) < len(case.model.state_dict())
    try:
        case.sampler.push_weights(weights)
        with pytest.raises(EngineSyncError, match="out of sync"):
            case.sampler.verify_sync(case.model)
    finally:
        case.sampler.sync_weights(case.model)
    case.sampler.verify_sync(case.model)


def _ending_token(rollout: Rollout) -> tuple[int, int]:
    """(row, token): a token that row produces after its first step and another row never does; as EOS it
    ends that row early and leaves another running to max_new_tokens."""
    rows = rollout.response_ids.tolist()
    for i, row in enumerate(rows):
        for token in row[1:]:
            if any(token not in other for other in rows):
                return i, int(token)
    pytest.fail("every row of the greedy run produces the same tokens")


def _ending_text(rollout: Rollout) -> tuple[int, str]:
    """(row, character): a printable character that row writes and another row does not."""
    for i, text in enumerate(rollout.texts):
        for ch in text[1:]:
            printable = ch.isprintable() and not ch.isspace() and ch != "\ufffd"
            if printable and any(ch not in other for other in rollout.texts):
                return i, ch
    pytest.fail("no character tells the greedy rows apart")


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_greedy_rollout_is_the_native_samplers(case: Case, temperature: float) -> None:
    native = HFSampler(case.model, case.tokenizer)
    free = SamplingParams(max_new_tokens=8, greedy=True, temperature=temperature, n=2, eos_token_ids=())
    # Take tokens the greedy run produces as EOS, so that some rows stop early and some run to the end.
    probe = native.sample(PROMPTS, free)
    row, eos = _ending_token(probe)
    params = SamplingParams(
        max_new_tokens=8, greedy=True, temperature=temperature, n=2, eos_token_ids=(eos,), seed=0
    )
    ours, theirs = case.sampler.sample(PROMPTS, params), native.sample(PROMPTS, params)
    for name in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "finished", "group_ids"):
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
    assert ours.texts == theirs.texts
    assert bool(ours.finished[row]) and not bool(ours.finished.all())
    assert torch.allclose(ours.logprobs, theirs.logprobs, atol=TOL, rtol=0)
    assert torch.allclose(ours.logprobs, recomputed(case.model, ours, temperature), atol=TOL, rtol=0)


def test_stop_strings_end_rows_as_the_native_sampler_does(case: Case) -> None:
    native = HFSampler(case.model, case.tokenizer)
    free = SamplingParams(max_new_tokens=8, greedy=True, eos_token_ids=())
    probe = native.sample(PROMPTS, free)
    row, stop = _ending_text(probe)
    params = SamplingParams(max_new_tokens=8, greedy=True, eos_token_ids=(), stop_strings=(stop,))
    ours, theirs = case.sampler.sample(PROMPTS, params), native.sample(PROMPTS, params)
    assert bool(ours.finished[row]) and not bool(ours.finished.all())
    for name in ("response_ids", "response_mask", "finished"):
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
    assert ours.texts == theirs.texts
    assert all(stop not in text for text in ours.texts)


def test_filtered_sampling_reports_the_filtered_distribution(case: Case) -> None:
    """top-k / top-p: the engine's log-probs are those of the renormalised filtered distribution it drew
    from (HFSampler reports the unfiltered one)."""
    if case.name != "llama_tied":
        pytest.skip("one architecture is enough for the sampler's log-prob convention")
    params = SamplingParams(max_new_tokens=8, temperature=0.8, top_k=20, top_p=0.9, seed=4)
    rollout = case.sampler.sample(PROMPTS, params)
    ids = torch.cat([rollout.prompt_ids, rollout.response_ids], 1)
    mask = torch.cat([rollout.prompt_mask, rollout.response_mask], 1)
    width = rollout.prompt_ids.shape[1]
    with torch.no_grad():
        logits = case.model(
            input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)
        ).logits
    z = logits[:, width - 1 : -1].float() / 0.8
    flat = z.reshape(-1, z.shape[-1])
    filtered = torch.log_softmax(filter_logits(flat, 20, 0.9), -1).view_as(z)
    expected = filtered.gather(-1, rollout.response_ids[..., None]).squeeze(-1)
    keep = rollout.response_mask.bool()
    assert torch.allclose(rollout.logprobs[keep], expected[keep], atol=TOL, rtol=0)


def test_a_closed_sampler_says_so(case: Case) -> None:
    if case.name != "gpt2":  # the last engine of the module: closing it early costs nothing
        pytest.skip("closes the engine")
    case.sampler.close()
    with pytest.raises(ModelError, match="closed"):
        case.sampler.sample(PROMPTS, SamplingParams(max_new_tokens=2))
    case.sampler.close()  # twice is fine


def test_missing_vllm_is_one_line_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(ModelError, match="make vllm-env") as err:
        import_vllm()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "bad", [{"gpu_memory_utilization": 0.0}, {"tensor_parallel_size": 0}, {"cpu_kvcache_space_gb": -1.0}]
)
def test_bad_options_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ModelError, match=next(iter(bad))):
        VLLMOptions(**bad)  # type: ignore[arg-type]
