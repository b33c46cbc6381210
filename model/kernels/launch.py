"""What every Triton wrapper in model/kernels/ shares about launching: whether kernels run in
Triton's interpreter (``TRITON_INTERPRET=1``, which Triton reads when it is imported; the
interpreter mishandles bf16, so wrappers hand it fp32 — unless ``V4CODER_INTERPRET_BF16=1``
has ``interpret_bf16`` compute bf16 there as a GPU does, and the kernels run their bf16
branches), and how many short rows one program takes so that a tile holds about
``TILE_ELEMENTS`` elements, and how a kernel that reads rows of unit stride finds them in a
strided view (``rows_of``), and how a table of addresses gets to the device (``address``,
``device_table``), a counting table kept there (``counting``), the arrival
counts of kernels whose last program of a group finishes the group's work (``arrivals``), and
whether a launch may overlap the one before it (``pdl``, ``grid_entry``; a weight-streaming
kernel asks L2 for its weight meanwhile: ``grid_entry_prefetching``)."""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import triton
import triton.language as tl

from model.kernels import choices

TILE_ELEMENTS = 4096  # elements per program: small rows are batched into one tile


BF16_ENV = "V4CODER_INTERPRET_BF16"


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def interpreter_bf16() -> bool:
    """Whether the interpreter runs the kernels' bf16 branches (``V4CODER_INTERPRET_BF16=1``);
    installs ``interpret_bf16``'s emulation the first time it says yes."""
    if not (interpreting() and os.environ.get(BF16_ENV) == "1"):
        return False
    from model.kernels import interpret_bf16
    interpret_bf16.install()
    return True


def interpreter_fp32() -> bool:
    """Whether wrappers hand the kernels fp32 for bf16 / fp16 tensors: in the interpreter, unless
    it computes bf16 faithfully (``interpreter_bf16``)."""
    return interpreting() and not interpreter_bf16()


def rows_per_program(n_rows: int, row_elements: int) -> int:
    """Power-of-two rows per program (≤ 16) so one tile holds about TILE_ELEMENTS elements."""
    return max(1, min(16, TILE_ELEMENTS // row_elements, triton.next_power_of_2(n_rows)))


def rows_of(x: torch.Tensor) -> torch.Tensor:
    """x [..., d] as [rows, d] with unit stride along d: a view where the leading dims flatten
    to one stride (a column slice of a contiguous tensor does), else a contiguous copy."""
    d = x.shape[-1]
    if not d:
        return x.new_empty(math.prod(x.shape[:-1]), 0)
    rows = x.reshape(-1, d)
    return rows if rows.stride(-1) == 1 or d == 1 else rows.contiguous()


# id → tensor, weakly; kept only when a checker asks (a WeakSet would compare tensors with ==)
_ADDRESSED: weakref.WeakValueDictionary[int, torch.Tensor] | None = None


def address(t: torch.Tensor | None) -> int:
    """The address a kernel will dereference from a table (0 for none): ``t.data_ptr()``, and
    under ``interpret_bounds`` a note that the launch may touch t's storage."""
    if t is None:
        return 0
    if _ADDRESSED is not None:
        _ADDRESSED[id(t)] = t
    return t.data_ptr()


def record_addresses() -> None:
    """From now on ``address`` keeps (weakly) the tensors it was asked about."""
    global _ADDRESSED
    if _ADDRESSED is None:
        _ADDRESSED = weakref.WeakValueDictionary()


def addressed() -> list[torch.Tensor]:
    """The live tensors ``address`` was asked about since ``record_addresses``."""
    return list(_ADDRESSED.values()) if _ADDRESSED is not None else []


def device_table(rows: list[list[int]], device: torch.device) -> torch.Tensor:
    """int64 [len(rows), n] on ``device``: a TABLE-mode kernel's addresses and counts. On a GPU
    from pinned memory without waiting: a pageable copy would make the host wait for every
    kernel queued before it."""
    if device.type != "cuda":
        return torch.tensor(rows, dtype=torch.int64, device=device)
    return torch.tensor(rows, dtype=torch.int64, pin_memory=True).to(device, non_blocking=True)


# the tables a longer one replaced: never freed, since a CUDA graph captured with one keeps
# its address (a decode graph piece's FP8 GEMM counts its arrivals there) and would otherwise
# write into whatever the allocator put there next
_RETIRED: list[torch.Tensor] = []


def _kept(tables: dict[torch.device, torch.Tensor], n: int, device: torch.device,
          make) -> torch.Tensor:
    """The first n elements of a tensor kept per device in ``tables``, remade by ``make(size)``
    at twice the size (at least 1024) when it is shorter; the shorter one stays allocated."""
    table = tables.get(device)
    if table is None or table.numel() < n:
        if table is not None:
            _RETIRED.append(table)
        table = tables[device] = make(max(n, 2 * (0 if table is None else table.numel()), 1024))
    return table[:n]


_COUNTING: dict[torch.device, torch.Tensor] = {}


def counting(n: int, device: torch.device) -> torch.Tensor:
    """0, 1, …, n − 1 (int64) as a view of a table kept on the device (grown ×2): a decode
    step's row indices and counts without a launch. Read-only."""
    return _kept(_COUNTING, n, device, lambda size: torch.arange(size, device=device))


_ARRIVALS: dict[torch.device, torch.Tensor] = {}


def arrivals(n: int, device: torch.device) -> torch.Tensor:
    """n int32 zeros kept on the device (grown ×2): a kernel's arrival counts, one per group of
    programs. The last program of a group to arrive (``last_to_arrive``) finishes the group's
    work and sets its count back to zero, so the counts are zero again when the kernel ends and
    the next launch on the stream reuses them without a memset. Launches that use them must not
    overlap: one stream. A kernel's other tallies that its last programs set back to zero (the
    indexer's digit histograms) ride in the same zeros."""
    return _kept(_ARRIVALS, n, device,
                 lambda size: torch.zeros(size, dtype=torch.int32, device=device))


FINISHES = ("fused", "kernel")   # a group's second half: by its last program, or a launch


def finish_fused(what: str, finish: str) -> bool:
    """A wrapper's ``finish`` (or ``combine``) option → whether its kernel's last programs of
    each group do the group's second half ("fused", ``last_to_arrive``) rather than a launch of
    its own ("kernel"); anything else is a ValueError that names ``what``."""
    if finish not in FINISHES:
        raise ValueError(f"{what} must be fused or kernel, not {finish!r}")
    return finish == "fused"


@triton.jit
def last_to_arrive(count, programs):
    """``arrivals``' protocol, run by a program once it has stored its part of a group's work:
    a barrier (every thread's stores come before the count), its arrival counted at ``count``
    (acq_rel: the group's last program sees every part the others stored before arriving), →
    whether it is the last of the group's ``programs``; that one sets the count back to zero for
    the next launch, and goes on to finish the group's work."""
    tl.debug_barrier()
    last = tl.atomic_add(count, 1) == programs - 1
    if last:
        tl.atomic_xchg(count, 0)
    return last


# -- programmatic dependent launch ---------------------------------------------------------------
PDL_ENV = "V4CODER_PDL"
PDL_SETTINGS = {"1": True, "on": True, "0": False, "off": False}
_PDL: dict[tuple[str, str], dict[str, bool]] = {}
_PDL_FORCED: list[bool] = []


def pdl(device: torch.device) -> dict[str, bool]:
    """The launch options that let a kernel on ``device`` overlap the launch before it on the
    stream: ``{"PDL": True, "launch_pdl": True}``, else ``{}``. Every launch site passes them.

    Programmatic dependent launch (Hopper on): a kernel launched with ``launch_pdl`` may start
    while the one before it still runs, once every program of that one has passed its
    ``grid_entry``. Its programs then wait in their own ``grid_entry`` until that launch has
    finished and its writes are visible, before they touch memory. What overlaps is the launch
    itself, the programs' scheduling and their setup: a decode step of a few µs per kernel is
    bound by exactly that (docs/PERF.md). Results are unchanged, bit for bit.

    ``V4CODER_PDL=1`` / ``0`` turns it on / off; unset, the GPU's launch-choices table decides
    (``choices``: decision "pdl"; off without a table). A GPU before sm_90 never gets it. On CPU
    tensors ``=1`` also holds: in Triton's interpreter (the grid-dependency instructions become
    no-ops, ``interpret_gdc``) and for ``bench compile``'s sm_90 code. ``overlapping`` forces it
    within a block (bench rows). Resolved once per (setting, device): this runs per launch."""
    if _PDL_FORCED:
        setting = "1" if _PDL_FORCED[-1] else "0"
    else:
        setting = os.environ.get(PDL_ENV, "").strip().lower()
        if not setting:   # the GPU's table decides (resolved once per device there)
            setting = "1" if choices.options("pdl", device).get("pdl") else "0"
    key = (setting, str(device))
    options = _PDL.get(key)
    if options is None:
        options = _PDL[key] = _pdl_options(setting, torch.device(device))
    return options


def _pdl_options(setting: str, device: torch.device) -> dict[str, bool]:
    if setting not in PDL_SETTINGS:
        raise ValueError(f"{PDL_ENV}={setting!r}: expected 1 (overlapping launches) or 0")
    if not PDL_SETTINGS[setting]:
        return {}
    if device.type == "cuda":
        if torch.cuda.get_device_capability(device)[0] < 9:
            return {}
    elif interpreting():
        from model.kernels import interpret_gdc
        interpret_gdc.install()
    return {"PDL": True, "launch_pdl": True}


@contextmanager
def overlapping(on: bool = True) -> Iterator[None]:
    """Within the block, ``pdl`` answers as if ``V4CODER_PDL`` were 1 (``on``) or 0, in every
    thread (a batcher's worker too)."""
    _PDL_FORCED.append(on)
    try:
        yield
    finally:
        _PDL_FORCED.pop()


@triton.jit
def _let_next_start():
    tl.inline_asm_elementwise("griddepcontrol.launch_dependents; // $0", "=r", [],
                              dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _wait_for_previous():
    tl.inline_asm_elementwise("griddepcontrol.wait; // $0", "=r", [], dtype=tl.int32,
                              is_pure=False, pack=1)


@triton.jit
def grid_entry(PDL: tl.constexpr):
    """Every kernel's first statement. PDL (launched with ``pdl``'s options): let the next
    launch start, whose programs wait in their own entry, then wait until the launch before this
    one has finished and its writes are visible. Nothing before it touches memory, which
    ``bench compile --pdl`` checks in every kernel's SASS (``cross_compile.grid_wait``). The PTX
    instructions as inline asm (Triton 3.6's own form of them; its ``extra.cuda`` functions
    are not ones the interpreter runs), with side effects, so nothing moves above them."""
    if PDL:
        _let_next_start()
        _wait_for_previous()


# a program's weight bytes asked into L2 before its wait: about what HBM delivers to one
# program of a full first wave (≈ 4 a SM) in the few µs a latency-bound kernel before it runs
PREFETCH_LINES = tl.constexpr(128)   # of 128 bytes: 16 KB
LINE_BYTES = tl.constexpr(128)


@triton.jit
def grid_entry_prefetching(rows, row_elements, keep, PDL: tl.constexpr,
                           LINES_IN_ALL: tl.constexpr = PREFETCH_LINES):
    """``grid_entry`` for a kernel that streams a weight, which no launch writes: between its
    two instructions, while the launch before still runs, the program asks L2 for the first
    bytes of its own weight rows — ``rows`` [R] (pointers of any element type: where each row's
    part this program reads begins), ``row_elements`` of it each (runtime), rows where ``keep``:
    LINES_IN_ALL lines in all (default PREFETCH_LINES), spread over the rows (one line a row at
    least). A prefetch reads nothing into the program and cannot fault, so it is not an access
    before the wait; ``cross_compile.grid_wait`` counts them (``CCTL.E.PF2``), and
    ``interpret_gdc`` records their addresses in the interpreter. Without PDL nothing overlaps,
    and nothing is asked."""
    if PDL:
        _let_next_start()
        LINES: tl.constexpr = max(1, LINES_IN_ALL // rows.shape[0])
        line = tl.arange(0, LINES) * LINE_BYTES
        at = rows.to(tl.pointer_type(tl.uint8))[:, None] + line[None, :]
        row_bytes = row_elements * (rows.dtype.element_ty.primitive_bitwidth // 8)
        ask = keep[:, None] & (line[None, :] < row_bytes)
        tl.inline_asm_elementwise(
            "{ .reg .pred ask; setp.ne.b32 ask, $2, 0; @ask prefetch.global.L2 [$1]; } // $0",
            "=r,l,r", [at, ask.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)
        _wait_for_previous()
