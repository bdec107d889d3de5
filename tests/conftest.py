"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest
import torch
from micro_models import save_micro_llama


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls are fastest on one thread, and a second thread spinning on a busy machine costs 10×.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def micro_llamas(tmp_path_factory) -> dict[str, str]:
    """{task: directory} of the micro Llama for each of arithmetic and preference (tests/micro_models.py)."""
    root = tmp_path_factory.mktemp("micro-llamas")
    return {
        t: save_micro_llama(root / t, t, 300, 280 if t == "arithmetic" else 300)
        for t in ("arithmetic", "preference")
    }
