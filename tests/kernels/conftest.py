"""Kernel tests run every Triton kernel under TRITON_INTERPRET=1 (set by tests/conftest.py) on
CPU tensors in float32, against the pure-torch reference beside it; test_bf16_branches.py runs
them again in bf16 (``bf16_interpreter``), as a GPU computes."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _interpreter_and_seed():
    assert os.environ.get("TRITON_INTERPRET") == "1", "kernel tests need the Triton interpreter"
    torch.manual_seed(0)


@pytest.fixture
def bf16_interpreter(monkeypatch):
    """The interpreter computing bf16 as a GPU does (``interpret_bf16``): wrappers keep bf16
    tensors, and the kernels run their bf16 branches and the inline PTX."""
    from model.kernels.launch import BF16_ENV, interpreter_bf16, interpreter_fp32

    monkeypatch.setenv(BF16_ENV, "1")
    assert interpreter_bf16() and not interpreter_fp32()


@pytest.fixture
def ptx_calls(monkeypatch):
    """How many times the emulated ``fma.rn.bf16x2`` ran (the real emulation, counted)."""
    from model.kernels import interpret_bf16

    calls = []
    for asm, emulate in list(interpret_bf16._ASM.items()):
        monkeypatch.setitem(interpret_bf16._ASM, asm,
                            lambda *a, _f=emulate: calls.append(1) or _f(*a))
    return calls
