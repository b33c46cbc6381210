"""Compile the Triton kernels for a GPU this machine does not have (sm_90: H100 / H200).

Triton's interpreter (the CI check) runs a kernel's Python, not its compiler: an op the GPU
compiler rejects, a register blow-up or a spill shows only on a GPU. Inside ``CompileOnly()``
every launch is compiled — Triton's own front end, LLVM and ``ptxas`` (shipped in the Triton
wheel), for ``GPUTarget("cuda", arch, 32)`` — with exactly the arguments the wrapper passes,
and not run: the wrapper's outputs stay uninitialised. ``usage`` reads what the cubin asks of
an SM (registers, local memory = spills, shared memory) and ``occupancy`` what that leaves of
the SM's 64 warps.

Needs Triton compiled code paths, so the process must not be interpreting
(``TRITON_INTERPRET`` unset when triton is imported).
"""

from __future__ import annotations

import importlib
import inspect
import math
import pkgutil
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.runtime import driver
from triton.runtime.jit import JITFunction


@dataclass(slots=True)
class Compiled:
    kernel: str
    constexprs: dict
    num_warps: int
    num_stages: int
    seconds: float
    cubin: bytes
    shared: int          # bytes of shared memory the kernel asks for (Triton's metadata)
    mma: str             # the tensor-core instruction its dots became: wgmma, mma.sync or none
    loads: dict          # its global loads in the PTX by width (``global_loads``)
    dots: list           # each dot's output tile and warp layout (``dot_layouts``)
    launch_pdl: bool = False   # launched to overlap the launch before it (``launch.pdl``)
    programs: int | None = None   # the grid of the launch that compiled it (None: a callable)


class _CompileOnlyDriver:
    """What JITFunction.run asks of the active driver, for a device that is not here."""

    def __init__(self, target: GPUTarget) -> None:
        self.target = target

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def compile_only_registers(self, kernel) -> int:  # noqa: ANN001 (a CompiledKernel)
        """A thread's registers, from the cubin (no driver loads it here): what
        ``residency.resident_programs`` asks a driver that cannot load a module."""
        return usage(kernel.asm["cubin"])["regs"]


@dataclass
class CompileOnly:
    """Context manager: every Triton launch inside compiles for ``arch`` and is recorded in
    ``compiled`` (one entry per distinct specialization), nothing runs."""
    arch: int = 90
    compiled: list[Compiled] = field(default_factory=list)

    def __enter__(self) -> CompileOnly:
        self._run = JITFunction.run
        seen: set[int] = set()
        outer = self
        seconds: dict[int, float] = {}

        def compile_only(fn: JITFunction, *args, grid, warmup, **kwargs):  # noqa: ANN001, ANN202
            t0 = time.perf_counter()
            kernel = outer._run(fn, *args, grid=grid, warmup=True, **kwargs)
            seconds.setdefault(id(kernel), time.perf_counter() - t0)
            # a wrapper's own warmup (``residency.resident_programs``) asks what a launch would
            # compile to and launches nothing: the launch that follows is what is recorded
            if not warmup and id(kernel) not in seen:   # a cached one comes back as itself
                seen.add(id(kernel))
                md = kernel.metadata
                outer.compiled.append(Compiled(
                    fn.__name__, _constexprs(fn, args, kwargs), md.num_warps, md.num_stages,
                    seconds[id(kernel)], kernel.asm["cubin"], int(md.shared),
                    mma_kind(kernel.asm["ptx"]), global_loads(kernel.asm["ptx"]),
                    dot_layouts(kernel.asm["ttgir"]), bool(getattr(md, "launch_pdl", False)),
                    math.prod(grid) if isinstance(grid, tuple) else None))
            return kernel

        JITFunction.run = compile_only
        # the driver Triton had picked, if any (reading ``driver.active`` would make one, and
        # without a GPU that raises)
        self._driver = getattr(driver, "_active", None)
        driver.set_active(_CompileOnlyDriver(GPUTarget("cuda", self.arch, 32)))
        return self

    def __exit__(self, *exc: object) -> None:
        JITFunction.run = self._run
        driver._active = self._driver


def _constexprs(fn: JITFunction, args: tuple, kwargs: dict) -> dict:
    """The launch's constexpr arguments by name (plain values only)."""
    bound = inspect.signature(fn.fn).bind_partial(*args, **{
        k: v for k, v in kwargs.items() if k in fn.arg_names})
    return {p.name: bound.arguments[p.name] for p in fn.params
            if p.is_constexpr and isinstance(bound.arguments.get(p.name), (bool, int, float, str))}


def mma_kind(ptx: str) -> str:
    """Hopper's warp-group MMA (``wgmma``: needs 64-row tiles), the Ampere-style ``mma.sync``
    (what a dot with fewer rows becomes; a fraction of sm_90's tensor-core peak), or none."""
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    return "mma.sync" if re.search(r"\bmma\.sync", ptx) else "none"


_MMA_LAYOUT = re.compile(r"^(#mma\d*) = #ttg\.nvidia_mma<\{versionMajor = (\d+), versionMinor = "
                         r"\d+, warpsPerCTA = \[([\d, ]+)\], instrShape = \[([\d, ]+)\]", re.M)
_DOT = re.compile(r"\b(?:tt\.dot|ttng\.warp_group_dot) .*-> tensor<([\dx]+)x[a-z]+\d+, (#mma\d*)>")


def dot_layouts(ttgir: str) -> list[dict]:
    """Each distinct tensor-core dot in a kernel's TTGIR: its output tile (``shape``), how
    Triton spread the warps over it (``warps``: ``warpsPerCTA``), the MMA generation (2:
    ``mma.sync``, 3: ``wgmma``) and ``replicated``: how many warps compute each output element.
    A warp's MMA tile is 16 rows by the instruction's N (``instrShape``); more warps along a dim
    than that dim has tiles compute the same tiles again. A 16 × 16 tile over 4 warps along N
    (8 columns a warp) is computed twice, and so is a 64-row warp-group tile laid over 8 warps
    along M. Both happened in sparse attention (docs/PERF.md, session 16)."""
    layouts = {name: (int(major), [int(w) for w in warps.split(",")],
                      [int(i) for i in instr.split(",")])
               for name, major, warps, instr in _MMA_LAYOUT.findall(ttgir)}
    dots: list[dict] = []
    for shape_text, layout in _DOT.findall(ttgir):
        if layout not in layouts:
            continue
        major, warps, instr = layouts[layout]
        shape = [int(n) for n in shape_text.split("x")]
        # a warp's tile along each dim: v2 [(1,) 16, N]; v3 [16, N, K] (its K is not a dim)
        unit = instr[:len(shape)] if major == 2 else [1] * (len(shape) - 2) + instr[:2]
        replicated = 1
        for n, w, u in zip(shape, warps, unit, strict=True):
            replicated *= w // max(1, min(w, n // u))
        dot = {"shape": shape, "warps": warps, "mma": major, "replicated": replicated}
        if dot not in dots:
            dots.append(dot)
    return dots


_LOAD = re.compile(r"^\s*(?:@!?%p\d+\s+)?(ld\.global|cp\.async\.c[ag]\.shared\.global)"
                   r"([.\w:]*)", re.M)


def global_loads(ptx: str) -> dict:
    """The kernel's global-memory load instructions in its PTX, counted by width: ``bytes``
    (one byte each: what a load of a uint8 tile becomes when the compiler cannot prove the
    addresses aligned and contiguous), ``b16``, ``b32``, ``b64``, ``vector`` (v2 / v4) and
    ``async`` (``cp.async`` copies into shared memory: the software pipeline's loads). Static
    counts (an unrolled loop body counts once per copy), not executed instructions."""
    counts = {"bytes": 0, "b16": 0, "b32": 0, "b64": 0, "vector": 0, "async": 0}
    for op, suffix in _LOAD.findall(ptx):
        if op.startswith("cp.async"):
            counts["async"] += 1
        elif ".v2" in suffix or ".v4" in suffix:
            counts["vector"] += 1
        else:
            width = re.search(r"\.[bsu](8|16|32|64)\b", suffix)
            bits = width.group(1) if width else "32"
            counts["bytes" if bits == "8" else f"b{bits}"] += 1
    return counts


def _tool(name: str) -> Path:
    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name


def _cuobjdump(cubin: bytes, flag: str) -> str:
    """What Triton's ``cuobjdump`` prints for the cubin with ``flag``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([str(_tool("cuobjdump")), flag, f.name],
                              capture_output=True, text=True, check=True).stdout


def usage(cubin: bytes) -> dict:
    """Registers per thread, local memory per thread (spills, bytes), static shared memory."""
    out = _cuobjdump(cubin, "--dump-resource-usage")
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out))
    return {"regs": int(fields.get("REG", 0)), "local_bytes": int(fields.get("LOCAL", 0)),
            "stack_bytes": int(fields.get("STACK", 0)),
            "static_shared": int(fields.get("SHARED", 0))}


_SASS_LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+([^;]*);", re.M)
_PREDICATE = re.compile(r"^@!?U?P[T\d]+\s+")
_BRANCH = re.compile(r"\bBRA\b[^;]*?0x([0-9a-f]+)")
# what each loop is counted for: the instruction's opcode (before its first dot)
_LOOP_OPS = {"barriers": ("BAR",), "global_loads": ("LDG", "LDGSTS"), "global_stores": ("STG",),
             "shared": ("LDS", "STS", "LDSM"), "shuffles": ("SHFL",),
             "mma": ("HGMMA", "HMMA", "QGMMA", "IMMA"), "atomics": ("ATOMG", "RED", "ATOMS")}


def _opcode(text: str) -> str:
    """A SASS instruction's opcode before its first dot, its predicate dropped."""
    return _PREDICATE.sub("", text.strip()).split(" ")[0].split(".")[0]


def sass_loops(sass: str, least: int = 16) -> list[dict]:
    """The loops of a kernel's SASS (``cuobjdump -sass``): each backward branch's range, in
    address order, with its instruction count and what they are (``_LOOP_OPS``); an outer
    loop's counts include its inner loops'. Ranges under ``least`` instructions (spin waits,
    tiny copies) are left out. Static counts a warp issues per iteration, not a profile: the
    currency of "instructions a tile" in docs/PERF.md."""
    lines = [(int(a, 16), text.strip()) for a, text in _SASS_LINE.findall(sass)]
    index = {address: i for i, (address, _) in enumerate(lines)}
    loops = []
    for i, (address, text) in enumerate(lines):
        branch = _BRANCH.search(text)
        if branch is None or int(branch.group(1), 16) > address:
            continue
        start = index.get(int(branch.group(1), 16))
        if start is None or i - start + 1 < least:
            continue
        texts = [_PREDICATE.sub("", t.strip()) for _, t in lines[start:i + 1]]
        ops = [_opcode(t) for t in texts]
        loops.append({"at": f"{lines[start][0]:#x}", "instructions": len(ops),
                      **{name: sum(op in kinds for op in ops) for name, kinds in
                         _LOOP_OPS.items()}, "exps_under_mma": _exps_under_mma(texts)})
    return sorted(loops, key=lambda loop: int(loop["at"], 16))


def _exps_under_mma(texts: list[str]) -> int:
    """The exps (``MUFU.EX2``) a warp issues in a loop body while its warp-group MMAs run: after
    an ``HGMMA`` and before the ``WARPGROUP.DEPBAR`` that waits for it, around the loop's back
    edge too. A softmax whose exps all wait for the scores' MMAs first has none; one that
    overlaps them (``sparse_attn``'s AHEAD) has its exps here."""
    def scan(flying: bool) -> tuple[bool, int]:
        count = 0
        for text in texts:
            if text.startswith("HGMMA"):
                flying = True
            elif text.startswith("WARPGROUP.DEPBAR"):
                flying = False
            elif flying and text.startswith("MUFU.EX2"):
                count += 1
        return flying, count

    flying, _ = scan(False)      # what is in flight at the back edge
    return scan(flying)[1]


# instructions that write no register (their first operand is read, or is no register)
_NO_DESTINATION = {"STG", "STS", "ST", "STL", "RED", "REDG", "BAR", "BRA", "EXIT", "MEMBAR",
                   "CCTL", "ERRBAR", "CGAERRBAR", "BSSY", "BSYNC", "WARPSYNC", "NOP", "RET",
                   "CALL", "ACQBULK", "PREEXIT", "DEPBAR", "LDGDEPBAR", "YIELD"}
_GLOBAL_LOADS = {"LDG"}
_REGISTER = re.compile(r"\bR(\d+)(\.64)?\b")


def _registers(operand: str, width: int = 1) -> set[int]:
    """The registers an operand names: R7, R6.64 (R6 and R7); ``width`` registers from a
    destination's first (a 128-bit load's: 4)."""
    regs = set()
    for number, pair in _REGISTER.findall(operand):
        n = int(number)
        regs.update(range(n, n + max(width, 2 if pair else 1)))
    return regs


def finish_waits(sass: str) -> dict | None:
    """How the program that finishes a launch (the code after its last ``ATOMG``: the arrival
    of ``launch.last_to_arrive``) waits for global memory — None without one. Walks that code
    once in address order (a loop's body once), keeping the registers outstanding global loads
    will write; an instruction that reads one waits, and the loads issued before it count as
    arrived. → ``loads``: how many loads each wait was for, in order; ``in_loops``: how many
    of those waits are inside a loop (a backward branch's range), so come again every
    iteration. One load a wait is a finisher that issues a load and waits for it before the
    next (docs/PERF.md, session 21): a long list of them is a chain of trips to L2."""
    lines = [(int(a, 16), _PREDICATE.sub("", text.strip()))
             for a, text in _SASS_LINE.findall(sass)]
    arrivals = [i for i, (_, text) in enumerate(lines) if _opcode(text) == "ATOMG"]
    if not arrivals:
        return None
    ranges = [(int(branch.group(1), 16), address) for address, text in lines
              if (branch := _BRANCH.search(text)) and int(branch.group(1), 16) <= address]
    pending: set[int] = set()
    issued = 0
    waits: list[int] = []
    in_loops = 0
    for address, text in lines[arrivals[-1] + 1:]:
        op = _opcode(text)
        fields = text.split(None, 1)
        operands = [o.strip() for o in fields[1].split(",")] if len(fields) > 1 else []
        writes = bool(operands) and op not in _NO_DESTINATION and operands[0].startswith("R")
        reads = set().union(*(_registers(o) for o in operands[1 if writes else 0:]))
        if pending & reads:
            waits.append(issued)
            in_loops += any(start <= address <= end for start, end in ranges)
            pending, issued = set(), 0
        if writes:
            width = {"128": 4, "64": 2}.get(text.split(" ")[0].split(".")[-1], 1)
            dest = _registers(operands[0], width if op in _GLOBAL_LOADS else 1)
            if op in _GLOBAL_LOADS:
                pending |= dest
                issued += 1
            else:
                pending -= dest
    return {"loads": waits, "in_loops": in_loops}


# instructions that may touch global memory (generic LD / ST included); shared memory's are the
# program's own and may come before the grid's wait
_GLOBAL_MEMORY = {"LDG", "STG", "LDGSTS", "ATOMG", "ATOM", "RED", "REDG", "LD", "ST", "UBLKCP",
                  "UTMALDG", "UTMASTG", "CCTL"}
# an L2 prefetch (PTX ``prefetch.global.L2``): the one cache-control form allowed before the wait
_PREFETCH = re.compile(r"CCTL\.E\.PF2\b")


def grid_wait(sass: str) -> dict:
    """Where a kernel launched to overlap the launch before it (``launch.pdl``) waits for that
    launch: ``wait`` — "first" (``ACQBULK``, PTX ``griddepcontrol.wait``, before the first
    instruction that may touch global memory: the kernel cannot read what the launch before
    it has not finished writing, nor overwrite what it still reads), "late" (some such
    instruction comes before it: a race) or "none" (no wait: the kernel must not be launched
    that way); ``lets_next_start``: it has ``PREEXIT`` (``griddepcontrol.launch_dependents``);
    ``prefetches``: the L2 prefetches before the wait (``CCTL.E.PF2``,
    ``launch.grid_entry_prefetching``), which read nothing into the program and may come first."""
    lines = [_PREDICATE.sub("", text.strip()) for _, text in _SASS_LINE.findall(sass)]
    ops = [_opcode(text) for text in lines]
    lets_next_start = "PREEXIT" in ops
    if "ACQBULK" not in ops:
        return {"wait": "none", "lets_next_start": lets_next_start, "prefetches": 0}
    before = lines[:ops.index("ACQBULK")]
    prefetches = sum(bool(_PREFETCH.match(text)) for text in before)
    touches = {_opcode(text) for text in before if not _PREFETCH.match(text)}
    return {"wait": "late" if _GLOBAL_MEMORY & touches else "first",
            "lets_next_start": lets_next_start, "prefetches": prefetches}


def pipelined(loads: dict, loops: list[dict]) -> bool:
    """Whether a kernel whose loops issue tensor-core MMAs loads their operands asynchronously
    (``cp.async``: Triton's software pipeline, a few steps ahead); a kernel without such loops
    passes. One that fails waits for its loads at every step: the pipeliner takes only
    innermost loops, and a loop inside the K loop — ``wo_b``'s sum of ``wo_a``'s splits, until
    session 18 — stops it (run 3: 90 µs where the same bytes took 18). ``loads``:
    ``global_loads``' counts, ``loops``: ``sass_loops``'."""
    return loads.get("async", 0) > 0 or not any(loop["mma"] for loop in loops)


def sass(cubin: bytes) -> str:
    """The cubin's SASS, as ``cuobjdump -sass`` prints it."""
    return _cuobjdump(cubin, "-sass")


def launched_kernels() -> list[str]:
    """Every kernel a wrapper in model/kernels launches (``name[grid](...)`` in its module)."""
    import model.kernels as pkg
    names = []
    for info in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"model.kernels.{info.name}")
        source = Path(module.__file__).read_text()
        for name, value in vars(module).items():
            if isinstance(value, JITFunction) and re.search(rf"\b{name}\[", source):
                names.append(name)
    return sorted(set(names))
