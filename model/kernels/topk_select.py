"""The k best of each row of fp32 scores, best first, −1 past the row's visible entries: the
indexer's pick from its score scratch (model/kernels/indexer.py, the scores path).

``topk_select_reference`` is torch.topk plus the mask. On a GPU torch.topk of one long row (a
decode step's 32K keys at 128K context) is a multi-block radix select: a histogram kernel and
a digit scan per 8-bit digit, counting kernels, cub scans, the gather and a sort of the k picks
— about fifteen kernels, each launched by the host on the cache side of every CSA layer.
``topk_select_triton`` is one kernel, one program per row, exact:

1. Each score's float bits become an unsigned key of the same order (``ordered``).
2. Four passes of an 8-bit histogram (``tl.histogram``) over the keys that still match the
   digits found so far pin the k-th largest key T and how many keys equal to T the pick keeps
   (the lowest rows first).
3. A fifth pass writes every key above T, and those ties, packed (score, row) into the output
   row itself; the program reads the k back, sorts them best first (``tl.sort`` over the next
   power of two) and overwrites them with their rows.

A row reads its scores five times (from L2: 128 KB at 32K keys), and writes k int64 twice.
Every pass over a row or the candidates (``_digit``, ``_take``, ``_split``) issues the next
tile's load before it works on this one's, so a tile's trip to L2 overlaps the tile before.

Counted (``select_row(COUNTED=True)``: the indexer's scores kernel at decode, where a query's
keys are split over many programs and the last to finish picks alone, and at prefill for long
rows, where each program counts and picks its own). The programs that
write the scores also count their top 12 key bits (sign, exponent, 3 mantissa bits: bins an
eighth of an octave wide) into the row's histogram of 4,096 int32 (``count_top_digits``, one
atomic per distinct digit of a tile). The picking program reads the counts (16 KB) instead of
a pass, and one pass over the row splits it: the keys above the k-th's top digit (all picked)
go straight to the output, the ones sharing it (the candidates, in row order) to a scratch of
``CANDIDATES``; the other 20 bits (digits of 8, 8, 4) are found among the candidates alone.
So the picking program reads the row once (128 KB at 32K keys, was five times) plus a few KB
of candidates. When more keys share the top digit than the scratch holds (scores bunched
within an eighth of an octave around the k-th), the pick takes the four passes over the row,
still exact. Windowed (``select_row(WINDOWED=True)``, the fused pick): a tile
counts only the digits within COUNT_WINDOW (32 octaves) of its own top — no atomic for each
negative or zero score below a positive top, often half a row — so the counts are whole only
within that window of the row's highest digit; a k-th farther down (fewer than k scores
within 32 octaves of the best) takes the four passes.

Why 8-bit digits, not fewer wider ones (read from the PTX that ``bench compile`` builds, not
timed). Triton 3.6, the H200 machine's version, lowers ``tl.histogram`` to a warp-level ballot
histogram: per warp-wide slot of keys it votes each bit of the digit, then each lane ANDs the
votes into a mask for each bin it owns (bins / 32 of them) and counts it with ``popc``. One
program does the whole row (128 keys a thread a pass at 32K keys), so the per-bin work is what
counts: the kernel with 11-bit digits holds 772 ``popc`` (257 a pass: 64 bins a lane × 4 keys
a thread a tile), with 8-bit digits 129 (32 a pass) — ≈ 6× less histogram work for the four
passes than for three. Triton 3.9 uses shared-memory atomics instead (one per key), where 256
bins are 8× fewer to clear and read back per tile than 2,048.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from model.kernels.launch import grid_entry, last_to_arrive, pdl

SELECT_BLOCK = 1024   # scores per tile of a pass
TOP_BITS = tl.constexpr(12)      # the digit the score programs count (``count_top_digits``)
HIST_BINS = tl.constexpr(4096)   # 1 << TOP_BITS int32 counts per row
COUNT_WINDOW = tl.constexpr(256)  # top digits a tile counts by histogram: 32 octaves below its top
CANDIDATES = 4096     # a row's keys sharing the k-th's top digit that fit the candidate scratch


@triton.jit
def pack(score, row):
    """float32 score + int32 row → int64 whose signed order is (score, row) order."""
    bits = score.to(tl.int32, bitcast=True)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (key.to(tl.int64) << 32) | (row.to(tl.int64) & 0xFFFFFFFF)


@triton.jit
def ordered(score):
    """float32 → int64 in [0, 2³²) of the same order (−0 just below +0)."""
    bits = score.to(tl.int32, bitcast=True)
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.int64) + 2147483648


@triton.jit
def _tile(src, offs, limit, PACKED: tl.constexpr):
    """A tile of a pick's source, src[offs] below ``limit`` (from L2: ``.cg``): fp32 scores,
    or PACKED candidates (int64, ``pack``'d)."""
    if PACKED:
        return tl.load(src + offs, mask=offs < limit, other=0, cache_modifier=".cg")
    return tl.load(src + offs, mask=offs < limit, other=0.0, cache_modifier=".cg")


@triton.jit
def _keys(tile, offs, PACKED: tl.constexpr):
    """A ``_tile`` at positions offs → (ordered key, packed (score, row)): a score's row is its
    position; a candidate's key is its high half."""
    if PACKED:
        key = (tile >> 32) + 2147483648
        packed = tile
    else:
        key = ordered(tile)
        packed = pack(tile, offs)
    return key, packed


@triton.jit
def _top_digits(row_ptrs, offs, limits):
    """Top ``TOP_BITS`` key bits of the scores at row_ptrs [R] + offs [N] (−1 at or past each
    row's limit) → int32 [R, N]."""
    inside = offs[None, :] < limits[:, None]
    score = tl.load(row_ptrs[:, None] + offs[None, :], mask=inside, other=0.0,
                    cache_modifier=".cg")
    return tl.where(inside, (ordered(score) >> (32 - TOP_BITS)).to(tl.int32), -1)


@triton.jit
def count_top_digits(row_ptrs, n0, limits, hist_rows, N: tl.constexpr, FAR: tl.constexpr = True):
    """Add the top-digit counts of a tile of N stored scores (row_ptrs [R] + n0 + [0, N), each
    row's up to its limit, limits [R]) to each row's histogram (hist_rows [R] pointers to
    HIST_BINS int32): one atomic per distinct digit, so a bin takes at most one atomic per tile
    (a hot digit is not thousands of atomics on one address). The tile's digits within
    COUNT_WINDOW of its row's highest (32 octaves at 8 bins an octave) are counted by one
    ``tl.histogram`` of all R rows (bin = row · COUNT_WINDOW + distance below the row's top).
    FAR: the digits farther below it take an atomic each, so the counts are exact for any
    scores; else they are not counted — every negative or zero score below a positive top —
    and the row's counts are exact within COUNT_WINDOW of its highest counted digit (every
    tile's window reaches down at least that far), which ``select_row(WINDOWED=True)``
    checks."""
    WINDOW: tl.constexpr = COUNT_WINDOW
    offs = n0 + tl.arange(0, N)
    digits = _top_digits(row_ptrs, offs, limits)                    # [R, N], −1 outside
    R: tl.constexpr = digits.shape[0]
    top = tl.max(digits, 1)                                         # [R]
    below = top[:, None] - digits
    near = (digits >= 0) & (below < WINDOW)
    row_bins = tl.arange(0, R)[:, None] * WINDOW + below
    counts = tl.histogram(tl.reshape(row_bins, (R * N,)), R * WINDOW,
                          mask=tl.reshape(near, (R * N,)))
    counts = tl.reshape(counts, (R, WINDOW))
    bin_digits = top[:, None] - tl.arange(0, WINDOW)[None, :]       # [R, WINDOW]
    tl.atomic_add(hist_rows[:, None] + bin_digits, counts, mask=counts > 0, sem="relaxed")
    if FAR:
        tl.atomic_add(hist_rows[:, None] + digits, tl.full([R, N], 1, tl.int32),
                      mask=(digits >= 0) & ~near, sem="relaxed")


@triton.jit
def _digit(src, limit, prefix, need, SHIFT: tl.constexpr, BITS: tl.constexpr,
           BLOCK: tl.constexpr, PACKED: tl.constexpr = False):
    """One radix pass: among the keys whose bits above SHIFT + BITS equal ``prefix``'s, the digit
    (bits SHIFT.. of BITS) that holds the ``need``-th largest → (prefix with that digit, how many
    of the keys with the new prefix are still needed)."""
    hist = tl.zeros([1 << BITS], dtype=tl.int32)
    tile = _tile(src, tl.arange(0, BLOCK), limit, PACKED)
    for n0 in range(0, limit, BLOCK):
        offs = n0 + tl.arange(0, BLOCK)
        valid = offs < limit
        following = _tile(src, offs + BLOCK, limit, PACKED)   # in flight over this tile's work
        key, _ = _keys(tile, offs, PACKED)
        tile = following
        if SHIFT + BITS < 32:
            valid = valid & ((key >> (SHIFT + BITS)) == (prefix >> (SHIFT + BITS)))
        digit = ((key >> SHIFT) & ((1 << BITS) - 1)).to(tl.int32)
        hist += tl.histogram(digit, 1 << BITS, mask=valid)
    prefix, need, _ = _choose(hist, prefix, need, SHIFT)
    return prefix, need


@triton.jit
def _choose(hist, prefix, need, SHIFT: tl.constexpr):
    """The digit of ``hist`` (counts by digit) that holds the ``need``-th largest key → (prefix
    with that digit at SHIFT, how many keys with the new prefix are still needed, the highest
    digit with a count). The two digits come from one sum (their flags packed in an int32)."""
    tl.static_assert(hist.shape[0] < 65536)
    at_least = tl.cumsum(hist, 0, reverse=True)     # keys in this digit or a higher one
    flags = (at_least >= need).to(tl.int32) + ((at_least > 0).to(tl.int32) << 16)
    digits = tl.sum(flags, 0)
    chosen = (digits & 0xFFFF) - 1
    higher = tl.sum(tl.where(tl.arange(0, hist.shape[0]) == chosen, at_least - hist, 0), 0)
    return prefix + (chosen.to(tl.int64) << SHIFT), need - higher, (digits >> 16) - 1


@triton.jit
def _running_counts(a, b):
    """Boolean tiles a, b [BLOCK] (BLOCK < 2^16) → how many of each are set up to and including
    every position, and in the whole tile: one scan and one sum of both packed in an int32
    (a in the low 16 bits, b in the high), where two of each took twice the cross-warp passes
    and barriers."""
    tl.static_assert(a.shape[0] < 65536)
    flags = a.to(tl.int32) + (b.to(tl.int32) << 16)
    upto = tl.cumsum(flags, 0)
    total = tl.sum(flags, 0)
    return upto & 0xFFFF, upto >> 16, total & 0xFFFF, total >> 16


@triton.jit
def _take(src, limit, thresh, need, dest, taken, BLOCK: tl.constexpr,
          PACKED: tl.constexpr = False):
    """Every key above ``thresh`` among src[:limit], then its first ``need`` ties, packed into
    dest[taken:] in source order."""
    ties = tl.full([], 0, dtype=tl.int32)
    tile = _tile(src, tl.arange(0, BLOCK), limit, PACKED)
    for n0 in range(0, limit, BLOCK):
        offs = n0 + tl.arange(0, BLOCK)
        valid = offs < limit
        following = _tile(src, offs + BLOCK, limit, PACKED)   # in flight over this tile's work
        key, packed = _keys(tile, offs, PACKED)
        tile = following
        above = valid & (key > thresh)
        tie = valid & (key == thresh)
        above_upto, ties_upto, above_n, ties_n = _running_counts(above, tie)
        # the kept ties are the row's first ``need``: a tie is kept when at most ``need`` ties
        # come up to it, and a kept key's slot counts the kept keys up to it
        kept_before = tl.minimum(ties, need)
        kept_upto = tl.minimum(ties + ties_upto, need)
        keep = above | (tie & (ties + ties_upto <= need))
        tl.store(dest + taken + above_upto + kept_upto - kept_before - 1, packed, mask=keep)
        taken += (above_n + tl.minimum(ties + ties_n, need) - kept_before).to(tl.int32)
        ties += ties_n


@triton.jit
def _split(row_ptr, limit, top, dest, cand, BLOCK: tl.constexpr):
    """One pass over the row: the keys whose top digit is above ``top`` (all picked) packed into
    dest, those equal to it (the candidates) packed into cand, both in row order."""
    taken = tl.full([], 0, dtype=tl.int32)
    held = tl.full([], 0, dtype=tl.int32)
    tile = _tile(row_ptr, tl.arange(0, BLOCK), limit, False)
    for n0 in range(0, limit, BLOCK):
        offs = n0 + tl.arange(0, BLOCK)
        valid = offs < limit
        following = _tile(row_ptr, offs + BLOCK, limit, False)
        key, packed = _keys(tile, offs, False)
        tile = following
        digit = key >> (32 - TOP_BITS)
        above = valid & (digit > top)
        same = valid & (digit == top)
        above_upto, same_upto, above_n, same_n = _running_counts(above, same)
        tl.store(dest + taken + above_upto - 1, packed, mask=above)
        tl.store(cand + held + same_upto - 1, packed, mask=same)
        taken += above_n
        held += same_n


@triton.jit
def select_row(row_ptr, dest, limit, k, hist_ptr, cand, cap, BLOCK: tl.constexpr,
               K_PAD: tl.constexpr, COUNTED: tl.constexpr, WINDOWED: tl.constexpr = False):
    """The k best of the ``limit`` scores at row_ptr, best first, −1 past them, into dest[:k]
    (int64). One program's work; scores written by other programs of the same launch are read
    from L2 (``.cg``): ``indexer``'s scores kernel picks in its last program of a query.
    COUNTED: the programs that wrote the row also counted its keys' top digits into hist_ptr
    (``count_top_digits``; HIST_BINS int32, set back to zero here). Then one pass splits the
    row: the keys above the k-th's top digit go to dest, those sharing it — when at most
    ``cap`` — to cand (int64 [cap]), and the other digits are found among them alone.
    Otherwise (or past ``cap``) four 8-bit passes over the row. WINDOWED: the counts are whole
    only within COUNT_WINDOW of the highest counted digit (``count_top_digits(FAR=False)``);
    a k-th below that takes the four passes too."""
    picks = tl.maximum(tl.minimum(k, limit), 0)
    if COUNTED:   # read the counts and set them back to zero for the next launch
        bins = tl.arange(0, HIST_BINS)
        hist = tl.load(hist_ptr + bins, cache_modifier=".cg")
        tl.store(hist_ptr + bins, tl.zeros([HIST_BINS], dtype=tl.int32))
    if picks > 0:
        if COUNTED:   # the k-th's top digit, and how many keys sharing it are picked
            counted, left, highest = _choose(hist, tl.full([], 0, dtype=tl.int64), picks,
                                             32 - TOP_BITS)
            top = counted >> (32 - TOP_BITS)
            held = tl.sum(tl.where(bins == top, hist, 0), 0)
            from_counts = held <= cap
            if WINDOWED:
                from_counts = from_counts & (top > highest - COUNT_WINDOW)
            if from_counts:   # the 20 bits below the top digit, among the candidates
                _split(row_ptr, limit, top, dest, cand, BLOCK)
                tl.debug_barrier()   # the candidates are in place before any thread reads them
                # (picks − left: the keys with a higher top digit, all picked, already at dest)
                _take_candidates(cand, held, counted, left, dest, picks - left, BLOCK)
            else:
                _four_passes(row_ptr, limit, picks, dest, BLOCK)
        else:
            _four_passes(row_ptr, limit, picks, dest, BLOCK)
    _rows_best_first(dest, picks, k, K_PAD)


@triton.jit
def _four_passes(row_ptr, limit, picks, dest, BLOCK: tl.constexpr):
    """The ``picks`` best of the ``limit`` scores at row_ptr, packed into dest in row order:
    four 8-bit digits of the k-th's key over the row, then a pass that takes them."""
    thresh = tl.full([], 0, dtype=tl.int64)
    need = picks
    thresh, need = _digit(row_ptr, limit, thresh, need, 24, 8, BLOCK)
    thresh, need = _digit(row_ptr, limit, thresh, need, 16, 8, BLOCK)
    thresh, need = _digit(row_ptr, limit, thresh, need, 8, 8, BLOCK)
    thresh, need = _digit(row_ptr, limit, thresh, need, 0, 8, BLOCK)
    _take(row_ptr, limit, thresh, need, dest, tl.full([], 0, dtype=tl.int32), BLOCK)


@triton.jit
def _take_candidates(cand, held, thresh, need, dest, above, BLOCK: tl.constexpr):
    """The pick's end from its candidates (the ``held`` keys sharing the k-th's top digit,
    packed in row order at cand; ``above`` keys with a higher top digit already at dest):
    the other 20 bits (digits of 8, 8 and 4) among them, then the picked ones to dest[above:]."""
    thresh, need = _digit(cand, held, thresh, need, 12, 8, BLOCK, True)
    thresh, need = _digit(cand, held, thresh, need, 4, 8, BLOCK, True)
    thresh, need = _digit(cand, held, thresh, need, 0, 4, BLOCK, True)
    _take(cand, held, thresh, need, dest, above, BLOCK, True)


@triton.jit
def _rows_best_first(dest, picks, k, K_PAD: tl.constexpr):
    """dest[:picks] packed (score, row) picks, in any order → their rows best first, −1 to k."""
    offs_k = tl.arange(0, K_PAD)
    tl.debug_barrier()   # every thread's packed picks are in place before any reads them
    none = tl.full([K_PAD], -9223372036854775807 - 1, dtype=tl.int64)
    best = tl.sort(tl.load(dest + offs_k, mask=offs_k < picks, other=none, cache_modifier=".cg"),
                   descending=True)   # .cg: other programs may have stored some of them
    rows = tl.where(offs_k < picks, best & 0xFFFFFFFF, -1)
    tl.store(dest + offs_k, rows, mask=offs_k < k)


@triton.jit
def _topk_select(scores_ptr, vis_ptr, out_ptr, width, k, score_batch, out_batch, out_row,
                 CAUSAL: tl.constexpr, BLOCK: tl.constexpr, K_PAD: tl.constexpr,
                 PDL: tl.constexpr = False):
    """Program (t, batch): row t of scores [b, T, width] (its visible entries: the first
    vis[t] when CAUSAL, else all) → its k best rows, best first, −1 past them, into
    out[batch, t, :k] (strides out_batch, out_row)."""
    grid_entry(PDL)
    t = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    row_ptr = scores_ptr + batch * score_batch + t.to(tl.int64) * width
    dest = out_ptr + batch * out_batch + t.to(tl.int64) * out_row
    select_row(row_ptr, dest, row_limit(vis_ptr, t, width, CAUSAL), k, vis_ptr, dest, 0, BLOCK,
               K_PAD, False)


@triton.jit
def row_limit(vis_ptr, t, width, CAUSAL: tl.constexpr):
    """How many of row t's ``width`` scores a pick reads: its first vis[t] (CAUSAL), else all."""
    limit = width
    if CAUSAL:
        limit = tl.minimum(tl.load(vis_ptr + t), width)
    return limit


@triton.jit
def _row_picks(vis_ptr, t, width, k, CAUSAL: tl.constexpr):
    """(limit, picks) of row t: ``row_limit`` and how many of them it picks."""
    limit = row_limit(vis_ptr, t, width, CAUSAL)
    return limit, tl.maximum(tl.minimum(k, limit), 0)


@triton.jit
def _slice_counts(scores_ptr, vis_ptr, hist_ptr, meta_ptr, counts_ptr, width, k, T,
                  CAUSAL: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    """Program (row, slice) of the parallel pick's first launch: from the row's counted top
    digits (hist, complete: the scores launch is over), the k-th's top digit; how many keys of
    this slice of BLOCK scores have a higher one (all picked) and how many share it (the
    candidates) → counts[row, slice, 0:2]. Slice 0 also stores the row's (threshold prefix,
    still needed) → meta[row, 0:2]."""
    grid_entry(PDL)
    row = tl.program_id(0)
    piece = tl.program_id(1)
    limit, picks = _row_picks(vis_ptr, row % T, width, k, CAUSAL)
    hist = tl.load(hist_ptr + row.to(tl.int64) * HIST_BINS + tl.arange(0, HIST_BINS),
                   cache_modifier=".cg")
    thresh, need, _ = _choose(hist, tl.full([], 0, dtype=tl.int64), tl.maximum(picks, 1),
                           32 - TOP_BITS)
    offs = piece * BLOCK + tl.arange(0, BLOCK)
    valid = offs < tl.where(picks > 0, limit, 0)   # no pick: no key counts
    score = tl.load(scores_ptr + row.to(tl.int64) * width + offs, mask=valid, other=0.0)
    digit = ordered(score) >> (32 - TOP_BITS)
    top = thresh >> (32 - TOP_BITS)
    slot = counts_ptr + (row * tl.num_programs(1) + piece).to(tl.int64) * 2
    tl.store(slot, tl.sum((valid & (digit > top)).to(tl.int32), 0))
    tl.store(slot + 1, tl.sum((valid & (digit == top)).to(tl.int32), 0))
    if piece == 0:
        tl.store(meta_ptr + row.to(tl.int64) * 2, thresh)
        tl.store(meta_ptr + row.to(tl.int64) * 2 + 1, need.to(tl.int64))


@triton.jit
def _slice_place(scores_ptr, vis_ptr, hist_ptr, meta_ptr, counts_ptr, cnt_ptr, cand_ptr, out_ptr,
                 width, k, T, out_batch, out_row, CAUSAL: tl.constexpr, BLOCK: tl.constexpr,
                 K_PAD: tl.constexpr, SLICES_PAD: tl.constexpr, PDL: tl.constexpr = False):
    """Program (row, slice) of the parallel pick's second launch: the slice's picked keys
    (top digit above the k-th's) packed to out at their place in row order, its candidates
    to cand likewise (places: the earlier slices' counts). The row's last slice program to
    finish (an arrival count per row at cnt_ptr, zero before and after) finds the rest among
    the row's candidates, writes the rows best first and sets the row's digit counts back to
    zero for the next launch."""
    grid_entry(PDL)
    row = tl.program_id(0)
    piece = tl.program_id(1)
    slices = tl.num_programs(1)
    limit, picks = _row_picks(vis_ptr, row % T, width, k, CAUSAL)
    dest = out_ptr + (row // T).to(tl.int64) * out_batch + (row % T).to(tl.int64) * out_row
    cand = cand_ptr + row.to(tl.int64) * width
    others = tl.arange(0, SLICES_PAD)
    counts = counts_ptr + (row * slices + others).to(tl.int64) * 2
    above_n = tl.load(counts, mask=others < slices, other=0)
    held_n = tl.load(counts + 1, mask=others < slices, other=0)
    thresh = tl.load(meta_ptr + row.to(tl.int64) * 2)
    need = tl.load(meta_ptr + row.to(tl.int64) * 2 + 1).to(tl.int32)
    if picks > 0:
        offs = piece * BLOCK + tl.arange(0, BLOCK)
        valid = offs < limit
        score = tl.load(scores_ptr + row.to(tl.int64) * width + offs, mask=valid, other=0.0)
        packed = pack(score, offs)
        digit = ordered(score) >> (32 - TOP_BITS)
        top = thresh >> (32 - TOP_BITS)
        above = valid & (digit > top)
        same = valid & (digit == top)
        before = others < piece
        taken = tl.sum(tl.where(before, above_n, 0), 0)
        held = tl.sum(tl.where(before, held_n, 0), 0)
        above_upto, same_upto, _, _ = _running_counts(above, same)
        tl.store(dest + taken + above_upto - 1, packed, mask=above)
        tl.store(cand + held + same_upto - 1, packed, mask=same)
    if last_to_arrive(cnt_ptr + row, slices):   # the row's last slice sees every slice's stores
        bins = tl.arange(0, HIST_BINS)
        tl.store(hist_ptr + row.to(tl.int64) * HIST_BINS + bins,
                 tl.zeros([HIST_BINS], dtype=tl.int32))
        if picks > 0:
            _take_candidates(cand, tl.sum(held_n, 0), thresh, need, dest, tl.sum(above_n, 0),
                             BLOCK)
        _rows_best_first(dest, picks, k, K_PAD)


def pick_counted(scores: torch.Tensor, hist: torch.Tensor, arrive: torch.Tensor, k: int,
                 visible: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """The parallel pick (``topk_select_triton``'s contract) of rows whose top key digits the
    scores launch counted into ``hist`` (int32 [rows · HIST_BINS], set back to zero here):
    two launches of (row, slice of SELECT_BLOCK) programs, so a row's keys are split, placed
    and refined by many programs at once where ``select_row`` has one program per row.
    ``arrive``: int32 [rows] zeros (``launch.arrivals``), zero again after."""
    b, t, width = scores.shape
    rows, slices = b * t, triton.cdiv(width, SELECT_BLOCK)
    assert scores.dtype == torch.float32 and scores.stride(-1) == 1 and scores.stride(1) == width
    assert out.dtype == torch.int64 and out.stride(-1) == 1 and out.shape == (b, t, k)
    if k == 0 or rows == 0:
        return out
    dev = scores.device
    overlap = pdl(dev)   # both launches' options (launch.pdl)
    meta = torch.empty(rows, 2, dtype=torch.int64, device=dev)
    counts = torch.empty(rows, slices, 2, dtype=torch.int32, device=dev)
    cand = torch.empty(rows, width, dtype=torch.int64, device=dev)
    vis = scores if visible is None else visible
    causal = visible is not None
    _slice_counts[(rows, slices)](scores, vis, hist, meta, counts, width, k, t, CAUSAL=causal,
                                  BLOCK=SELECT_BLOCK, num_warps=4, **overlap)
    _slice_place[(rows, slices)](scores, vis, hist, meta, counts, arrive, cand, out, width, k,
                                 t, out.stride(0), out.stride(1), CAUSAL=causal,
                                 BLOCK=SELECT_BLOCK, K_PAD=max(16, triton.next_power_of_2(k)),
                                 SLICES_PAD=max(2, triton.next_power_of_2(slices)), num_warps=4,
                                 **overlap)
    return out


def topk_select_reference(scores: torch.Tensor, k: int, visible: torch.Tensor | None = None,
                          out: torch.Tensor | None = None) -> torch.Tensor:
    """scores fp32 [b, T, width] → int64 [b, T, k]: each row's k best columns, best first, −1
    where fewer than k are visible (the first visible[t] of row t; all when ``visible`` is
    None), stored in ``out`` when given."""
    b, t, width = scores.shape
    picks = scores.topk(min(k, width), dim=-1).indices
    if visible is not None:
        picks = torch.where(picks >= visible.view(1, -1, 1).to(picks.device), -1, picks)
    if picks.shape[-1] < k:
        picks = torch.cat([picks, picks.new_full((b, t, k - picks.shape[-1]), -1)], dim=-1)
    if out is None:
        return picks
    out.copy_(picks)
    return out


def topk_select_triton(scores: torch.Tensor, k: int, visible: torch.Tensor | None = None,
                       out: torch.Tensor | None = None) -> torch.Tensor:
    """Same contract as ``topk_select_reference`` (``scores`` contiguous rows; ``visible`` int32
    on its device; ``out`` int64 with unit stride along k). Ties between equal scores keep the
    lower column first in the pick and the higher one first in the order."""
    b, t, width = scores.shape
    if out is None:
        out = torch.empty(b, t, k, dtype=torch.int64, device=scores.device)
    assert scores.dtype == torch.float32 and scores.stride(-1) == 1 and scores.stride(1) == width
    assert out.dtype == torch.int64 and out.stride(-1) == 1 and out.shape == (b, t, k)
    if k == 0 or b * t == 0:
        return out
    vis = scores if visible is None else visible
    _topk_select[(t, b)](scores, vis, out, width, k, scores.stride(0), out.stride(0),
                         out.stride(1), CAUSAL=visible is not None, BLOCK=SELECT_BLOCK,
                         K_PAD=max(16, triton.next_power_of_2(k)),
                         num_warps=8, **pdl(scores.device))
    return out
