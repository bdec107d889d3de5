"""The decode-step building blocks: oneDNN-packed linears and the growable KV cache layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rlft.models.fused.onednn import PackedLinear, onednn_linear_available
from rlft.models.kv_cache import GrowableLayer


@pytest.mark.parametrize("rows", [1, 7, 64, 300])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_matches_f_linear(rows, bias):
    g = torch.Generator().manual_seed(rows)
    w, b, x = (
        torch.randn(48, 32, generator=g),
        torch.randn(48, generator=g),
        torch.randn(rows, 32, generator=g),
    )
    layer = PackedLinear(w, b if bias else None, torch.float32, batch_hint=64)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, w, b if bias else None), atol=1e-4, rtol=1e-5)


def test_packed_linear_bf16_and_fallback_dtype():
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(16, 8, generator=g), torch.randn(4, 8, generator=g)
    with torch.inference_mode():
        half = PackedLinear(w, None, torch.bfloat16)(x)
        assert half.dtype == torch.bfloat16
        torch.testing.assert_close(half.float(), F.linear(x, w), atol=0.1, rtol=0.02)
        double = PackedLinear(w, None, torch.float64)  # oneDNN path is float32/bf16 only
        assert double.packed is None
        torch.testing.assert_close(double(x), F.linear(x.double(), w.double()))


def test_onednn_probe_is_a_bool():
    assert isinstance(onednn_linear_available(), bool)


def test_growable_layer_appends_grows_and_selects():
    layer = GrowableLayer(capacity=3)
    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(4, 2, n, 5, generator=g) for n in (2, 1, 1, 3)]
    values = [c + 1 for c in chunks]
    for k, v in zip(chunks, values, strict=True):
        keys, vals = layer.update(k, v)
    assert layer.capacity >= 7 and layer.get_seq_length() == 7
    torch.testing.assert_close(keys, torch.cat(chunks, dim=2))
    torch.testing.assert_close(vals, torch.cat(values, dim=2))
    rows = torch.tensor([3, 1])
    layer.batch_select_indices(rows)
    torch.testing.assert_close(layer.keys, torch.cat(chunks, dim=2)[rows])
    layer.crop(-2)
    assert layer.get_seq_length() == 5 and layer.values.shape == (2, 2, 5, 5)


def test_onednn_availability_does_not_depend_on_the_autocast_of_the_first_caller():
    """The probe's answer is cached for the process: a first call from inside bfloat16 autocast (a bf16
    pass) must not switch oneDNN off for every float32 pass after it."""
    onednn_linear_available.cache_clear()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside = onednn_linear_available()
        onednn_linear_available.cache_clear()
        assert inside == onednn_linear_available()
    finally:
        onednn_linear_available.cache_clear()
