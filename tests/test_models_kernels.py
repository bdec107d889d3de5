"""The C decode kernels (rlft/models/fused/kernels): each against the torch ops it replaces, the build cache,
and the fallback to torch ops when they cannot be built."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rlft.models.fused import kernels as K
from rlft.models.fused.kernels import training as T

lib = K.kernels()
needs_lib = pytest.mark.skipif(lib is None, reason=f"C kernels unavailable: {K.unavailable_reason()}")


@pytest.mark.skipif(K._compiler() is None, reason="no C compiler: rlft runs on its torch fallback here")
def test_kernels_build_on_this_machine():
    # with a C compiler present the fast path must not silently fall back
    assert lib is not None, K.unavailable_reason()


def _attention_case(batch, heads, kv_heads, dim, capacity, pos, padded, seed=0):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(batch, (heads + 2 * kv_heads) * dim, generator=g)
    angle = torch.rand(batch, dim // 2, generator=g) * 6
    cis = torch.stack([angle.cos(), angle.sin()], -1).contiguous()
    keys = torch.randn(batch, kv_heads, dim, capacity, generator=g)
    values = torch.randn(batch, kv_heads, capacity, dim, generator=g)
    bias = None
    if padded:  # left padding: the first few positions of some rows are masked out
        bias = torch.zeros(batch * kv_heads, capacity)
        bias[: kv_heads * 2, :3] = torch.finfo(torch.float32).min
    return qkv, cis, keys, values, bias


@needs_lib
@pytest.mark.parametrize(
    ("heads", "kv_heads", "dim", "pos", "padded"),
    [
        (4, 4, 32, 0, False),  # first decode position
        (4, 4, 32, 37, True),  # a partial block of 16 positions, padding
        (6, 2, 64, 47, False),  # grouped-query attention, whole blocks
        (4, 2, 24, 20, True),  # head size not a multiple of 16: the scalar path
    ],
)
def test_decode_attention_matches_torch(heads, kv_heads, dim, pos, padded):
    qkv, cis, keys, values, bias = _attention_case(5, heads, kv_heads, dim, 48, pos, padded)
    k_ref, v_ref = keys.clone(), values.clone()
    want = K.reference_decode_attention(qkv, cis, k_ref, v_ref, bias, heads, pos)
    got = K.decode_attention(lib, qkv, cis, keys, values, bias, heads, pos)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
    # the rotated key and the value went into the cache at `pos`, nothing else changed
    torch.testing.assert_close(keys, k_ref, atol=1e-6, rtol=0)
    assert torch.equal(values, v_ref)


def test_reference_decode_attention_is_rope_then_softmax_attention():
    """The reference itself against attention written out longhand (HF's half-split RoPE)."""
    heads = kv_heads = 2
    dim, pos, batch = 8, 3, 2
    qkv, cis, keys, values, _ = _attention_case(batch, heads, kv_heads, dim, 16, pos, False)
    got = K.reference_decode_attention(qkv, cis, keys, values, None, heads, pos)
    c, s = cis[..., 0], cis[..., 1]  # (B, D/2)
    for b in range(batch):
        for h in range(heads):
            q = qkv[b, h * dim : (h + 1) * dim]
            re, im = q[0::2], q[1::2]  # pair-interleaved layout
            q_rot = torch.stack([re * c[b] - im * s[b], re * s[b] + im * c[b]], -1).flatten()
            k = keys[b, h, :, : pos + 1].T  # (L, D), position `pos` just written
            v = values[b, h, : pos + 1]
            want = torch.softmax(k @ q_rot, 0) @ v
            torch.testing.assert_close(got[b, h * dim : (h + 1) * dim], want, atol=1e-6, rtol=1e-5)


@needs_lib
@pytest.mark.parametrize("with_delta", [True, False])
def test_add_rms_norm_matches_torch(with_delta):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(70, 200, generator=g) * 3  # 70 × 200 = 14,000 elements: one thread
    delta = torch.randn(70, 200, generator=g) if with_delta else None
    x_ref = x.clone()
    want = K.reference_add_rms_norm(x_ref, delta, 1e-5)
    got = K.add_rms_norm(lib, x, delta, 1e-5)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(x, x_ref, atol=0, rtol=0)  # the residual stream updated in place


@needs_lib
def test_swiglu_matches_torch_over_the_whole_range():
    g = torch.Generator().manual_seed(2)
    gate_up = torch.randn(300, 2 * 230, generator=g) * 20  # large |gate| too; 230 = vectors + a tail
    gate_up[0, :4] = torch.tensor([-200.0, 200.0, 0.0, -88.0])
    torch.testing.assert_close(K.swiglu(lib, gate_up), K.reference_swiglu(gate_up), atol=1e-5, rtol=1e-5)


@needs_lib
@pytest.mark.parametrize(("rows", "out_features", "bias"), [(64, 128, False), (13, 40, True), (1, 7, True)])
def test_kernel_linear_matches_f_linear(rows, out_features, bias):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(rows, 96, generator=g)
    w = torch.randn(out_features, 96, generator=g)
    b = torch.randn(out_features, generator=g) if bias else None
    linear = K.KernelLinear(lib, w, b)
    torch.testing.assert_close(linear(x), F.linear(x, w, b), atol=1e-5, rtol=1e-5)
    # non-contiguous input (a column slice) is accepted
    wide = torch.randn(rows, 192, generator=g)
    torch.testing.assert_close(linear(wide[:, :96]), F.linear(wide[:, :96], w, b), atol=1e-5, rtol=1e-5)


@needs_lib
def test_build_is_cached_by_source_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("RLFT_CACHE", str(tmp_path))
    first = K.build()
    assert first.parent == tmp_path / "kernels" and first.exists()
    stamp = first.stat().st_mtime_ns
    assert K.build() == first and first.stat().st_mtime_ns == stamp  # reused, not rebuilt
    changed = tmp_path / "decode.c"
    changed.write_text(K.SOURCE.read_text() + "\n/* changed */\n")
    assert K.build(changed) != first  # another source, another library
    assert (
        not list((tmp_path / "kernels").glob("*.so.tmp*")) and len(list(tmp_path.glob("kernels/*.so"))) == 2
    )


def test_no_compiler_or_disabled_falls_back_to_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("RLFT_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv("PATH", str(tmp_path))  # no cc, no gcc
    with pytest.raises(RuntimeError, match="no C compiler"):
        K.build()
    monkeypatch.setenv("RLFT_KERNELS", "0")
    K.kernels.cache_clear()
    try:
        assert K.kernels() is None
        assert K.unavailable_reason() == "disabled by RLFT_KERNELS=0"
    finally:
        K.kernels.cache_clear()


def test_compiler_errors_are_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("RLFT_CACHE", str(tmp_path))
    broken = tmp_path / "broken.c"
    broken.write_text("this is not C;\n")
    if K._compiler() is None:
        pytest.skip("no C compiler")
    with pytest.raises(RuntimeError, match=r"failed on broken\.c"):
        K.build(broken)
    assert not list((tmp_path / "kernels").iterdir())  # no half-written library left behind


# --- training kernels (train.c): forward and backward against their torch twins -----------------------------

train_lib = T.train_kernels()
needs_train_lib = pytest.mark.skipif(train_lib is None, reason="C training kernels unavailable")


def _fwd_bwd(fn, x: torch.Tensor) -> list[torch.Tensor]:
    """Outputs of fn(x) and the gradient of a fixed weighted sum of them w.r.t. x, all as float32."""
    leaf = x.clone().requires_grad_()
    out = fn(leaf)
    out = out if isinstance(out, tuple) else (out,)
    g = torch.Generator().manual_seed(9)
    loss = sum((o.float() * torch.randn(o.shape, generator=g)).sum() for o in out)
    loss.backward()
    return [*(o.float() for o in out), leaf.grad.float()]


TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


@pytest.mark.skipif(K._compiler() is None, reason="no C compiler: rlft runs on its torch fallback here")
def test_training_kernels_build_on_this_machine():
    assert train_lib is not None, K.unavailable_reason()


@needs_train_lib
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(6, 6, 64), (4, 2, 24)])  # vectors / scalar tail
def test_rope_forward_and_backward_match_torch(dtype, heads, kv_heads, dim):
    g = torch.Generator().manual_seed(4)
    rows = 37
    qkv = torch.randn(rows, (heads + 2 * kv_heads) * dim, generator=g).to(dtype)
    angle = torch.rand(rows, dim // 2, generator=g) * 20
    cs = torch.cat([angle.cos(), angle.sin()], -1).contiguous()
    fused = _fwd_bwd(lambda t: T.rope(t, cs, heads, kv_heads, dim), qkv)
    reference = _fwd_bwd(lambda t: T.reference_rope(t, cs, heads, kv_heads, dim), qkv)
    for a, b in zip(fused, reference, strict=True):
        torch.testing.assert_close(a, b, atol=TOL[dtype], rtol=TOL[dtype])


def test_reference_rope_is_hf_rope():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    heads, dim, rows = 2, 8, 5
    rotary = LlamaRotaryEmbedding(LlamaConfig(hidden_size=heads * dim, num_attention_heads=heads))
    cos, sin = rotary(torch.zeros(1, 1), torch.arange(rows)[None])  # (1, N, D)
    g = torch.Generator().manual_seed(5)
    qkv = torch.randn(rows, 3 * heads * dim, generator=g)
    qk, v = T.reference_rope(qkv, T.rope_tables(cos[0], sin[0]), heads, heads, dim)
    q, k = (
        qkv[:, : heads * dim].view(rows, heads, dim),
        qkv[:, heads * dim : 2 * heads * dim].view(rows, heads, dim),
    )
    q_hf, k_hf = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
    torch.testing.assert_close(qk[:, :heads], q_hf[0].transpose(0, 1))
    torch.testing.assert_close(qk[:, heads:], k_hf[0].transpose(0, 1))
    assert torch.equal(v, qkv[:, 2 * heads * dim :].view(rows, heads, dim))


@needs_train_lib
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu_forward_and_backward_match_torch(dtype):
    g = torch.Generator().manual_seed(6)
    gate_up = (torch.randn(29, 2 * 72, generator=g) * 6).to(dtype)  # 72 = vectors + a tail
    fused, reference = _fwd_bwd(T.swiglu, gate_up), _fwd_bwd(T.reference_swiglu, gate_up)
    for a, b in zip(fused, reference, strict=True):
        torch.testing.assert_close(a, b, atol=TOL[dtype], rtol=TOL[dtype])


@needs_train_lib
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_forward_and_backward_match_torch(dtype):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(31, 100, generator=g) * 3
    fused = _fwd_bwd(lambda t: T.rms_norm(t, 1e-5, dtype), x)
    reference = _fwd_bwd(lambda t: T.reference_rms_norm(t, 1e-5, dtype), x)
    assert fused[0].shape == x.shape
    for a, b in zip(fused, reference, strict=True):
        torch.testing.assert_close(a, b, atol=TOL[dtype], rtol=TOL[dtype])


def test_training_ops_fall_back_to_torch_without_the_library(monkeypatch):
    monkeypatch.setattr(T, "train_kernels", lambda: None)
    g = torch.Generator().manual_seed(8)
    gate_up = torch.randn(4, 16, generator=g)
    assert torch.equal(T.swiglu(gate_up), T.reference_swiglu(gate_up))
    x = torch.randn(4, 16, generator=g)
    assert torch.equal(T.rms_norm(x, 1e-6), T.reference_rms_norm(x, 1e-6, torch.float32))


# --- the load-time check does not depend on the caller's torch state ---------------------------------------


@pytest.fixture
def fresh_train_kernels():
    """train_kernels() with its process-wide cache emptied before and after the test."""
    T.train_kernels.cache_clear()
    yield T.train_kernels
    T.train_kernels.cache_clear()


def _first_call_under(context, dtype=torch.float32):
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with context():
            return T.train_kernels()
    finally:
        torch.set_default_dtype(before)


@pytest.mark.parametrize(
    ("context", "dtype"),
    [(torch.no_grad, torch.float32), (torch.inference_mode, torch.float32), (torch.no_grad, torch.float64)],
)
def test_first_training_kernel_call_gives_the_grad_mode_result(fresh_train_kernels, context, dtype):
    got = _first_call_under(context, dtype)
    assert (got is None) == (train_lib is None), K.unavailable_reason()
    if got is not None:
        assert got._name == train_lib._name
    assert torch.is_grad_enabled() and torch.get_default_dtype() == torch.float32


def test_a_failing_self_check_is_reported_once(fresh_train_kernels, monkeypatch, capsys):
    if K._compiler() is None:
        pytest.skip("no C compiler")

    def disagree(lib):
        raise AssertionError("a training kernel disagrees with its torch twin")

    monkeypatch.setattr(T, "_self_check", disagree)
    assert T.train_kernels() is None and T.train_kernels() is None
    x = torch.randn(4, 8)
    torch.testing.assert_close(T.swiglu(x), T.reference_swiglu(x))  # the torch path, no new report
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert "train.c" in lines[0] and "disagrees" in lines[0] and "PyTorch path" in lines[0]
