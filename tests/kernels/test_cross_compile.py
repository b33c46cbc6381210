"""Every Triton kernel compiles for sm_90 (H100/H200) on this CPU machine: Triton's GPU compiler
and ptxas, in a child process without the interpreter (`v4coder bench compile`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from model.kernels.residency import occupancy, waves

ROOT = Path(__file__).resolve().parents[2]

# reads a module-level int that is not a tl.constexpr: the interpreter runs it, the compiler
# refuses it (the bug the quantisation kernels had until this check existed)
BAD_KERNEL = textwrap.dedent('''
    import triton
    import triton.language as tl

    MASK = 7

    @triton.jit
    def masked_copy(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs, mask=offs < n, other=0)
        tl.store(out_ptr + offs, x & MASK, mask=offs < n)
''')


def _run(code: str, tmp_path: Path, interpret: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)


# ~90 s with Triton's cache warm; with it cold (a fresh machine: ~/.triton/cache is empty) a
# slow machine took over 300 s, the suite's default limit, so this test has the child's own 900
@pytest.mark.timeout(900)
def test_every_launched_kernel_compiles_for_sm90_with_its_resources():
    """Each launch as a GPU with overlapping launches on makes it (``--pdl``), so each kernel's
    wait for the launch before it is checked too: the one way a launch can race it."""
    env = dict(os.environ, TRITON_INTERPRET="1")   # as under pytest: main() re-runs without it
    proc = subprocess.run([sys.executable, "-m", "model.bench_compile", "--reduced", "--pdl"],
                          env=env, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    summary = rows[-1]
    assert summary["summary"] and summary["failures"] == 0
    assert summary["not_reached"] == [] and summary["kernels_compiled"] == summary[
        "kernels_launched"] >= 25
    kernels = rows[:-1]
    assert {"_sparse_attn_fwd", "_indexer_scores_block", "_fp4_gemm_kernel", "_moe_gemv_kernel",
            "_fake_quant_kernel", "_norm_rope_rows_kernel", "_hc_post_partial_kernel",
            "_gemv_kernel"} <= {r["kernel"] for r in kernels}
    # the indexer's 64-head score tile is a Hopper warp-group MMA; a GEMV has no dot at all
    assert {r["mma"] for r in kernels if r["kernel"] == "_indexer_scores_block"} == {"wgmma"}
    assert {r["mma"] for r in kernels if r["kernel"] == "_gemv_kernel"} == {"none"}
    # the decode path's byte streams load as vectors or pipelined copies, not a byte at a time:
    # FP4 experts and GEMMs, FP8 GEMV weights, FP4 indexer keys, FP8 KV rows in decode and
    # prefill, and a prefill's up-conversions of both (whole tiles of aligned data, a row's
    # scales as one word; cross_compile.global_loads counts the PTX's load instructions),
    # TABLE mode's rows too
    def streams_bytes(r):
        c = r["constexprs"]
        return (r["kernel"] in ("_fp4_gemm_kernel", "_moe_gemv_kernel", "_moe_gemm_kernel",
                                "_gemv_kernel", "_upconvert_keys_kernel")
                or (r["kernel"] == "_upconvert_rows_kernel" and c.get("SCALE_WORDS"))
                or (r["kernel"] == "_indexer_scores_block" and c.get("PACKED"))
                or (r["kernel"] == "_sparse_attn_fwd" and c.get("KV_FP8")
                    and c.get("SCALE_WORDS"))
                or (r["kernel"] == "_append_rows_kernel" and c.get("WORDS")))
    streaming = [r for r in kernels if streams_bytes(r)]
    assert len(streaming) >= 14 and {"_upconvert_rows_kernel", "_upconvert_keys_kernel"} <= {
        r["kernel"] for r in streaming}
    for r in streaming:
        assert r["global_loads"]["bytes"] <= 4, (r["case"], r["kernel"], r["global_loads"])
    # each dot's warp layout: every attention forward has its scores and PV dots
    assert all(isinstance(r["dots"], list) for r in kernels)
    assert all(len(r["dots"]) >= 2 and all(d["replicated"] >= 1 for d in r["dots"])
               for r in kernels if r["kernel"] == "_sparse_attn_fwd")
    # each row's SASS loops: a GEMM's K loop issues tensor-core MMAs; a GEMV's has none
    assert all(isinstance(r["loops"], list) for r in kernels)
    assert any(loop["mma"] for r in kernels if r["kernel"] == "_fp4_gemm_kernel"
               for loop in r["loops"])
    assert not any(loop["mma"] for r in kernels if r["kernel"] == "_gemv_kernel"
                   for loop in r["loops"])
    # every kernel was launched to overlap the one before it, and waits for it before it
    # touches global memory (a failure otherwise), and lets the next one start; the kernels
    # that stream a weight first ask L2 for its first lines: the projections, the router's gate,
    # mHC's fn
    streaming = {"_gemv_kernel", "_gemv_mma_kernel", "_fp8_gemm_kernel", "_gate_route_kernel",
                 "_hc_pre_partial_kernel", "_hc_post_partial_kernel"}
    assert all({k: v for k, v in r["grid"].items() if k != "prefetches"}
               == {"launch_pdl": True, "wait": "first", "lets_next_start": True}
               for r in kernels)
    assert all((r["grid"]["prefetches"] > 0) == (r["kernel"] in streaming) for r in kernels)
    # attention's AHEAD tiles issue their exps while the next tile's score MMAs run
    ahead = [r for r in kernels if r["kernel"] == "_sparse_attn_fwd"
             and r["constexprs"].get("AHEAD")]
    assert ahead and all(loop["exps_under_mma"] > 0 for r in ahead for loop in r["loops"]
                         if loop["mma"]), [(r["case"], r["loops"]) for r in ahead]
    # every loop of tensor-core MMAs has its loads issued ahead (a failure otherwise)
    assert all(r["pipelined"] for r in kernels)
    # the program that finishes a split launch waits for memory in few trips, each for many
    # loads (cross_compile.finish_waits): mHC's whole-row finish at most twice, in no loop;
    # attention's merge a group of splits' lse and partials (16+ loads) a trip; the K-split
    # sums (the FP8 GEMM's, the MoE's epilogues) a chunk of 8 or more a trip
    finishes = [(r["case"], r["kernel"], r["finish"]) for r in kernels if r["finish"]]
    mhc = [f for _, k, f in finishes if k in ("_hc_pre_partial_kernel", "_hc_post_partial_kernel")]
    assert len(mhc) >= 2 and all(len(f["loads"]) <= 2 and f["in_loops"] == 0 for f in mhc), mhc
    merges = [f for _, k, f in finishes if k == "_sparse_attn_fwd"]
    assert merges and all(max(f["loads"]) >= 16 for f in merges), merges
    sums = [f for case, _, f in finishes if case in ("fp8_gemm_wo_b_splitk_decode",
                                                      "moe_fp4_decode", "moe_fp4_decode_native")]
    assert len(sums) >= 4 and all(min(f["loads"]) >= 8 for f in sums), sums
    # every launch's grid, and the rounds of an H200's SMs it fills (all grids are tuples here)
    assert all(r["programs"] > 0 and r["waves"] is not None for r in kernels)
    assert streaming <= {r["kernel"] for r in kernels}
    for r in kernels:
        assert r["arch"] == "sm_90" and 0 < r["regs"] <= 255 and r["mma"] in ("wgmma", "mma.sync",
                                                                             "none"), r
        assert 0 < r["occupancy"] <= 1 and r["limited_by"] in ("registers", "shared", "warps",
                                                                  "blocks"), r


def test_a_kernel_the_interpreter_runs_but_the_compiler_refuses_is_reported(tmp_path):
    (tmp_path / "bad_kernel.py").write_text(BAD_KERNEL)
    launch = ("import torch, bad_kernel\n"
              "x = torch.arange(8, dtype=torch.int32); out = torch.empty_like(x)\n"
              "bad_kernel.masked_copy[(1,)](x, out, 8, BLOCK=8)\n")
    interpreted = _run(launch + "print(out.tolist())", tmp_path, interpret=True)
    assert interpreted.returncode == 0, interpreted.stderr
    assert interpreted.stdout.strip() == "[0, 1, 2, 3, 4, 5, 6, 7]"
    compiled = _run("from model.kernels.cross_compile import CompileOnly\n"
                    "from model.bench_compile import _first_line\n"
                    "try:\n"
                    "    with CompileOnly():\n" + textwrap.indent(launch, "        ") +
                    "except Exception as exc:\n"
                    "    print('refused:', _first_line(exc))\n", tmp_path, interpret=False)
    assert compiled.returncode == 0, compiled.stderr
    assert "refused:" in compiled.stdout and "MASK" in compiled.stdout


def test_occupancy_follows_the_sm90_limits():
    # 64 regs × 4 warps: 65536 / (2048 · 4) = 8 blocks = 32 of 64 warps
    assert occupancy(64, 4, 0) == {"blocks_per_sm": 8, "occupancy": 0.5, "limited_by": "registers"}
    # 255 regs round up to 256 per thread: 1 block of 8 warps
    assert occupancy(255, 8, 0)["blocks_per_sm"] == 1
    # 100 KiB of shared memory: 2 blocks fit in 228 KiB whatever the registers
    assert occupancy(32, 4, 100 * 1024) == {"blocks_per_sm": 2, "occupancy": 0.125,
                                            "limited_by": "shared"}
    # tiny kernels: 16 blocks of 4 warps fill the 64 warp slots
    assert occupancy(16, 4, 0)["occupancy"] == 1.0
    # more than 227 KiB of shared memory: the launch would fail
    assert occupancy(32, 4, 240 * 1024)["blocks_per_sm"] == 0


def test_waves_count_how_often_a_grid_fills_132_sms():
    # the query up-projections' decode GEMM: 1,280 programs at 8 an SM fill 1,056 slots 1.21
    # times (two rounds); wq_b's 1,024 fit in one
    assert waves(1280, 8) == 1.21 and waves(1024, 8) == 0.97
    assert waves(None, 8) is None and waves(128, 0) is None


SASS = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   S2R R0, SR_TID.X ;
        /*0020*/              @!P0 BRA 0x90 ;
        /*0030*/                   LDG.E R2, desc[UR4][R2.64] ;
        /*0040*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0050*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR12], RZ, !UPT ;
        /*0060*/                   SHFL.BFLY PT, R5, R4, 0x1, 0x1f ;
        /*0070*/               @P1 BRA 0x30 ;
        /*0080*/                   STG.E desc[UR4][R2.64], R5 ;
        /*0090*/                   EXIT ;
        /*00a0*/                   BRA 0xa0;
"""


def test_sass_loops_are_the_backward_branches_ranges_counted_by_kind():
    from model.kernels.cross_compile import sass_loops

    loops = sass_loops(SASS, least=2)
    assert loops == [{"at": "0x30", "instructions": 5, "barriers": 1, "global_loads": 1,
                      "global_stores": 0, "shared": 0, "shuffles": 1, "mma": 1,
                      "atomics": 0, "exps_under_mma": 0}]   # the forward branch and the
    # one-line spin are no loop
    assert sass_loops(SASS) == []     # under 16 instructions: left out by default


def _loop_of(*body: str) -> str:
    lines = [f"        /*{16 * i:04x}*/                   {text} ;" for i, text in enumerate(body)]
    return "\n".join(lines + [f"        /*{16 * len(body):04x}*/               @P0 BRA 0x0 ;"])


def test_exps_under_mma_are_the_ones_issued_while_the_warps_mmas_run():
    """After an HGMMA and before the WARPGROUP.DEPBAR that waits for it, around the back edge
    too: a softmax that waits for its scores first has none; one whose next scores are in
    flight has every exp (predicated ones too)."""
    from model.kernels.cross_compile import sass_loops

    waits_first = _loop_of("WARPGROUP.ARRIVE", "HGMMA.64x16x16.F32.BF16 R24, gdesc[UR12], RZ",
                           "WARPGROUP.DEPBAR.LE gsb0, 0x0", "MUFU.EX2 R4, R4",
                           "MUFU.EX2 R5, R5", "FADD R6, R4, R5")
    overlapped = _loop_of("WARPGROUP.DEPBAR.LE gsb0, 0x0", "FMNMX R3, R3, R2, !PT",
                          "WARPGROUP.ARRIVE", "HGMMA.64x16x16.F32.BF16 R24, gdesc[UR12], RZ",
                          "MUFU.EX2 R4, R4", "@P1 MUFU.EX2 R5, R5", "FADD R6, R4, R5",
                          "HGMMA.64x256x16.F32.BF16 R32, R20, gdesc[UR8], R32")
    assert [loop["exps_under_mma"] for loop in sass_loops(waits_first, least=2)] == [0]
    assert [loop["exps_under_mma"] for loop in sass_loops(overlapped, least=2)] == [2]
    # an exp before the body's first MMA, with an MMA still in flight from the step before
    wrapped = _loop_of("MUFU.EX2 R4, R4", "WARPGROUP.DEPBAR.LE gsb0, 0x0", "MUFU.EX2 R5, R5",
                       "HGMMA.64x16x16.F32.BF16 R24, gdesc[UR12], RZ")
    assert [loop["exps_under_mma"] for loop in sass_loops(wrapped, least=2)] == [1]


FINISH = """
        /*0000*/                   LDG.E R4, desc[UR4][R2.64] ;
        /*0010*/                   ATOMG.E.ADD.STRONG.GPU PT, R6, desc[UR4][R8.64], R7 ;
        /*0020*/                   LDG.E.128 R12, desc[UR4][R2.64] ;
        /*0030*/                   LDG.E R16, desc[UR4][R10.64] ;
        /*0040*/                   LDG.E R22, desc[UR4][R10.64+0x4] ;
        /*0050*/                   MOV R22, RZ ;
        /*0060*/                   FADD R17, R22, R15 ;
        /*0070*/                   LDG.E R18, desc[UR4][R16.64] ;
        /*0080*/                   FADD R19, RZ, R18 ;
        /*0090*/                   LDG.E R20, desc[UR4][R2.64+0x10] ;
        /*00a0*/                   FADD R21, R21, R20 ;
        /*00b0*/               @P0 BRA 0x90 ;
        /*00c0*/                   STG.E desc[UR4][R2.64], R21 ;
        /*00d0*/                   EXIT ;
"""


def test_finish_waits_count_the_loads_each_wait_of_a_finisher_is_for():
    """After the arrival (the last ATOMG): 3 loads out, then a use of the 128-bit one's last
    register waits for them (the one overwritten first is no wait); a load whose address came
    from them goes out after, and its use waits alone; so does the loop's, every iteration.
    The load before the arrival is not the finisher's; no arrival, no finisher."""
    from model.kernels.cross_compile import finish_waits

    assert finish_waits(FINISH) == {"loads": [3, 1, 1], "in_loops": 1}
    assert finish_waits(SASS) is None


def test_a_loop_of_mmas_without_asynchronous_loads_is_not_pipelined():
    """``pipelined``: MMAs in a loop want their operands loaded a few steps ahead (``cp.async``);
    plain loads only there mean every step waits for its own (run 3's ``wo_b``). A kernel
    without MMA loops passes whatever its loads."""
    from model.kernels.cross_compile import pipelined

    mma_loop = [{"instructions": 600, "mma": 8}, {"instructions": 45, "mma": 0}]
    assert pipelined({"vector": 7, "async": 42}, mma_loop)
    assert not pipelined({"vector": 7, "async": 0}, mma_loop)
    assert pipelined({"vector": 7, "async": 0}, [{"instructions": 300, "mma": 0}])
    assert pipelined({"async": 0}, [])


def test_grid_wait_is_first_only_before_any_global_memory_access():
    """``ACQBULK`` (``griddepcontrol.wait``) before the first instruction that may touch global
    memory: "first"; after a load, a store, an atomic or a generic access: "late"; shared memory
    and constants before it are the program's own."""
    from model.kernels.cross_compile import grid_wait

    head = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   S2R R0, SR_TID.X ;
        /*0020*/                   STS [R0], R1 ;
        /*0030*/                   PREEXIT ;"""
    tail = """
        /*0050*/                   LDG.E R2, desc[UR4][R2.64] ;
        /*0060*/                   EXIT ;"""
    assert grid_wait(head + "\n        /*0040*/                   ACQBULK ;" + tail) == {
        "wait": "first", "lets_next_start": True, "prefetches": 0}
    assert grid_wait(SASS) == {"wait": "none", "lets_next_start": False, "prefetches": 0}
    # L2 prefetches of a weight (``grid_entry_prefetching``) read nothing in: counted, not late
    prefetching = (head + "\n        /*0034*/               @P0 CCTL.E.PF2 [R10] ;"
                   "\n        /*0038*/                   CCTL.E.PF2 [R12] ;"
                   "\n        /*0040*/                   ACQBULK ;" + tail)
    assert grid_wait(prefetching) == {"wait": "first", "lets_next_start": True, "prefetches": 2}
    for early in ("CCTL.E.IVALL", "CCTL.IVALL", "LDG.E.64 R4, desc[UR4][R6.64]",
                  "@P0 STG.E desc[UR4][R2.64], R5", "ATOMG.E.ADD.STRONG.GPU PT, R3, desc[UR4][R2.64], R7", "LD.E R4, [R2.64]",
                  "LDGSTS.E.BYPASS.128 [R9], desc[UR4][R2.64]",
                  "RED.E.ADD.STRONG.GPU desc[UR4][R2.64], R7"):
        code = (head + f"\n        /*0038*/                   {early} ;"
                "\n        /*0040*/                   ACQBULK ;" + tail)
        assert grid_wait(code)["wait"] == "late", early


TTGIR = """
#mma = #ttg.nvidia_mma<{versionMajor = 2, versionMinor = 0, warpsPerCTA = [1, 4], instrShape = [16, 8]}>
#mma1 = #ttg.nvidia_mma<{versionMajor = 2, versionMinor = 0, warpsPerCTA = [4, 1, 1], instrShape = [1, 16, 8]}>
#mma2 = #ttg.nvidia_mma<{versionMajor = 3, versionMinor = 0, warpsPerCTA = [8, 1], instrShape = [16, 16, 16]}>
#mma3 = #ttg.nvidia_mma<{versionMajor = 3, versionMinor = 0, warpsPerCTA = [4, 2], instrShape = [16, 256, 16]}>
      %a = tt.dot %q, %k, %c : tensor<16x512xbf16, #ttg.dot_op<{opIdx = 0, parent = #mma, kWidth = 4}>> * tensor<512x16xbf16, #ttg.dot_op<{opIdx = 1, parent = #mma, kWidth = 4}>> -> tensor<16x16xf32, #mma> loc(#loc1)
      %b = tt.dot %p, %v, %acc : tensor<16x16xbf16, #ttg.dot_op<{opIdx = 0, parent = #mma, kWidth = 4}>> * tensor<16x512xbf16, #ttg.dot_op<{opIdx = 1, parent = #mma, kWidth = 4}>> -> tensor<16x512xf32, #mma> loc(#loc2)
      %b2 = tt.dot %p, %v, %acc : tensor<16x16xbf16, #ttg.dot_op<{opIdx = 0, parent = #mma, kWidth = 4}>> * tensor<16x512xbf16, #ttg.dot_op<{opIdx = 1, parent = #mma, kWidth = 4}>> -> tensor<16x512xf32, #mma> loc(#loc3)
      %c = tt.dot %q3, %k3, %c3 : tensor<4x16x128xbf16, #ttg.dot_op<{opIdx = 0, parent = #mma1, kWidth = 4}>> * tensor<4x128x16xbf16, #ttg.dot_op<{opIdx = 1, parent = #mma1, kWidth = 4}>> -> tensor<4x16x16xf32, #mma1> loc(#loc4)
      %d = ttng.warp_group_dot %q4, %k4, %c4 {inputPrecision = 0 : i32, isAsync = true} : !ttg.memdesc<64x512xbf16, #shared, #smem> * !ttg.memdesc<512x32xbf16, #shared2, #smem, mutable> -> tensor<64x32xf32, #mma2> loc(#loc5)
      %e = ttng.warp_group_dot %p4, %v4, %acc4 {inputPrecision = 0 : i32, isAsync = true} : tensor<64x32xbf16, #ttg.dot_op<{opIdx = 0, parent = #mma3, kWidth = 2}>> * !ttg.memdesc<32x512xbf16, #shared, #smem, mutable> -> tensor<64x512xf32, #mma3> loc(#loc6)
"""


def test_dot_layouts_say_which_warps_compute_the_same_tiles():
    """The 16 × 16 scores over 4 warps along N (8 columns a warp): twice; the same as a dot
    batched over 4 slices, a slice a warp: once; a 64-row warp-group tile over 8 warps along M:
    twice; the PV products: once. A dot in two loops is one entry."""
    from model.kernels.cross_compile import dot_layouts

    assert dot_layouts(TTGIR) == [
        {"shape": [16, 16], "warps": [1, 4], "mma": 2, "replicated": 2},
        {"shape": [16, 512], "warps": [1, 4], "mma": 2, "replicated": 1},
        {"shape": [4, 16, 16], "warps": [4, 1, 1], "mma": 2, "replicated": 1},
        {"shape": [64, 32], "warps": [8, 1], "mma": 3, "replicated": 2},
        {"shape": [64, 512], "warps": [4, 2], "mma": 3, "replicated": 1},
    ]
    assert dot_layouts("") == []
