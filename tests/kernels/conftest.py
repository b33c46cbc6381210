"""Kernel tests run every Triton kernel under TRITON_INTERPRET=1 (set by tests/conftest.py) on
CPU tensors in float32, against the pure-torch reference beside it."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _interpreter_and_seed():
    assert os.environ.get("TRITON_INTERPRET") == "1", "kernel tests need the Triton interpreter"
    torch.manual_seed(0)
