"""What this machine can do right now: other processes' CPU load, and the 2048² matmul rate that the
benchmarks' MFU figures are measured against (``benchmarks/RESULTS.md`` §How the figures are measured says why 2048²).

Imports only the standard library at module level (torch inside the function), so a benchmark that also
runs under a peer's interpreter (TRL's venv) can import it there.
"""

from __future__ import annotations

import statistics
import time


def cpu_busy(seconds: float = 1.0) -> float:
    """Fraction of all CPUs busy over ``seconds`` while we sleep, i.e. everyone else's load."""

    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + values[4]  # all jiffies, idle + iowait

    t0, idle0 = read()
    time.sleep(seconds)
    t1, idle1 = read()
    return 1.0 - (idle1 - idle0) / max(t1 - t0, 1)


def wait_idle(limit: float) -> float:
    """Wait up to ``limit`` seconds for other load to fall to 5%; returns the last reading."""
    start, busy = time.time(), cpu_busy()
    while busy > 0.05 and time.time() - start < limit:
        busy = cpu_busy()
    return busy


def matmul_gflops(dtype=None, repeats: int = 5, onednn: bool = False, threads: int | None = None) -> float:
    """Median GFLOP/s of a 2048×2048 @ 2048×2048 product in ``dtype`` (default float32): ``torch.matmul``,
    or with ``onednn`` oneDNN's packed linear (what rlft's float32 matmuls use). ``threads`` sets torch's
    intra-op threads first."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    dtype = dtype or torch.float32
    n = 2048
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    if onednn:
        packed = torch.ops.mkldnn._reorder_linear_weight(b, n)

        def fn():
            return torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], "")
    else:

        def fn():
            return a @ b

    with torch.inference_mode():
        for _ in range(3):  # warm-up: thread pool, page faults, clock ramp
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9
