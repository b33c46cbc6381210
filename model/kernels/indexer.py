"""Lightning indexer top-k (fact sheet §2.5): score(t, j) = Σ_h w[t, h] · ReLU(q[t, h] · key[j]) over
the compressed keys j < visible[t] (causal block visibility), keep the k best, −1 where fewer exist.

Two Triton paths behind one entry, ``indexer_topk_triton``; "scores" is the default for every
query count, "merge" is kept (``path="merge"``) until a GPU run of `v4coder bench kernels`
compares the two at decode (rows indexer_topk_decode and indexer_topk_decode_merge) — the loser
goes.

Merge: one program per (query, key chunk) streams key tiles, computes the tile's scores with one
dot over all heads, and merges them into a running top-k held in registers as packed int64
(order-preserving score bits << 32 | row), so the score matrix never exists. The keys are split
over programs; a second kernel merges the per-chunk top-k (one program per query: 0.52 ms of
the 0.79 ms decode call on the H200, 2026-11-28). Each query reads every key itself and sorts
2·K_PAD entries per tile.

Scores (``_indexer_scores_block`` + ``topk_select``): one program per (BLOCK_T queries, key chunk,
batch) holds the queries of all H heads as the BLOCK_T·H = 128-column N side of tl.dot, and each
key tile it loads is the dot's M side, used by all of them: a thread then holds one key's dots
for many heads, so the weighted head sum is its own adds and two shuffles (with the heads on the
M side it took 104 shuffles and a trip through shared memory a tile; session 22). Per tile of
BLOCK_N keys it reads BLOCK_N·D·2 bytes (bf16) and does 2·BLOCK_T·H·D·BLOCK_N FLOPs on tensor
cores, 128 FLOPs per key byte (L2-resident keys).
ReLU, the head weights and the head sum stay in registers; the program writes one fp32 score per
(query, key) to a scratch of a block of queries × visible keys (≤ ``PREFILL_SCRATCH_BYTES``, never
the whole [s × n] matrix), 4 bytes per query·key against 2·H·D = 16K FLOPs of dot, and skips the
key tiles past the block's last visible row (they are stored as −inf, never computed). The pick
(``topk_select.select_row``, an exact radix select) then reads each query's row from L2, in
the same launch: the last of a query block's chunk programs to finish (an arrival count per
block, ``launch.arrivals``) picks for its queries, so scores and pick are one kernel. Where the
keys are split over at least ``COUNTED_MIN_CHUNKS`` programs (decode), each also counts its
scores' top key digits into the query's histogram, so the pick reads the row once, not five
times (``topk_select``'s module docstring). ``select="triton"`` keeps ``topk_select`` as a
kernel of its own, a program per query, until a GPU run compares them. Estimate for a
2048-query chunk at 8K keys, H = 64, D = 128: 275 GFLOP of dot, 64 MiB of scores written and
read, 2 MiB of keys: bound by the tensor cores, not by the per-tile sort of the merge path (not
measured yet: `v4coder bench kernels` has a row for each path). At decode (1 query, 32K keys
at 128K context) the same kernel spreads the keys over ≈ 256 programs of one tile each and
writes 128 KB of scores, which the last of them picks from (starting from the digits they
counted); the scratch width is the key count, so the host never reads ``visible`` (no sync).

Keys come as float rows [b, n, D] or, in native numerics, as packed FP4 rows uint8 [b, n,
IndexKeyLayout(D).row_bytes] (68 B at D = 128; model/kernels/fp4_keys.py): both paths then load
the key bytes (D/2 + D/32 per key instead of 2·D) and decode nibble × 2^scale in registers
(``fp4_keys.load_key_tile``), so the dot sees exactly the values the float rows would hold.
The torch reference is in model/kernels/indexer_reference.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from model.kernels import topk_select
from model.kernels.blocks import REFERENCE_BLOCK_ELEMENTS
from model.kernels.fp4_keys import (
    INDEX_KEY_BLOCK,
    KEYS_UPCONVERT_MAX_BYTES,
    IndexKeyLayout,
    key_pairs,
    key_rows_aligned,
    load_key_pairs,
    load_key_tile,
    upconvert_index_keys,
)
from model.kernels.fp4_pairs import FP4_MMA_ACT_SHIFT, to_mma_order
from model.kernels.indexer_reference import (  # noqa: F401  (re-exported: the contract)
    indexer_scores_reference,
    indexer_topk_reference,
)
from model.kernels.launch import arrivals, grid_entry, interpreter_fp32, last_to_arrive, pdl
from model.kernels.topk_select import pack


@triton.jit
def _merge(top, tile, K_PAD: tl.constexpr, BLOCK_N: tl.constexpr):
    """Best K_PAD of top [K_PAD] ∪ tile [BLOCK_N] (both packed), sorted descending."""
    if K_PAD == BLOCK_N:
        wide = tile
    else:
        neg = pack(tl.full([K_PAD // BLOCK_N, BLOCK_N], float("-inf"), tl.float32),
                    tl.full([K_PAD // BLOCK_N, BLOCK_N], -1, tl.int32))
        rows = tl.arange(0, K_PAD // BLOCK_N)
        wide = tl.reshape(tl.where(rows[:, None] == 0, tile[None, :], neg), (K_PAD,))
    both = tl.sort(tl.reshape(tl.join(top, wide), (2 * K_PAD,)), descending=True)
    first, _ = tl.split(tl.permute(tl.reshape(both, (2, K_PAD)), (1, 0)))
    return first


@triton.jit
def _indexer_partial(q_ptr, w_ptr, k_ptr, vis_ptr, out_ptr, S, N, H, D, chunk,
                     BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                     K_PAD: tl.constexpr, PREC: tl.constexpr, PACKED: tl.constexpr,
                     KEY_BLOCK: tl.constexpr, KEY_ALIGNED: tl.constexpr = False,
                     PDL: tl.constexpr = False):
    grid_entry(PDL)
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    batch = pid_t // S
    visible = tl.load(vis_ptr + pid_t % S)
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask_h = offs_h < H
    mask_d = offs_d < D
    q_rows = pid_t.to(tl.int64) * H + offs_h
    q = tl.load(q_ptr + q_rows[:, None] * D + offs_d[None, :],
                mask=mask_h[:, None] & mask_d[None, :], other=0.0)
    w = tl.load(w_ptr + q_rows, mask=mask_h, other=0.0).to(tl.float32)
    top = pack(tl.full([K_PAD], float("-inf"), tl.float32), tl.full([K_PAD], -1, tl.int32))
    start = pid_c * chunk
    end = tl.minimum(tl.minimum(start + chunk, visible), N)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < end
        rows = batch.to(tl.int64) * N + offs_n
        keys = load_key_tile(k_ptr, rows, mask_n, offs_d, D, PACKED, KEY_BLOCK,
                             KEY_ALIGNED).to(q.dtype)
        dots = tl.dot(q, tl.trans(keys), input_precision=PREC)        # [BLOCK_H, BLOCK_N]
        scores = tl.sum(tl.maximum(dots, 0.0) * w[:, None], 0)
        scores = tl.where(mask_n, scores, float("-inf"))
        tile = pack(scores, tl.where(mask_n, offs_n, -1))
        if tl.max(tile, 0) > tl.min(top, 0):
            top = _merge(top, tile, K_PAD, BLOCK_N)
    offs_k = tl.arange(0, K_PAD)
    tl.store(out_ptr + (pid_t * tl.num_programs(1) + pid_c).to(tl.int64) * K_PAD + offs_k, top)


@triton.jit
def _indexer_finish(part_ptr, out_ptr, n_chunks, k, K_PAD: tl.constexpr, PDL: tl.constexpr = False):
    """Merge the per-chunk candidates of one query and write its k rows (−1 for −inf)."""
    grid_entry(PDL)
    pid_t = tl.program_id(0)
    offs_k = tl.arange(0, K_PAD)
    top = pack(tl.full([K_PAD], float("-inf"), tl.float32), tl.full([K_PAD], -1, tl.int32))
    for c in range(0, n_chunks):
        tile = tl.load(part_ptr + (pid_t * n_chunks + c).to(tl.int64) * K_PAD + offs_k)
        top = _merge(top, tile, K_PAD, K_PAD)
    neg = pack(tl.full([K_PAD], float("-inf"), tl.float32), tl.full([K_PAD], -1, tl.int32))
    idx = tl.where((top >> 32) == (neg >> 32), -1, (top & 0xFFFFFFFF).to(tl.int32))
    tl.store(out_ptr + pid_t.to(tl.int64) * k + offs_k, idx, mask=offs_k < k)


# bound of the fp32 score scratch of one block of queries: the references' block bound, which
# the memory planner counts (model/memory.py SCRATCH_ELEMENTS)
PREFILL_SCRATCH_BYTES = 4 * REFERENCE_BLOCK_ELEMENTS
PREFILL_DOT_COLUMNS = 128       # BLOCK_T·BLOCK_H (query, head) columns of the score dot
PREFILL_TARGET_PROGRAMS = 1024  # split the keys further while the grid has fewer programs
COUNTED_MIN_CHUNKS = 8          # keys split at least this far: the score programs count digits
# A prefill's programs (its queries' keys in fewer than COUNTED_MIN_CHUNKS chunks) count their
# rows' top digits themselves, one pass, from this many keys on: the pick then reads the row
# twice, not five times, for a histogram of 16 KB and a candidate scratch of a quarter of the
# row's keys (int64) a query, which the query block's bound (PREFILL_SCRATCH_BYTES) includes
PREFILL_COUNTED_KEYS = 4096
PREFILL_COUNT_BLOCK = 256      # keys of each of its rows a prefill program counts a step
# The score programs' pipeline: 2 key tiles in flight, not Triton's default 3, so that two
# programs share an SM (sm_90, triton 3.6, bf16 keys: 99 KB of shared memory, was 132 KB) —
# a decode step's 256 programs fill the SMs once instead of twice, and at prefill one
# program's pick runs beside another's dots. A decode program has one tile: nothing to pipeline.
SCORE_STAGES = 2
# ... and at most 128 registers a thread (ptxas's ``maxnreg``), so that two 8-warp programs fit
# an SM's 65,536 whatever the pick around the loop asks: left to itself, ptxas gave the bf16
# prefill kernel 165 (its loop at 427 instructions with the cap, 379 without; no spills) and
# the FP4 decode 134. FP4 keys at prefill (keys in fewer than COUNTED_MIN_CHUNKS programs)
# are left uncapped: there 128 spills 96–104 bytes (164 and 195 registers uncapped).
SCORE_REGISTERS = 128


@triton.jit
def _indexer_scores_block(q_ptr, w_ptr, k_ptr, vis_ptr, out_ptr, tab_ptr, pick_ptr, cnt_ptr,
                          hist_ptr, cand_ptr, cap, lo, hi, S, N, H, D, width, chunk, k,
                          pick_batch, pick_row,
                          BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
                          BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr,
                          PACKED: tl.constexpr, KEY_BLOCK: tl.constexpr,
                          TABLE: tl.constexpr = False, PICK: tl.constexpr = False,
                          KEY_ALIGNED: tl.constexpr = False,
                          CAUSAL: tl.constexpr = True, K_PAD: tl.constexpr = 16,
                          SELECT_BLOCK: tl.constexpr = 1024, COUNTED: tl.constexpr = False,
                          COUNT_BLOCK: tl.constexpr = 128,
                          PAIRS: tl.constexpr = False, PAIRS_BF16: tl.constexpr = False,
                          PDL: tl.constexpr = False):
    """Scores of queries [lo + pid·BLOCK_T, +BLOCK_T) ∩ [lo, hi) against keys of one chunk, into
    out [b, hi − lo, width] fp32 (−inf at j ≥ visible[t]); the dot's columns are (query, head)
    pairs, its rows keys.
    TABLE (BLOCK_T = 1, b = 1: a decode step of several sequences, query t = sequence t): the
    query's own keys, at the address tab_ptr[t] (int64).
    PICK: the last of a query block's chunk programs to finish (an arrival count per block at
    cnt_ptr, zero before and after the launch) picks each of its queries' k best from the
    scores row (``topk_select.select_row``; up to visible[t] when CAUSAL) into picks
    [b, hi − lo, k] (strides pick_batch, pick_row): scores and pick in one launch.
    COUNTED (PICK, the keys split over several programs — a decode step — or a prefill's long
    rows): each program also counts its scores' top key digits, COUNT_BLOCK keys a step, into
    its queries' histograms (hist_ptr, HIST_BINS int32 a query, zero before and after the
    launch), so the pick starts from them and keeps the keys sharing the k-th's top digit in
    cand_ptr (``cap`` int64 a query). The pick here counts only the digits within
    ``topk_select.COUNT_WINDOW`` of each tile's top (no atomic a far key: every negative
    score); the parallel pick's launches (PICK off) are given every digit.
    PAIRS (packed keys that ``fp4_keys.key_pairs`` allows): the keys decoded two codes a register
    (``fp4_keys.load_key_pairs``; bf16 tiles when PAIRS_BF16), the queries taken to their column
    order once."""
    grid_entry(PDL)
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    first = lo + pid_t * BLOCK_T
    if TABLE:
        address = tl.load(tab_ptr + first)
        if KEY_ALIGNED:   # as a byte offset from k_ptr (a cast pointer carries no alignment)
            k_ptr = k_ptr + tl.multiple_of(address - k_ptr.to(tl.int64), 4)
        else:
            k_ptr = address.to(tl.pointer_type(k_ptr.dtype.element_ty))
    offs_t = first + tl.arange(0, BLOCK_T)
    mask_t = offs_t < hi
    vis = tl.load(vis_ptr + offs_t, mask=mask_t, other=0)
    offs_r = tl.arange(0, BLOCK_T * BLOCK_H)
    row_t = first + offs_r // BLOCK_H
    row_h = offs_r % BLOCK_H
    mask_r = (row_t < hi) & (row_h < H)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    q_rows = (batch * S + row_t) * H + row_h
    q = tl.load(q_ptr + q_rows[:, None] * D + offs_d[None, :],
                mask=mask_r[:, None] & mask_d[None, :], other=0.0)
    w = tl.load(w_ptr + q_rows, mask=mask_r, other=0.0).to(tl.float32)
    if PAIRS:   # exact: a permutation of the dims and a power of two
        q = (to_mma_order(q.to(tl.float32)) * FP4_MMA_ACT_SHIFT).to(q_ptr.dtype.element_ty)
    out_rows = (batch * (hi - lo) + offs_t - lo) * width
    hist_rows = hist_ptr + (batch * (hi - lo) + offs_t - lo) * topk_select.HIST_BINS
    start = pid_c * chunk
    stop = tl.minimum(start + chunk, width)
    seen = tl.minimum(stop, tl.maximum(tl.max(vis, 0), start))  # keys past it: seen by no query
    for n0 in range(start, seen, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        if PAIRS:
            keys = load_key_pairs(k_ptr, batch * N + offs_n, offs_n < seen, D, BLOCK_D,
                                  PAIRS_BF16)
        else:
            keys = load_key_tile(k_ptr, batch * N + offs_n, offs_n < seen, offs_d, D, PACKED,
                                 KEY_BLOCK, KEY_ALIGNED).to(q.dtype)
        # keys on the M side, the (query, head) pairs on N: a thread holds a key's scores for
        # many heads, so the head sum is mostly its own adds (then its quad's), not shuffles
        # across the warp's lanes and shared memory across its warps
        dots = tl.dot(keys, tl.trans(q), input_precision=PREC)      # [BLOCK_N, BLOCK_T·BLOCK_H]
        weighted = tl.maximum(dots, 0.0) * w[None, :]
        scores = tl.sum(tl.reshape(weighted, (BLOCK_N, BLOCK_T, BLOCK_H)), 2)  # [N, BLOCK_T]
        scores = tl.where(offs_n[:, None] < vis[None, :], scores, float("-inf"))
        tl.store(out_ptr + out_rows[None, :] + offs_n[:, None], scores,
                 mask=mask_t[None, :] & (offs_n < stop)[:, None])
    invisible = tl.full([BLOCK_T, BLOCK_N], float("-inf"), tl.float32)
    for n0 in range(start + tl.cdiv(seen - start, BLOCK_N) * BLOCK_N, stop, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        tl.store(out_ptr + out_rows[:, None] + offs_n[None, :], invisible,
                 mask=mask_t[:, None] & (offs_n < stop)[None, :])
    if COUNTED:   # from the stored scores: counting in the loop above costs its registers
        tl.debug_barrier()
        limits = tl.where(mask_t, stop, 0)
        if CAUSAL:   # the pick's keys: up to each query's visible count
            limits = tl.minimum(limits, vis)
        for n0 in range(start, tl.max(limits, 0), COUNT_BLOCK):
            topk_select.count_top_digits(out_ptr + out_rows, n0, limits, hist_rows,
                                         COUNT_BLOCK, FAR=not PICK)
    if PICK:
        # the block's last chunk to arrive sees every chunk's scores
        if last_to_arrive(cnt_ptr + batch * tl.num_programs(0) + pid_t, tl.num_programs(1)):
            for r in tl.static_range(0, BLOCK_T):   # unrolled: in a loop, the counted pick
                t = first + r                        # held 179 registers at BLOCK_T = 2, 123 so
                if t < hi:
                    limit = topk_select.row_limit(vis_ptr, t, width, CAUSAL)
                    query = batch * (hi - lo) + t - lo
                    dest = pick_ptr + batch * pick_batch + (t - lo).to(tl.int64) * pick_row
                    topk_select.select_row(out_ptr + query * width, dest, limit, k,
                                           hist_ptr + query * topk_select.HIST_BINS,
                                           cand_ptr + query * cap, cap, SELECT_BLOCK, K_PAD,
                                           COUNTED, WINDOWED=True)


def default_chunks(tokens: int, n: int, block_n: int) -> int:
    if tokens >= 128:
        return 1
    return max(1, min(triton.cdiv(n, 8 * block_n), triton.cdiv(256, tokens)))


def _kernel_inputs(q: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor,
                   visible: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Contiguous q and keys in the compute dtype (fp32 under the interpreter, which mishandles
    bf16; packed FP4 keys stay packed), fp32 weights, visible as int32 or int64 on q's device,
    and the tl.dot precision."""
    if interpreter_fp32() or q.dtype not in (torch.bfloat16, torch.float16):
        q = q.float()
    q = q.contiguous()
    if keys.dtype == torch.uint8:
        row_bytes = IndexKeyLayout(q.shape[-1], INDEX_KEY_BLOCK).row_bytes
        assert keys.shape[-1] == row_bytes, (keys.shape, row_bytes)
        keys = keys.contiguous()
    else:
        keys = keys.to(q.dtype).contiguous()
    weights = weights.float().contiguous()
    vis = visible
    if vis.dtype not in (torch.int32, torch.int64) or vis.device != q.device:
        vis = vis.to(device=q.device, dtype=torch.int32)
    vis = vis.contiguous()
    return q, weights, keys, vis, "ieee" if q.dtype == torch.float32 else "tf32"


def _topk_merge(q, weights, keys, vis, k, prec, n_chunks, block_n) -> torch.Tensor:
    """Per-query streaming top-k (``_indexer_partial`` + ``_indexer_finish``) → int32 [b, s, k]."""
    b, s, h, d = q.shape
    n = keys.shape[1]
    out = torch.full((b, s, k), -1, dtype=torch.int32, device=q.device)
    k_pad = max(16, triton.next_power_of_2(k))
    block_n = max(16, min(block_n, k_pad))
    chunks = n_chunks or default_chunks(b * s, n, block_n)
    chunk = triton.cdiv(triton.cdiv(n, chunks), block_n) * block_n
    chunks = triton.cdiv(n, chunk)
    part = torch.empty(b * s, chunks, k_pad, dtype=torch.int64, device=q.device)
    overlap = pdl(q.device)   # both launches' options (launch.pdl)
    _indexer_partial[(b * s, chunks)](
        q, weights, keys, vis, part, s, n, h, d, chunk,
        BLOCK_H=max(16, triton.next_power_of_2(h)), BLOCK_D=max(16, triton.next_power_of_2(d)),
        BLOCK_N=block_n, K_PAD=k_pad, PREC=prec, PACKED=keys.dtype == torch.uint8,
        KEY_BLOCK=INDEX_KEY_BLOCK, KEY_ALIGNED=key_rows_aligned(keys), **overlap)
    _indexer_finish[(b * s,)](part, out, chunks, k, K_PAD=k_pad, **overlap)
    return out


def _prefill_block_t(h: int, block_t: int | None, queries: int) -> int:
    """Queries per score program: a power of two with BLOCK_T·BLOCK_H ≥ 16 (tl.dot's minimum),
    by default PREFILL_DOT_COLUMNS dot columns but no more queries than there are (a decode step's
    one query: its H heads alone, no masked columns in the dot)."""
    block_h = triton.next_power_of_2(h)
    want = block_t or max(1, min(PREFILL_DOT_COLUMNS // block_h, triton.next_power_of_2(queries)))
    return max(triton.next_power_of_2(want), triton.cdiv(16, block_h))


def _candidates(width: int, split: bool) -> int:
    """The candidate scratch of a counted pick (int64 a query): ``topk_select.CANDIDATES`` for
    a row split over programs (a decode step's one query), a quarter of the row at prefill."""
    return min(topk_select.CANDIDATES, width if split else max(1, width // 4))


def _pick_bytes(n: int, select: str) -> int:
    """What a prefill query's counted pick holds beside its n scores (``_launch_scores``): the
    histogram and the candidates, where it counts."""
    if select not in ("fused", "parallel") or n < PREFILL_COUNTED_KEYS:
        return 0
    return 4 * topk_select.HIST_BINS.value + 8 * _candidates(n, False)


def _prefill_query_rows(b: int, s: int, n: int, block_t: int, pick_bytes: int = 0) -> int:
    """Queries per host block so that the scratch [b, rows, n] fp32 (and ``pick_bytes`` a
    query: ``_pick_bytes``) fits the bound."""
    rows = PREFILL_SCRATCH_BYTES // (b * (4 * max(1, n) + pick_bytes))
    return min(s, max(block_t, rows // block_t * block_t))


def _launch_scores(q, weights, keys, vis, scores, lo, hi, prec, block_t, block_n,
                   table=None, picks=None, k=0, causal=True, keys_aligned=None,
                   counted=True, parallel=False, pairs=False) -> None:
    """Fill scores [b, hi − lo, width] for queries [lo, hi) (``_indexer_scores_block``);
    ``table``: each query's own keys (TABLE mode: ``keys`` only gives their format; then
    ``keys_aligned`` says whether every query's packed keys are, as ``key_rows_aligned``);
    ``picks`` (int64 [b, hi − lo, k], unit stride along k): each query's k best go there from
    the same launch (PICK; up to its visible count when ``causal``), from digit counts the
    score programs make where the keys are split over at least COUNTED_MIN_CHUNKS programs or
    the rows are at least PREFILL_COUNTED_KEYS long (COUNTED), unless ``counted`` is False
    (four passes over each row, "fused_passes").
    ``parallel`` (with ``picks``, "parallel"): where the score programs count, the pick is
    ``topk_select.pick_counted``'s two launches of many programs a query instead of one program;
    elsewhere (short rows) the scores launch picks by passes.
    ``pairs``: packed keys decoded two codes a register where ``fp4_keys.key_pairs`` allows
    (PAIRS; a launch choice until a GPU run times it)."""
    b, s, h, d = q.shape
    width = scores.shape[-1]
    query_programs = triton.cdiv(hi - lo, block_t)
    chunks = max(1, min(triton.cdiv(width, block_n),
                        triton.cdiv(PREFILL_TARGET_PROGRAMS, b * query_programs)))
    chunk = triton.cdiv(triton.cdiv(width, chunks), block_n) * block_n
    block_h = max(triton.next_power_of_2(h), triton.cdiv(16, block_t))
    chunks = triton.cdiv(width, chunk)
    split = chunks >= COUNTED_MIN_CHUNKS   # a decode step's keys, over many programs
    pick = dict(PICK=False)
    pick_args = (scores, vis, vis, vis, 0, 0, 0, 0)
    if picks is not None:
        assert picks.dtype == torch.int64 and picks.stride(-1) == 1 and picks.shape == (
            b, hi - lo, k), (picks.dtype, picks.shape)
        counted = counted and (split or width >= PREFILL_COUNTED_KEYS)
        queries = b * (hi - lo)
        if parallel and counted:   # this launch counts; two launches of their own pick
            zeros = arrivals(queries * (1 + topk_select.HIST_BINS.value), q.device)
            arrive, hist = zeros[:queries], zeros[queries:]
            pick_args = (scores, vis, hist, vis, 0, k, 0, 0)
            pick = dict(COUNTED=True, CAUSAL=causal)
        else:
            zeros = arrivals(b * query_programs + (queries * topk_select.HIST_BINS.value
                                                   if counted else 0), q.device)
            cap = _candidates(width, split) if counted else 0
            cand = torch.empty(queries * cap if counted else 1, dtype=torch.int64,
                               device=q.device)
            pick_args = (picks, zeros[:b * query_programs], zeros[b * query_programs:], cand,
                         cap, k, picks.stride(0), picks.stride(1))
            pick = dict(PICK=True, CAUSAL=causal, K_PAD=max(16, triton.next_power_of_2(k)),
                        SELECT_BLOCK=topk_select.SELECT_BLOCK, COUNTED=counted,
                        COUNT_BLOCK=block_n if split else PREFILL_COUNT_BLOCK)
    pick_ptr, counts, hist, cand, cap, k, pick_batch, pick_row = pick_args
    block_d = max(16, triton.next_power_of_2(d))
    aligned = key_rows_aligned(keys) if table is None else bool(keys_aligned)
    pairs = (pairs and keys.dtype == torch.uint8 and q.dtype in (torch.bfloat16, torch.float32)
             and key_pairs(d, block_d, INDEX_KEY_BLOCK, aligned))
    _indexer_scores_block[(query_programs, chunks, b)](
        q, weights, keys, vis, scores, vis if table is None else table, pick_ptr, counts, hist,
        cand, cap, lo, hi, s, keys.shape[1], h, d, width, chunk, k, pick_batch, pick_row,
        BLOCK_T=block_t,
        BLOCK_H=block_h, BLOCK_D=block_d, BLOCK_N=block_n,
        PREC=prec, PACKED=keys.dtype == torch.uint8, KEY_BLOCK=INDEX_KEY_BLOCK,
        KEY_ALIGNED=aligned, TABLE=table is not None, **pick,
        PAIRS=pairs, PAIRS_BF16=pairs and q.dtype == torch.bfloat16,
        num_warps=8 if block_t * block_h * block_n >= 1 << 14 or table is not None
        or picks is not None else 4, num_stages=SCORE_STAGES,
        **({} if keys.dtype == torch.uint8 and not split else {"maxnreg": SCORE_REGISTERS}),
        **pdl(q.device))
    if picks is not None and not pick.get("PICK"):
        topk_select.pick_counted(scores, hist, arrive, k, vis[lo:hi] if causal else None, picks)


def _topk_scores(q, weights, keys, vis, k, prec, block_t, block_n, causal=True,
                 select="fused", pairs=False) -> torch.Tensor:
    """Block scores (Triton) and each query's pick from them, a block of queries at a time →
    int64 [b, s, k]. The pick: in the scores launch ("fused", the last program of each query
    block picks, from the digits its score programs counted where the keys are split;
    "fused_passes", by four passes over the row however split), ``topk_select`` as a kernel of
    its own ("triton"), or torch.topk and a mask ("torch"). The scratch is as wide as the keys
    (the kernel writes −inf past each block's visible rows without computing them), so nothing
    here waits for the device.
    ``causal=False``: every query sees every key, so no pick is an invisible one to mask."""
    b, s, h, _ = q.shape
    n = keys.shape[1]
    block_t = _prefill_block_t(h, block_t, s)
    block_n = max(16, triton.next_power_of_2(block_n))
    rows = _prefill_query_rows(b, s, n, block_t, _pick_bytes(n, select))
    scratch = torch.empty(b * rows * n, dtype=torch.float32, device=q.device)
    out = torch.empty((b, s, k), dtype=torch.long, device=q.device)
    for lo in range(0, s, rows):
        hi = min(s, lo + rows)
        scores = scratch[: b * (hi - lo) * n].view(b, hi - lo, n)
        scores_and_picks(q, weights, keys, vis, scores, lo, hi, prec, block_t, block_n, out, k,
                         select, causal, pairs=pairs)
    return out


def scores_and_picks(q, weights, keys, vis, scores, lo, hi, prec, block_t, block_n, out, k,
                     select, causal=True, pairs=False, **table) -> None:
    """Scores of queries [lo, hi) into ``scores`` and their k best into out[:, lo:hi], as
    ``select`` says (``_topk_scores``): in the scores launch (FUSED), or after it by
    ``topk_select`` or torch.topk. ``table``: TABLE mode's ``_launch_scores`` arguments (the
    batched decode path, model/kernels/sequence_rows.py); ``pairs``: ``_launch_scores``'."""
    if select in FUSED or select == "parallel":
        _launch_scores(q, weights, keys, vis, scores, lo, hi, prec, block_t, block_n,
                       picks=out[:, lo:hi], k=k, causal=causal, counted=select != "fused_passes",
                       parallel=select == "parallel", pairs=pairs, **table)
        return
    _launch_scores(q, weights, keys, vis, scores, lo, hi, prec, block_t, block_n, pairs=pairs,
                   **table)
    pick = topk_select.topk_select_triton if select == "triton" else \
        topk_select.topk_select_reference
    pick(scores, k, vis[lo:hi] if causal else None, out[:, lo:hi])


SELECTS = ("fused", "fused_passes", "parallel", "triton", "torch")
FUSED = ("fused", "fused_passes")   # the scores kernel picks: from counted digits, or passes


def check_select(select: str) -> None:
    """The one check of a ``select`` launch choice (single and batched paths)."""
    if select not in SELECTS:
        raise ValueError(f"indexer select must be one of {', '.join(SELECTS)}, not {select!r}")


def indexer_topk_triton(q: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor,
                        visible: torch.Tensor, k: int, n_chunks: int | None = None,
                        block_n: int | None = None, path: str = "scores",
                        block_t: int | None = None, causal: bool = True,
                        select: str = "fused", pairs: bool = False,
                        upconvert: bool = False) -> torch.Tensor:
    """Same contract as ``indexer_topk_reference`` (keys float or packed: dispatch on
    keys.dtype == torch.uint8). ``path``: "scores" (the default) or "merge" (see the module
    docstring). ``n_chunks`` applies to the merge path, ``block_t`` to the scores path;
    ``block_n`` to both (64 merge, 128 scores when None). ``causal=False`` says every query
    sees every key (``visible`` = n: a decode step's query sees every closed block), which
    spares the scores path masking its picks. ``select`` (scores path): "fused" (the default:
    the scores kernel picks, from counted top digits at decode), "fused_passes" (it picks by
    four passes over the row), "triton" (``topk_select``, one kernel of its own) or "torch"
    (torch.topk, about fifteen kernels a long row on a GPU), until a GPU run of `v4coder bench
    kernels` compares them (rows indexer_topk_decode, indexer_topk_decode_passes,
    indexer_topk_decode_select_kernel and indexer_topk_decode_torch_select). ``pairs`` (scores
    path, packed keys): decode them two codes a register (``fp4_keys.load_key_pairs``; row
    indexer_topk_decode_fp4_pairs). ``upconvert`` (packed keys, a prefill): the keys
    up-converted once (``fp4_keys.upconvert_index_keys``, while they take at most
    ``KEYS_UPCONVERT_MAX_BYTES``) and read as the compute dtype's, where every query block's
    programs would decode every key they score."""
    b, s, h, d = q.shape
    n = keys.shape[1]
    if k == 0 or n == 0 or b * s == 0:
        return torch.full((b, s, k), -1, dtype=torch.long, device=q.device)
    if path not in ("scores", "merge"):
        raise ValueError(f"indexer path must be scores or merge, not {path!r}")
    check_select(select)
    q, weights, keys, vis, prec = _kernel_inputs(q, weights, keys, visible)
    if (upconvert and keys.dtype == torch.uint8
            and keys.shape[0] * n * d * q.element_size() <= KEYS_UPCONVERT_MAX_BYTES):
        keys = upconvert_index_keys(keys, IndexKeyLayout(d, INDEX_KEY_BLOCK), q.dtype)
    if path == "scores":
        return _topk_scores(q, weights, keys, vis, k, prec, block_t, block_n or 128, causal,
                            select, pairs)
    return _topk_merge(q, weights, keys, vis, k, prec, n_chunks, block_n or 64).long()
