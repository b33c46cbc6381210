"""The kernels that stream a weight ask L2 for its first bytes before they wait for the launch
before them (``launch.grid_entry_prefetching``, under programmatic dependent launch): which lines
they ask for, read in the interpreter (``interpret_gdc.recording_prefetches``), and that the
results do not change. The compiled side (the prefetches come before the wait, the wait before
any access) is ``bench compile --pdl``'s, in test_cross_compile.py."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch

from model.kernels import gemm, gemv, interpret_gdc, quant
from model.kernels.launch import LINE_BYTES, overlapping

LINE = LINE_BYTES.value


def _asked(call):
    """``call()`` with and without overlapping launches → (its result with, the addresses of
    the L2 lines its programs asked for); the result is the one without, bit for bit."""
    plain = call()
    with overlapping(), interpret_gdc.recording_prefetches() as lines:
        result = call()
    with overlapping(False), interpret_gdc.recording_prefetches() as none:
        call()
    assert none == []   # no overlap, nothing asked
    got = result.parts if isinstance(result, gemm.SplitK) else result
    want = plain.parts if isinstance(plain, gemm.SplitK) else plain
    assert torch.equal(got, want)
    return result, lines


def _by_row(lines, weight):
    """The asked lines as {weight row: {byte offset in the row}}; each inside the weight, on a
    line boundary from the row's start (a program's slice starts at a multiple of 128 bytes)."""
    base, row_bytes = weight.data_ptr(), weight.stride(0) * weight.element_size()
    rows = defaultdict(set)
    for address in lines:
        offset = address - base
        assert 0 <= offset < weight.numel() * weight.element_size(), "outside the weight"
        row, col = divmod(offset, row_bytes)
        assert col % LINE == 0, f"row {row}: a line at byte {col}, off its slice's grid"
        rows[row].add(col)
    return rows


@pytest.mark.parametrize("fmt,mma,groups", [("fp8", False, 1), ("bf16", False, 1),
                                            ("bf16", False, 4), ("fp8", True, 1)])
def test_a_gemv_asks_for_the_start_of_every_slice_it_reads(fmt, mma, groups, request):
    """Every row of the weight, at every K split's first byte: each program its own slice.
    bf16 weights as a GPU reads them (the fp32 interpreter would read an fp32 copy)."""
    if fmt == "bf16":
        request.getfixturevalue("bf16_interpreter")
    n, k = 128 * groups if groups > 1 else 200, 640
    w = torch.randn(n, k) * k**-0.5
    weight, scale = (quant.quant_fp8_block(w) if fmt == "fp8" else (w.to(torch.bfloat16), None))
    x = torch.randn(1, groups, k) if groups > 1 else torch.randn(1, k)
    result, lines = _asked(lambda: gemv.gemv_triton(x, weight, scale, groups, reduce=False,
                                                    mma=mma))
    splits = (result.parts if isinstance(result, gemm.SplitK) else result).shape[0]
    assert splits > 1   # else the slices' starts would not be told apart
    slice_bytes = -(-k // splits) * weight.element_size()
    rows = _by_row(lines, weight)
    assert sorted(rows) == list(range(n))
    starts = {col - col % slice_bytes for cols in rows.values() for col in cols}
    for row, cols in rows.items():
        assert {col - col % slice_bytes for col in cols} == starts, row
    assert len(starts) == splits


def test_the_fp8_gemm_asks_for_its_rows_first_lines():
    """The FP8 GEMM's decode programs (32 weight rows each, all of K): 4 lines a row, so a
    300-byte row is asked for whole — 3 lines, none past it."""
    wq, ws = quant.quant_fp8_block(torch.randn(70, 300))
    x = torch.randn(2, 300)
    _, lines = _asked(lambda: gemm.fp8_gemm_triton(x, wq, ws))
    assert len(lines) == 70 * 3
    assert _by_row(lines, wq) == {row: {0, 128, 256} for row in range(70)}


def test_the_router_asks_for_every_gate_row_it_reads(bf16_interpreter):
    """The router's split decode (2 gate rows a program, all of dim): a 200-byte bf16 row is
    asked for whole, 2 lines, every row of 23 (the last program's second row is padding)."""
    from model.kernels import router

    weight = (torch.randn(23, 100) * 0.1).to(torch.bfloat16)
    x, bias = torch.randn(3, 100), torch.randn(23) * 0.1
    ids = torch.zeros(3, dtype=torch.long)
    _, lines = _asked(lambda: torch.cat([t.float().flatten() for t in router.route_triton(
        x, weight, bias, ids, None, 4, "sqrtsoftplus", 1.0, split=True)]))
    assert _by_row(lines, weight) == {row: {0, 128} for row in range(23)}
    assert len(lines) == 3 * 23 * 2   # each token's programs ask for their own rows


@pytest.mark.parametrize("fused_post", [False, True])
def test_mhc_asks_for_all_of_fn_it_reads(fused_post):
    """mHC's decode partial programs ask for their slice of fn (fp32 [24, hc·d]): together,
    every line of every row — the pre's programs a 64-value slice each (the last 16 values,
    one line), the post → pre programs a 128-column block of every stream (of 256)."""
    from model.kernels import mhc

    hc, d = 4, 100 if not fused_post else 256
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, hc, d, generator=g)
    fn = torch.randn((2 + hc) * hc, hc * d, generator=g) * 0.05
    scale, base = torch.rand(3, generator=g) + 0.5, torch.randn((2 + hc) * hc, generator=g)
    args = (fn, scale, base, 20, 1e-6, 1e-6)
    y, post, comb = torch.randn(1, 1, d), torch.rand(1, 1, hc), torch.rand(1, 1, hc, hc)

    def call() -> torch.Tensor:
        out = (mhc.hc_post_pre_triton(y, x, post, comb, *args) if fused_post else
               mhc.hc_pre_triton(x, *args, decode=True, k_slice=64))
        return torch.cat([t.flatten() for t in out])

    _, lines = _asked(call)
    row_bytes = hc * d * 4
    assert _by_row(lines, fn) == {row: set(range(0, row_bytes, LINE)) for row in range(24)}
    assert len(lines) == 24 * -(-row_bytes // LINE)   # each line once
