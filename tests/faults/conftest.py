"""Fixtures of the fault-injection suite (the cases themselves live in fault_cases.py)."""

from __future__ import annotations

import pytest
from fault_cases import build_assets


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> dict[str, str]:
    return build_assets(tmp_path_factory.mktemp("fault-assets"))
