"""C kernels for the fused decode step (``decode.c``), compiled on first use and loaded with ctypes;
the training kernels (``train.c``) are loaded the same way by :mod:`.training`.

A library is built with the system C compiler (``$CC``, else ``cc`` / ``gcc``) for this CPU
(``-O3 -march=native -fopenmp``) and cached under ``$RLFT_CACHE/kernels`` (else
``~/.cache/rlft/kernels``), keyed by a hash of the source and ``vec.h``, the flags, the compiler and
the CPU's feature flags, so a cache shared between machines never hands one a library built for
another. The build is written to a temporary file and renamed, so a half-written library is never
loaded.

Loading a library runs its code, so a cached one is loaded only if it is ours: the cache directory
(created 0700) and the library must belong to the current user and be writable by nobody else, and the
library's SHA-256 must equal the one recorded beside it (``<name>.sha256``) when it was compiled here.
Anything else is rebuilt, never loaded.

Once loaded, the kernels are checked against the torch ops they replace (``reference_*``,
``F.linear``), in a fixed torch state (grad mode on, float32 default dtype, CPU, one thread) so that
whether the kernels are used never depends on where they are first needed. With no compiler, a failed
build, a failed check, or ``RLFT_KERNELS=0``, :func:`kernels` returns None and callers keep their
torch code path; :func:`unavailable_reason` says why, and a failure is reported once on stderr.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..rope import rotate_pairs

SOURCE = Path(__file__).with_name("decode.c")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-std=gnu11", "-shared", "-fPIC")
_reason: list[str] = []


def cache_dir() -> Path:
    """``$RLFT_CACHE/kernels``, else ``~/.cache/rlft/kernels``."""
    root = os.environ.get("RLFT_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "rlft") / "kernels"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def build(source: Path = SOURCE) -> Path:
    """Compile ``source`` into the cache (unless a trusted build is there) and return the library's path."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found ($CC, cc, gcc)")
    directory = _private_dir(cache_dir())
    target = directory / _library_name(cc, source)
    if target.exists() or target.is_symlink():
        problem = _untrusted(target)
        if problem is None:
            return target
        print(f"rlft: kernel cache: not loading {target} ({problem}); rebuilding it", file=sys.stderr)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(fd)
    try:
        _compile(cc, source, Path(tmp))
        os.chmod(tmp, 0o755)  # the linker's mode follows the umask, which may let the group write
        _write_private(_digest_path(target), _sha256(Path(tmp)) + "\n")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _library_name(cc: str, source: Path) -> str:
    """``<stem>-<key>.so``, the key hashing everything the machine code depends on."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout
    headers = [h.read_text() for h in sorted(SOURCE.parent.glob("*.h"))]  # vec.h, included by both
    key = hashlib.sha256(
        "\n".join(
            [source.read_text(), *headers, " ".join(FLAGS), version, _cpu_flags(), platform.machine()]
        ).encode()
    ).hexdigest()[:20]
    return f"{source.stem}-{key}.so"


def _compile(cc: str, source: Path, out: Path) -> None:
    command = [cc, *FLAGS, f"-I{SOURCE.parent}", str(source), "-o", str(out), "-lm"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{cc} failed on {source.name}: {done.stderr.strip()[-2000:]}")


def _digest_path(library: Path) -> Path:
    return library.with_suffix(".sha256")


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _private_dir(directory: Path) -> Path:
    """``directory``, created 0700 if missing; one of ours that others may write to is narrowed to 0700.

    A directory of another user is refused: whoever owns it can swap a checked library for another
    between the check and the load.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = directory.stat()
    if info.st_uid != os.getuid():
        raise RuntimeError(
            f"kernel cache {directory} belongs to uid {info.st_uid}, not to this user "
            "(set RLFT_CACHE to a directory of your own)"
        )
    if info.st_mode & 0o077:
        directory.chmod(0o700)
    return directory


def _stat_problem(path: Path) -> str | None:
    """Why ``path`` is not a regular file of the current user that only they can write, or None."""
    info = os.lstat(path)
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_uid != os.getuid():
        return f"owned by uid {info.st_uid}, not by this user"
    if info.st_mode & 0o022:
        return f"writable by others (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def _untrusted(library: Path) -> str | None:
    """Why the cached ``library`` must not be loaded, or None if it is the build we recorded."""
    digest = _digest_path(library)
    try:
        problem = _stat_problem(library)
        if problem is None:
            problem = _stat_problem(digest)
            problem = problem and f"its {digest.name} is {problem}"
        if problem is None and digest.read_text().strip() != _sha256(library):
            problem = f"its SHA-256 differs from the one recorded in {digest.name}"
    except FileNotFoundError:
        problem = f"no {digest.name} recorded at build time"
    except (OSError, UnicodeDecodeError) as err:
        problem = f"unreadable: {err}"
    return problem


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, as a file only its owner can write."""
    fd, tmp = tempfile.mkstemp(dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i = ctypes.c_void_p, ctypes.c_int
    lib.rlft_decode_attention.argtypes = [p, p, p, p, p, p, i, i, i, i, i, i, i]
    lib.rlft_decode_attention.restype = None
    lib.rlft_add_rms_norm.argtypes = [p, p, p, i, i, ctypes.c_float, i]
    lib.rlft_add_rms_norm.restype = None
    lib.rlft_swiglu.argtypes = [p, p, i, i, i]
    lib.rlft_swiglu.restype = None
    lib.rlft_linear.argtypes = [p, p, p, p, i, i, i, i]
    lib.rlft_linear.restype = None
    return lib


def load(
    source: Path,
    declare: Callable[[ctypes.CDLL], ctypes.CDLL],
    check: Callable[[ctypes.CDLL], None],
) -> ctypes.CDLL | None:
    """Build ``source``, load it, set its signatures (``declare(lib)``) and run ``check(lib)`` (see
    :func:`run_self_check`); None if any of it fails or ``RLFT_KERNELS=0``. A failure is kept for
    :func:`unavailable_reason` and reported in one line on stderr: the caller then runs torch ops."""
    if os.environ.get("RLFT_KERNELS", "1") == "0":
        _reason.append("disabled by RLFT_KERNELS=0")
        return None
    try:
        lib = declare(ctypes.CDLL(str(build(source))))
        run_self_check(check, lib)
        return lib
    except (OSError, RuntimeError, AssertionError) as err:
        _reason.append(f"{source.name}: {err}")
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        print(
            f"rlft: C kernels of {source.name} not used ({first_line}); using the PyTorch path",
            file=sys.stderr,
        )
        return None


CHECK_THREADS = 1


def run_self_check(check: Callable[[ctypes.CDLL], None], lib: ctypes.CDLL) -> None:
    """``check(lib)`` with grad mode on, inference mode and autocast off, float32 as the default dtype,
    the CPU as the default device and :data:`CHECK_THREADS` threads, whatever the caller's state.

    The checks run backward passes and build float32 CPU tensors; the first kernel call may come from
    under ``torch.no_grad()`` (an evaluation) or ``torch.inference_mode()``, and a check failing there
    would switch the whole process to the torch path depending on where the kernels were first needed.
    """
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    try:
        torch.set_default_dtype(torch.float32)
        torch.set_num_threads(CHECK_THREADS)
        with (
            torch.inference_mode(False),
            torch.enable_grad(),
            torch.autocast("cpu", enabled=False),
            torch.device("cpu"),
        ):
            check(lib)
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)


@functools.cache
def kernels() -> ctypes.CDLL | None:
    """The loaded, checked decode library, or None (then :func:`unavailable_reason` says why)."""
    return load(SOURCE, _declare, _self_check)


def unavailable_reason() -> str | None:
    """Why the last kernel library that failed to load did (None if none did)."""
    return _reason[-1] if _reason else None


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def decode_attention(
    lib: ctypes.CDLL,
    qkv: Tensor,
    cis: Tensor,
    keys: Tensor,
    values: Tensor,
    key_bias: Tensor | None,
    heads: int,
    pos: int,
) -> Tensor:
    """The kernel behind :func:`reference_decode_attention` (same arguments, same result)."""
    batch, kv_heads, dim, capacity = keys.shape
    assert qkv.is_contiguous() and cis.is_contiguous() and keys.is_contiguous() and values.is_contiguous()
    assert qkv.dtype == cis.dtype == keys.dtype == values.dtype == torch.float32
    assert key_bias is None or (key_bias.is_contiguous() and key_bias.dtype == torch.float32)
    assert capacity % 16 == 0 and 0 <= pos < capacity, "capacity must be a multiple of 16 (StaticKVCache's)"
    out = torch.empty(batch, heads * dim)
    lib.rlft_decode_attention(
        qkv.data_ptr(),
        cis.data_ptr(),
        keys.data_ptr(),
        values.data_ptr(),
        _ptr(key_bias),
        out.data_ptr(),
        batch,
        heads,
        kv_heads,
        dim,
        capacity,
        pos,
        torch.get_num_threads(),
    )
    return out


def add_rms_norm(lib: ctypes.CDLL, x: Tensor, delta: Tensor | None, eps: float) -> Tensor:
    """The kernel behind :func:`reference_add_rms_norm` (same arguments, same result)."""
    assert x.is_contiguous() and x.dtype == torch.float32 and x.dim() == 2
    assert delta is None or (
        delta.is_contiguous() and delta.dtype == torch.float32 and delta.shape == x.shape
    )
    out = torch.empty_like(x)
    lib.rlft_add_rms_norm(
        x.data_ptr(), _ptr(delta), out.data_ptr(), x.shape[0], x.shape[1], eps, torch.get_num_threads()
    )
    return out


def reference_add_rms_norm(x: Tensor, delta: Tensor | None, eps: float) -> Tensor:
    """x += delta in place (the residual stream; skipped if None), then return x / √(mean(x²) + eps)."""
    if delta is not None:
        x.add_(delta)
    return F.rms_norm(x, (x.shape[-1],), None, eps)


def swiglu(lib: ctypes.CDLL, gate_up: Tensor) -> Tensor:
    """The kernel behind :func:`reference_swiglu` (same argument, same result)."""
    assert gate_up.is_contiguous() and gate_up.dtype == torch.float32 and gate_up.dim() == 2
    rows, inter = gate_up.shape[0], gate_up.shape[1] // 2
    out = gate_up.new_empty(rows, inter)
    lib.rlft_swiglu(gate_up.data_ptr(), out.data_ptr(), rows, inter, torch.get_num_threads())
    return out


def reference_swiglu(gate_up: Tensor) -> Tensor:
    """silu(gate) ⊙ up for rows [gate | up] (the Llama MLP's activation): the formula of both the decode
    and the training SwiGLU kernels."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


PANEL = 32  # output columns per packed weight panel (decode.c: NR·VL)


class KernelLinear:
    """y = x·Wᵀ + b in float32 through ``rlft_linear``, W packed once; the interface of
    :class:`rlft.models.fused.onednn.PackedLinear` (callable, ``dtype``).

    W (N, K) is stored as (⌈N/32⌉, K, 32) panels of Wᵀ, zero-padded to whole panels (so is the bias).
    """

    __slots__ = ("bias", "dtype", "lib", "out_features", "packed")

    def __init__(self, lib: ctypes.CDLL, weight: Tensor, bias: Tensor | None) -> None:
        w = weight.detach().float()
        n, k = w.shape
        padded = -(-n // PANEL) * PANEL
        self.lib, self.dtype, self.out_features = lib, torch.float32, n
        self.packed = (
            F.pad(w, (0, 0, 0, padded - n)).view(padded // PANEL, PANEL, k).transpose(1, 2).contiguous()
        )
        self.bias = None if bias is None else F.pad(bias.detach().float(), (0, padded - n)).contiguous()

    def __call__(self, x: Tensor) -> Tensor:
        x = x.float().contiguous()
        rows, k = x.shape
        assert k == self.packed.shape[1], f"expected {self.packed.shape[1]} input features, got {k}"
        y = x.new_empty(rows, self.out_features)
        self.lib.rlft_linear(
            x.data_ptr(),
            self.packed.data_ptr(),
            _ptr(self.bias),
            y.data_ptr(),
            rows,
            self.out_features,
            k,
            torch.get_num_threads(),
        )
        return y


def reference_decode_attention(
    qkv: Tensor, cis: Tensor, keys: Tensor, values: Tensor, key_bias: Tensor | None, heads: int, pos: int
) -> Tensor:
    """One decode step's attention in torch ops; writes the new key and value into the cache.

    ``qkv`` (B, (H + 2·H_kv)·D) holds [q | k | v] with q and k pair-interleaved for RoPE (see
    :func:`~rlft.models.fused.rope.rotate_pairs`) and 1/√D folded into q; ``cis`` (B, D/2, 2) the cos/sin
    of each row's position; ``keys`` (B, H_kv, D, capacity) and ``values`` (B, H_kv, capacity, D) the
    cache (:class:`~rlft.models.kv_cache.StaticKVCache`'s layout), into which the rotated key and the
    value go at ``pos``; ``key_bias`` (B·H_kv, capacity) an additive padding mask or None. Returns
    softmax(q·Kᵀ + bias)·V over positions [0, pos], (B, H·D), query head h reading key/value head
    h // (H / H_kv).
    """
    batch, kv_heads, dim, _ = keys.shape
    group = heads // kv_heads
    rot = torch.view_as_complex(cis.contiguous())[:, None]  # (B, 1, D/2)
    qk = qkv[:, : (heads + kv_heads) * dim].reshape(batch, heads + kv_heads, dim)
    rotated = rotate_pairs(qk, rot)  # (B, H + H_kv, D)
    keys[..., pos] = rotated[:, heads:]
    values[:, :, pos] = qkv[:, (heads + kv_heads) * dim :].view(batch, kv_heads, dim)
    q = rotated[:, :heads].reshape(batch * kv_heads, group, dim)
    k = keys[..., : pos + 1].reshape(batch * kv_heads, dim, pos + 1)
    v = values[:, :, : pos + 1].reshape(batch * kv_heads, pos + 1, dim)
    scores = torch.bmm(q, k)
    if key_bias is not None:
        scores = scores + key_bias[:, None, : pos + 1]
    return torch.bmm(torch.softmax(scores, -1), v).reshape(batch, heads * dim)


def _self_check(lib: ctypes.CDLL) -> None:
    """Kernel against the torch reference on a small padded grouped-query case."""
    g = torch.Generator().manual_seed(0)
    batch, heads, kv_heads, dim, capacity, pos = 3, 4, 2, 32, 16, 4
    qkv = torch.randn(batch, (heads + 2 * kv_heads) * dim, generator=g)
    angle = torch.rand(batch, dim // 2, generator=g) * 6
    cis = torch.stack([angle.cos(), angle.sin()], -1).contiguous()
    keys = torch.randn(batch, kv_heads, dim, capacity, generator=g)
    values = torch.randn(batch, kv_heads, capacity, dim, generator=g)
    bias = torch.zeros(batch * kv_heads, capacity)
    bias[:2, :2] = torch.finfo(torch.float32).min
    k2, v2 = keys.clone(), values.clone()
    want = reference_decode_attention(qkv, cis, keys, values, bias, heads, pos)
    got = decode_attention(lib, qkv, cis, k2, v2, bias, heads, pos)
    if not (torch.allclose(got, want, atol=1e-5) and torch.allclose(k2, keys, atol=1e-6)):
        raise AssertionError("decode attention kernel disagrees with its torch reference; using torch ops")
    x, delta = torch.randn(5, 40, generator=g), torch.randn(5, 40, generator=g)
    x2 = x.clone()
    want, got = reference_add_rms_norm(x, delta, 1e-6), add_rms_norm(lib, x2, delta, 1e-6)
    if not (torch.allclose(got, want, atol=1e-5) and torch.allclose(x2, x, atol=1e-6)):
        raise AssertionError("add_rms_norm kernel disagrees with its torch reference; using torch ops")
    gate_up = torch.randn(5, 2 * 40, generator=g) * 8  # 40: a vector block and a scalar tail
    if not torch.allclose(swiglu(lib, gate_up), reference_swiglu(gate_up), atol=1e-5, rtol=1e-5):
        raise AssertionError("swiglu kernel disagrees with its torch reference; using torch ops")
    x, w, b = torch.randn(11, 20, generator=g), torch.randn(40, 20, generator=g), torch.randn(40, generator=g)
    for linear_bias in (b, None):  # 11 rows, 40 columns: a partial row tile and a partial panel
        got, want = KernelLinear(lib, w, linear_bias)(x), F.linear(x, w, linear_bias)
        if not torch.allclose(got, want, atol=1e-5, rtol=1e-5):
            raise AssertionError("linear kernel disagrees with F.linear; using torch ops")
