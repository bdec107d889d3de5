"""Sequence log-prob sums for the offline trainers: the fused Llama training forward against the model's own
forward (values and gradients), the oneDNN linear, and the fallbacks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from micro_models import perturbed_llama

from rlft.models import ModelError, token_logprobs
from rlft.models.fused.llama_forward import fast_train_blocker
from rlft.models.fused.onednn import OneDNNLinear, onednn_linear_available
from rlft.models.logprobs import grouped_logprob_sums, layout_groups, sequence_logprob_sums


def batch(rows: int = 5, width: int = 17, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 61, (rows, width), generator=g)
    lengths = torch.tensor([width, width - 4, 6, width - 1, 9][:rows])
    cols = torch.arange(width)[None]
    attention = (cols < lengths[:, None]).long()
    loss = attention * (cols >= torch.tensor([3, 5, 2, 8, 4][:rows])[:, None])
    return {"input_ids": ids, "attention_mask": attention, "loss_mask": loss}


def sums_and_grads(model, inputs, **kw):
    model.zero_grad(set_to_none=True)
    sums, counts = sequence_logprob_sums(model, **inputs, **kw)
    (sums * torch.linspace(0.5, 1.5, len(sums))).sum().backward()
    return sums.detach(), counts, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "changes",
    [{}, {"num_key_value_heads": 2}, {"attention_bias": True, "mlp_bias": True}],
    ids=["mha", "gqa", "biases"],
)
def test_fused_forward_matches_the_model_forward(changes) -> None:
    model = perturbed_llama(**changes)
    assert fast_train_blocker(model) is None
    inputs = batch()
    hf_sums, hf_counts, hf_grads = sums_and_grads(model, inputs, forward="hf")
    fast_sums, fast_counts, fast_grads = sums_and_grads(model, inputs, forward="fast")
    assert torch.equal(hf_counts, fast_counts)
    torch.testing.assert_close(fast_sums, hf_sums, rtol=0, atol=2e-5)
    for name, grad in hf_grads.items():
        scale = grad.abs().max().item()
        torch.testing.assert_close(fast_grads[name], grad, rtol=0, atol=2e-5 * max(scale, 1.0), msg=name)


def test_sums_equal_token_logprobs_over_the_completion() -> None:
    model = perturbed_llama()
    inputs = batch()
    with torch.no_grad():
        sums, counts = sequence_logprob_sums(model, **inputs)
        per_token = token_logprobs(model, inputs["input_ids"], inputs["attention_mask"])
    mask = inputs["loss_mask"][:, 1:].float()
    torch.testing.assert_close(sums, (per_token * mask).sum(-1), rtol=0, atol=2e-5)
    assert counts.tolist() == mask.sum(-1).long().tolist()
    # padding columns past the longest row change nothing
    wide = {k: F.pad(v, (0, 7), value=0) for k, v in inputs.items()}
    with torch.no_grad():
        torch.testing.assert_close(sequence_logprob_sums(model, **wide)[0], sums, rtol=0, atol=1e-6)


def test_long_rows_take_the_sdpa_path_with_the_same_numbers() -> None:
    model = perturbed_llama()
    inputs = batch(rows=2, width=300)
    with torch.no_grad():
        hf = sequence_logprob_sums(model, **inputs, forward="hf")[0]
        fast = sequence_logprob_sums(model, **inputs, forward="fast")[0]
    # sums of ~300 log-probs (|sum| ≈ 1,200, one float32 ulp ≈ 1.2e-4): a relative tolerance
    torch.testing.assert_close(fast, hf, rtol=1e-6, atol=1e-4)


def test_bf16_stays_close_to_float32() -> None:
    model = perturbed_llama()
    inputs = batch()
    fp32, _, g32 = sums_and_grads(model, inputs)
    for forward in ("fast", "hf"):
        bf16, _, g16 = sums_and_grads(model, inputs, bf16=True, forward=forward)
        assert (bf16 - fp32).abs().max() < 0.02 * fp32.abs().max()
        cos = F.cosine_similarity(
            g16["model.embed_tokens.weight"].flatten(), g32["model.embed_tokens.weight"].flatten(), dim=0
        )
        assert cos > 0.99


@pytest.mark.parametrize("out_features", [16, 40])  # narrower and wider than the input: both dW forms
def test_onednn_linear_matches_f_linear(out_features: int) -> None:
    if not onednn_linear_available():
        pytest.fail(
            "oneDNN linear ops are unavailable in this torch build (the fused path would use F.linear)"
        )
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 24, generator=g, requires_grad=True)
    w = torch.randn(out_features, 24, generator=g, requires_grad=True)
    b = torch.randn(out_features, generator=g, requires_grad=True)
    out = OneDNNLinear.apply(x, w, b)
    grad = torch.randn(37, out_features, generator=g)
    dx, dw, db = torch.autograd.grad(out, (x, w, b), grad)
    ref = F.linear(x, w, b)
    rx, rw, rb = torch.autograd.grad(ref, (x, w, b), grad)
    for a, r in ((out, ref), (dx, rx), (dw, rw), (db, rb)):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


def test_models_the_fused_forward_cannot_serve_fall_back() -> None:
    model = perturbed_llama(attention_dropout=0.1)
    assert "dropout" in fast_train_blocker(model)
    inputs = batch()
    model.eval()
    with torch.no_grad():
        auto = sequence_logprob_sums(model, **inputs)[0]
        hf = sequence_logprob_sums(model, **inputs, forward="hf")[0]
    assert torch.equal(auto, hf)
    with pytest.raises(ModelError, match=r"forward='fast' is not possible.*dropout"):
        sequence_logprob_sums(model, **inputs, forward="fast")


def test_bad_inputs_raise_model_errors() -> None:
    model = perturbed_llama()
    inputs = batch()
    with pytest.raises(ModelError, match="first token"):
        sequence_logprob_sums(
            model, inputs["input_ids"], inputs["attention_mask"], torch.ones_like(inputs["input_ids"])
        )
    with pytest.raises(ModelError, match="loss_mask shape"):
        sequence_logprob_sums(
            model, inputs["input_ids"], inputs["attention_mask"], inputs["loss_mask"][:, :-1]
        )
    with pytest.raises(ModelError, match="forward="):
        sequence_logprob_sums(model, **inputs, forward="turbo")


def groups(seed: int = 2) -> list[tuple[list[int], list[list[int]]]]:
    g = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(3, 61, (n,), generator=g).tolist()

    return [
        (ids(5), [ids(7), ids(3)]),
        (ids(1), [ids(4), ids(9)]),  # a one-token prompt
        (ids(9), [ids(2), ids(6), ids(5)]),  # three completions (an RRHF list)
        (ids(3), [ids(1)]),
    ]


@pytest.mark.parametrize("changes", [{}, {"num_key_value_heads": 2}], ids=["mha", "gqa"])
def test_shared_prompt_packing_matches_separate_rows(changes) -> None:
    model = perturbed_llama(**changes)
    batch = groups()

    def run(**kw):
        model.zero_grad(set_to_none=True)
        sums, counts = grouped_logprob_sums(model, batch, 0, **kw)
        (sums * torch.linspace(0.5, 1.5, len(sums))).sum().backward()
        return sums.detach(), counts, {n: p.grad.clone() for n, p in model.named_parameters()}

    packed, packed_counts, packed_grads = run()
    plain, plain_counts, plain_grads = run(forward="hf")
    assert packed_counts.tolist() == plain_counts.tolist() == [7, 3, 4, 9, 2, 6, 5, 1]
    torch.testing.assert_close(packed, plain, rtol=0, atol=2e-5)
    for name, grad in plain_grads.items():
        scale = grad.abs().max().item()
        torch.testing.assert_close(packed_grads[name], grad, rtol=0, atol=2e-5 * max(scale, 1.0), msg=name)
    # the layout: 4 prompts (width 9) then 8 completions (width 9); completions start at the prompt length
    rows = layout_groups(batch, 0)
    assert rows.input_ids.shape == (4 * 9 + 8 * 9,)
    assert rows.position_ids[36 : 36 + 9].tolist() == list(range(5, 14))  # group 0, completion 0
    assert rows.position_ids[36 + 9 * 4 : 36 + 9 * 5].tolist() == list(range(9, 18))  # group 2, completion 0
    assert rows.source[:3].tolist() == [4, 36, 37]  # prompt 0's last token, then completion 0's own rows
    allowed = rows.layout.allowed()
    assert allowed.shape == (8, 9, 18)
    assert allowed[1, 0, :5].all() and not allowed[1, 0, 5:9].any()  # prompt 0 has 5 real tokens
    assert allowed[1, 2, 9:12].all() and not allowed[1, 2, 12:].any()  # causal within the completion


def test_packing_rejects_empty_pieces() -> None:
    with pytest.raises(ModelError, match="empty prompt"):
        layout_groups([([], [[5, 6]])], 0)
    with pytest.raises(ModelError, match="completion 1 is empty"):
        layout_groups([([4], [[5], []])], 0)
