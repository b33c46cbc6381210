"""How many programs of a launch a GPU holds at once, how many rounds of its SMs a grid takes,
and the K split that takes the fewest.

A GPU runs a grid's programs in rounds: each SM holds as many programs as its registers,
shared memory and warp slots allow (``occupancy``), so a grid of P programs on S SMs at B an
SM runs in ⌈P / (S·B)⌉ rounds (``waves``: 1.29 waves take two rounds, the second mostly
idle). A split-K kernel chooses P: a GEMV over T output tiles in s splits runs T·s programs
of ⌈K blocks / s⌉ steps each. ``split_k`` picks the s with the fewest rounds × (steps + 1),
the + 1 being a program's fixed cost (its start, the partial it writes, the sum its last
split does) — where the old rule (``TARGET_PROGRAMS``: about 8 an SM of an H200) gave
``wo_b`` 1,024 programs at 6 an SM, two rounds of 8 steps, this gives 768, one round of 11.

The slots S·B of a launch come from the kernel as compiled (``resident_programs``): on a GPU,
Triton's compiled kernel's registers and shared memory with the device's limits and SM count;
inside ``cross_compile.CompileOnly`` (``bench compile`` on a CPU) the cubin's, with sm_90's
(an H200's 132 SMs); under the interpreter nothing is compiled and the wrappers keep the old
rule."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import NamedTuple, TypeVar

import torch
from triton.runtime import driver
from triton.runtime.jit import JITFunction

from model.kernels.launch import interpreting

# sm_90 per-SM limits (CUDA occupancy calculator: compute capability 9.0)
SM90 = {"regs": 65536, "reg_unit": 256, "max_warps": 64, "max_blocks": 32,
        "shared": 233472, "shared_per_block_reserved": 1024, "shared_per_block": 232448,
        "sms": 132}   # an H100 SXM's or H200's
TARGET_PROGRAMS = 1024   # the old rule's grid: ≈ 8 programs an SM of a 132-SM H200


def occupancy(regs: int, warps: int, shared: int, sm: dict | None = None) -> dict:
    """Blocks of ``warps`` warps resident per SM and the fraction of its warp slots they fill,
    with the limit that binds (registers, shared memory or warps); a kernel asking for more
    shared memory than one block may have cannot launch at all (0 blocks)."""
    sm = sm or SM90
    if shared > sm["shared_per_block"]:
        return {"blocks_per_sm": 0, "occupancy": 0.0, "limited_by": "shared"}
    unit = sm["reg_unit"]
    regs_per_warp = -(-max(regs, 1) * 32 // unit) * unit
    limits = {
        "registers": sm["regs"] // (regs_per_warp * warps),
        "shared": (sm["shared"] // (shared + sm["shared_per_block_reserved"])
                   if shared else sm["max_blocks"]),
        "warps": sm["max_warps"] // warps,
    }
    limits["blocks"] = sm["max_blocks"]
    bound = min(limits, key=limits.get)
    blocks = limits[bound]
    return {"blocks_per_sm": blocks, "occupancy": round(blocks * warps / sm["max_warps"], 3),
            "limited_by": bound}


def waves(programs: int | None, blocks_per_sm: int, sm: dict | None = None) -> float | None:
    """How many times the GPU's SMs fill with a launch's programs at ``blocks_per_sm``
    (``occupancy``): programs that take about the same time each run in ⌈waves⌉ rounds, so a
    launch of 1.2 waves takes about as long as one of 2 (the second round's few programs
    leave most SMs idle)."""
    if programs is None or blocks_per_sm == 0:
        return None
    return round(programs / ((sm or SM90)["sms"] * blocks_per_sm), 2)


@functools.lru_cache(maxsize=4096)   # pure, and asked at every decode launch: a loop once
def split_k(tiles: int, k_blocks: int, most: int, slots: int | None) -> tuple[int, int]:
    """(splits, K blocks a split) for ``tiles`` output programs over ``k_blocks`` K blocks, at
    most ``most`` splits (the caller's own cap: partial traffic, steps a split), none empty.

    ``slots`` None (nothing compiled: the interpreter): the old rule, splits until the grid
    has about TARGET_PROGRAMS programs. Else the splits with the fewest rounds of ``slots``
    programs (the GPU's SMs × the programs an SM holds) × (steps + 1); among equals fewer
    rounds, then more splits (more bytes in flight)."""
    most = max(1, min(most, k_blocks))
    if slots is None:
        s = max(1, min(TARGET_PROGRAMS // max(tiles, 1), most))
        per = math.ceil(k_blocks / s)
        return math.ceil(k_blocks / per), per
    best = None
    for asked in range(1, most + 1):
        per = math.ceil(k_blocks / asked)
        s = math.ceil(k_blocks / per)    # none empty
        rounds = math.ceil(tiles * s / max(1, slots))
        key = (rounds * (per + 1), rounds, -s)
        if best is None or key < best[0]:
            best = (key, s, per)
    return best[1], best[2]


def sm_limits(device: torch.device | None) -> dict:
    """The per-SM limits of ``device`` (a CUDA device: from its properties, sm_90's where torch
    does not say), or sm_90's (compiling for it without one: ``CompileOnly``)."""
    if device is None or device.type != "cuda":
        return SM90
    props = torch.cuda.get_device_properties(device)
    small = (props.major, props.minor) in ((7, 5), (8, 6), (8, 7), (8, 9))
    return {"regs": getattr(props, "regs_per_multiprocessor", SM90["regs"]), "reg_unit": 256,
            "max_warps": props.max_threads_per_multi_processor // 32,
            "max_blocks": 16 if small else 32,
            "shared": getattr(props, "shared_memory_per_multiprocessor", SM90["shared"]),
            "shared_per_block_reserved": 1024,
            "shared_per_block": getattr(props, "shared_memory_per_block_optin",
                                        SM90["shared_per_block"]),
            "sms": props.multi_processor_count}


# (kernel, device, the launch's options, its tensors' dtypes) → programs the device holds
_SLOTS: dict[tuple, int | None] = {}


def _registers(compiled) -> int:  # noqa: ANN001 (Triton's CompiledKernel)
    """Registers a thread of a compiled kernel: what the driver says when it loads it, or,
    compiling without a GPU (``CompileOnly``'s driver), what its cubin says."""
    registers = getattr(driver.active, "compile_only_registers", None)
    if registers is not None:
        return registers(compiled)
    compiled._init_handles()   # loads the module: n_regs is the driver's (Triton's tutorial way)
    return compiled.n_regs


def compiling() -> bool:
    """Whether launches compile for a GPU here (a CUDA device, or ``CompileOnly``), i.e.
    whether ``resident_programs`` can know anything: not under the interpreter."""
    if interpreting():
        return False
    return (hasattr(getattr(driver, "_active", None), "compile_only_registers")
            or torch.cuda.is_available())


def resident_programs(kernel: JITFunction, device: torch.device, options: dict,
                      dtypes: tuple, arguments: Callable[[], tuple]) -> int | None:
    """Programs of a launch ``kernel[grid](*arguments(), **options)`` that ``device`` holds at
    once — its SMs × the programs an SM holds, from the kernel's compiled form (compiled here
    if it was not: the launch would compile it anyway); None where nothing is compiled. Asked
    once per kernel, device, ``options`` (its constexprs and launch options) and ``dtypes``
    (its tensors'): ``arguments()`` (which may allocate) is called only then. A
    specialisation on an integer's value (Triton's divisibility by 16) shares its siblings'
    answer."""
    if not compiling():
        return None
    key = (kernel.fn.__name__, str(device), tuple(sorted(options.items())), dtypes)
    if key not in _SLOTS:
        try:
            compiled = kernel.warmup(*arguments(), grid=(1,), **options)
            regs, limits = _registers(compiled), sm_limits(device)
        except Exception as exc:  # noqa: BLE001 — a Triton or torch that says less or differs:
            # the plan is an optimisation (a kernel that cannot compile fails at its launch)
            warnings.warn(f"{kernel.fn.__name__}: no residency ({type(exc).__name__}: "
                          f"{str(exc)[:200]}); its K splits keep the old rule", stacklevel=2)
            _SLOTS[key] = None
        else:
            blocks = occupancy(regs, compiled.metadata.num_warps, int(compiled.metadata.shared),
                               limits)["blocks_per_sm"]
            _SLOTS[key] = blocks * limits["sms"] or None   # 0: it cannot launch at all
    return _SLOTS[key]


class Launch(NamedTuple):
    """A launch as ``resident_programs`` asks about it: ``kernel[grid](*arguments(),
    **options)``, its tensors of ``dtypes``."""
    kernel: JITFunction
    options: dict
    dtypes: tuple
    arguments: Callable[[], tuple]


Plan = TypeVar("Plan")


def plan_by_residency(plan: Callable[[int | None], Plan],
                      launch: Callable[[Plan], Launch | None], device: torch.device,
                      rounds: bool = True) -> Plan:
    """A split-K wrapper's plan: ``plan(None)`` (from the shapes alone: the old rule), then —
    where ``rounds`` (a launch choice), launches compile here and ``launch`` says that plan
    splits K (the launch it makes; None: one split, or splits the caller fixed) — ``plan``
    again with the programs of that launch ``device`` holds at once."""
    first = plan(None)
    if not rounds or not compiling():
        return first
    asked = launch(first)
    if asked is None:
        return first
    return plan(resident_programs(asked.kernel, device, asked.options, asked.dtypes,
                                  asked.arguments))
