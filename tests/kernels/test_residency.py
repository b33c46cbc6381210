"""The K split that takes the fewest rounds of the SMs (``residency.split_k``), and the
wrappers asking the compiled kernel how many of its programs an SM holds
(``residency.resident_programs``) — compiled for sm_90 here, in a child process without the
interpreter, as ``bench compile`` does."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model.kernels.residency import SM90, occupancy, split_k

ROOT = Path(__file__).resolve().parents[2]


def _cost(tiles: int, k_blocks: int, splits: int, per: int, slots: int) -> int:
    return math.ceil(tiles * splits / slots) * (per + 1)


def test_split_k_takes_the_fewest_rounds_where_the_old_rule_took_two():
    # wo_b at decode: 128 tiles of 32 rows over 64 K blocks. The old rule: 1,024 programs of 8
    # steps — at 6 an SM two rounds. By its residency: 768 of 11, one round.
    assert split_k(128, 64, 32, None) == (8, 8)
    assert split_k(128, 64, 32, 6 * 132) == (6, 11)
    # the shared expert's w2 (16 K blocks) at 7 an SM: 1,024 programs of 2 steps were two
    # rounds; 768 of 3 are one
    assert split_k(128, 16, 8, None) == (8, 2)
    assert split_k(128, 16, 8, 7 * 132) == (6, 3)
    # the SM count is the device's: on an H100 PCIe's 114, wo_b at 6 an SM takes 5 splits of
    # 13 (640 programs, one round); w2's 768 programs still fit
    assert split_k(128, 16, 8, 7 * 114) == (6, 3) and split_k(128, 64, 32, 6 * 114) == (5, 13)
    # a grid that fits at any split takes the most splits its cap allows
    assert split_k(1, 64, 32, 8 * 132) == (32, 2)
    # as many tiles as slots: no split (one round of 16 steps beats two of 8 plus a sum)
    assert split_k(1056, 16, 8, 8 * 132) == (1, 16)


@pytest.mark.parametrize("slots", [132 * b for b in (1, 3, 5, 6, 7, 8, 12)] + [114 * 6, 100])
def test_split_k_covers_k_stays_under_its_cap_and_never_loses_to_the_old_rule(slots):
    for tiles in (1, 7, 64, 128, 384, 512, 700, 1024, 3000):
        for k_blocks in (1, 2, 3, 11, 16, 31, 64, 100):
            for most in (1, k_blocks // 2, k_blocks, 4):
                splits, per = split_k(tiles, k_blocks, most, slots)
                assert 1 <= splits <= max(1, min(most, k_blocks))
                assert (splits - 1) * per < k_blocks <= splits * per   # no split empty
                old = split_k(tiles, k_blocks, most, None)
                assert (_cost(tiles, k_blocks, splits, per, slots)
                        <= _cost(tiles, k_blocks, *old, slots)), (tiles, k_blocks, most)


WRAPPERS = """
import json, torch
from model.kernels import gemm, quant, gemv, moe
from model.kernels.expert_bank import ExpertBank
from model.kernels.cross_compile import CompileOnly, usage
from model.kernels.residency import occupancy, split_k

def launched(call):
    with CompileOnly() as c:
        call()
    return c.compiled

w, ws = quant.quant_fp8_block(torch.randn(4096, 8192) * 0.01)      # wo_b, summing wo_a's
x = gemm.SplitK(torch.randn(3, 8, 1, 1024), (1,), torch.bfloat16)  # 3 K splits of 8 groups
rows = {}
for rounds in (True, False):
    (k,) = launched(lambda: gemm.fp8_gemm_triton(x, w, ws, rounds=rounds))
    rows[f"fp8_{rounds}"] = {"programs": k.programs, "regs": usage(k.cubin)["regs"],
                             "warps": k.num_warps, "shared": k.shared}
wb = torch.randn(1024, 4096, dtype=torch.bfloat16)                 # 8 groups of 128 rows
xa = torch.randn(1, 8, 4096, dtype=torch.bfloat16)
for rounds in (True, False):
    (k,) = launched(lambda: gemv.gemv_triton(xa, wb, groups=8, reduce=False, rounds=rounds))
    rows[f"gemv_{rounds}"] = {"programs": k.programs, "regs": usage(k.cubin)["regs"],
                              "warps": k.num_warps, "shared": k.shared}
packed, scale = quant.quant_fp4(torch.randn(2048, 4096) * 0.01)     # an expert's w1
xe = torch.randn(1, 4096, dtype=torch.bfloat16)
for rounds in (True, False):
    (k,) = launched(lambda: gemm.fp4_gemm_triton(xe, packed, scale, rounds=rounds))
    rows[f"fp4_{rounds}"] = {"programs": k.programs, "regs": usage(k.cubin)["regs"],
                             "warps": k.num_warps, "shared": k.shared}
# the routed experts at decode (6 of them, native numerics): gate/up and down, one plan each
stacks = []
for rows_, cols in ((2048, 4096), (2048, 4096), (4096, 2048)):
    p, s = quant.quant_fp4(torch.randn(rows_, cols) * 0.01)
    stacks += [p.unsqueeze(0).repeat(6, 1, 1), s.unsqueeze(0).repeat(6, 1, 1)]
bank = ExpertBank.from_stacked(*stacks)
xm = torch.randn(1, 4096, dtype=torch.bfloat16)
idx, wts = torch.arange(6).view(1, 6), torch.rand(1, 6)
for rounds in (True, False):
    up, down = launched(lambda: moe.moe_fp4_triton(xm, wts, idx, bank, 10.0,
                                                   quantize_input=True, rounds=rounds))
    for name, k in (("moe_up", up), ("moe_down", down)):
        rows[f"{name}_{rounds}"] = {"programs": k.programs, "regs": usage(k.cubin)["regs"],
                                    "warps": k.num_warps, "shared": k.shared}
print(json.dumps(rows))
"""


def test_wrappers_split_k_by_their_kernels_compiled_residency():
    """The FP8 GEMM at wo_b's decode shape, a grouped GEMV (8 × 128 rows), the FP4 GEMM at w1's
    and the routed experts' two decode GEMVs (6 pairs), compiled for sm_90: with ``rounds``
    each launch's grid is the split that its compiled kernel's registers and shared memory
    make cheapest in rounds of 132 SMs × (steps + 1), never dearer than the old rule's
    (``rounds=False``) — for wo_b and the GEMV one round where the old rule's took two — and
    the compile of the query is not counted as a launch."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", WRAPPERS], env=env, capture_output=True,
                          text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.splitlines()[-1])
    # (tiles, K blocks, the wrapper's cap, the old rule's programs): wo_b's 128 tiles of 32
    # rows; the GEMV's 32 of 32; w1's 64 of 32 rows over 16 K blocks of 256 (the partial
    # traffic caps it at 32 splits); the MoE's gate/up 6 pairs × 64 tiles over 32 K blocks and
    # its down 6 × 128 over 16 (caps 32 and 16)
    for name, tiles, k_blocks, most, programs in (
            ("fp8", 128, 64, 32, 1024), ("gemv", 32, 32, 32, 1024), ("fp4", 64, 16, 32, 1024),
            ("moe_up", 384, 32, 32, 768), ("moe_down", 768, 16, 16, 768)):
        new, old = rows[f"{name}_True"], rows[f"{name}_False"]
        per_sm = occupancy(new["regs"], new["warps"], new["shared"])["blocks_per_sm"]
        slots = SM90["sms"] * per_sm
        assert old["programs"] == tiles * split_k(tiles, k_blocks, most, None)[0] == programs
        assert new["programs"] == tiles * split_k(tiles, k_blocks, most, slots)[0], name
        # never more rounds × (steps + 1) than the old rule, at the compiled residency
        assert (_cost(tiles, k_blocks, *split_k(tiles, k_blocks, most, slots), slots)
                <= _cost(tiles, k_blocks, *split_k(tiles, k_blocks, most, None), slots))
        if old["programs"] > slots and name in ("fp8", "gemv"):   # took more than one round
            assert math.ceil(new["programs"] / slots) < math.ceil(old["programs"] / slots)


COPY_KERNELS = '''
import triton
import triton.language as tl

MASK = 7


@triton.jit
def copy(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=offs < n, other=0), mask=offs < n)


@triton.jit
def masked_copy(x_ptr, out_ptr, n, BLOCK: tl.constexpr):   # MASK is no constexpr: refused
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0)
    tl.store(out_ptr + offs, x & MASK, mask=offs < n)
'''

ASK = """
import warnings, torch, kernels
from model.kernels.cross_compile import CompileOnly
from model.kernels.residency import resident_programs
x = torch.arange(8, dtype=torch.int32)
built = []
def arguments():
    built.append(1)
    return x, x, 8
got = {}
with CompileOnly() as c, warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for name in ("copy", "masked_copy", "copy"):
        got[name] = resident_programs(getattr(kernels, name), torch.device("cpu"),
                                      {"BLOCK": 8}, (torch.int32,), arguments)
print(got["copy"], got["masked_copy"], len(built), len(c.compiled),
      [str(w.message) for w in caught])
"""


def test_resident_programs_asks_once_and_a_kernel_that_cannot_compile_keeps_the_old_rule(
        tmp_path):
    """Compiled for sm_90: a 4-warp copy holds 16 programs an SM (64 warp slots), so 132 × 16
    on an H200; asked again, the answer is remembered (the arguments are not built
    again, nothing compiles twice, no launch is recorded); a kernel the compiler refuses gives
    None — its wrapper keeps the old rule — and one warning naming it."""
    (tmp_path / "kernels.py").write_text(COPY_KERNELS)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    proc = subprocess.run([sys.executable, "-c", ASK], env=env, capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    copy, refused, built, recorded, warned = proc.stdout.strip().split(" ", 4)
    assert int(copy) == 132 * 16 and refused == "None"
    assert int(built) == 2 and int(recorded) == 0     # copy once, masked_copy once
    assert "masked_copy: no residency" in warned and warned.count("no residency") == 1
