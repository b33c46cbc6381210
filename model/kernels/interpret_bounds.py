"""Every load, store and atomic of an interpreted Triton launch checked against the memory the
launch may touch: a CPU test fails where a GPU would read out of bounds.

On a GPU an access outside every allocation is an illegal address — the context dies, and a
benchmark run with it — and one past the end of a tensor but inside the caching allocator's
block reads another tensor's bytes without a word. The interpreter does neither reliably: it
reads whatever the host address holds. ``install()`` makes it check each access of an active
lane (masked-off lanes are never dereferenced) against

- the storages of the launch's tensor arguments (a view may reach its whole storage), and
- the storages of tensors whose addresses went into a table a kernel dereferences
  (``launch.address``: TABLE-mode rows, the batched compressor's and row-append's items).

An access outside them raises ``OutOfBounds`` naming the kernel, the address and the nearest
tensor's end. Installed for every test that interprets kernels (tests/conftest.py); process-
wide, once."""

from __future__ import annotations

import numpy as np
import torch
from triton.runtime import interpreter as ti

from model.kernels import launch

_installed = False
_launch: list[tuple[str, np.ndarray, np.ndarray]] = []   # (kernel, starts, ends) while one runs


class OutOfBounds(AssertionError):
    """An interpreted kernel touched memory outside every tensor its launch may touch."""


def _ranges(tensors: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, merged [start, end) byte ranges of the tensors' storages."""
    spans = sorted({(s.data_ptr(), s.data_ptr() + s.nbytes())
                    for s in (t.untyped_storage() for t in tensors) if s.nbytes()})
    merged: list[list[int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    arr = np.array(merged, dtype=np.uint64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def _tensors(values) -> list[torch.Tensor]:
    out = []
    for v in values:
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, tuple):
            out += _tensors(v)
    return out


def check(ptrs: np.ndarray, active: np.ndarray | None, size: int, what: str) -> None:
    """Raise unless every active address [a, a + size) lies in one range of the running
    launch (nothing to check outside a launch)."""
    if not _launch:
        return
    kernel, starts, ends = _launch[-1]
    addr = np.asarray(ptrs, dtype=np.uint64).reshape(-1)
    if active is not None:
        addr = addr[np.broadcast_to(np.asarray(active, dtype=bool), np.shape(ptrs)).reshape(-1)]
    if not addr.size:
        return
    i = np.searchsorted(starts, addr, side="right").astype(np.int64) - 1
    ok = (i >= 0) & (addr + np.uint64(size) <= ends[np.maximum(i, 0)])
    if ok.all():
        return
    bad = int(addr[~ok][0])
    j = int(i[~ok][0])
    near = (f"{bad - int(ends[j])} bytes past a tensor's end" if j >= 0 and bad >= int(ends[j])
            else "below every tensor")
    raise OutOfBounds(f"{kernel}: a {what} of {size} bytes at 0x{bad:x}, {near}")


def _element_size(ptr_handle) -> int:
    return max(1, ptr_handle.get_element_ty().primitive_bitwidth // 8)


def _wrap_call(call):
    def run(self, *args_dev, **kwargs):
        tensors = _tensors(args_dev) + _tensors(kwargs.values()) + launch.addressed()
        _launch.append((getattr(self.fn, "__name__", "kernel"), *_ranges(tensors)))
        try:
            return call(self, *args_dev, **kwargs)
        finally:
            _launch.pop()
    return run


def install() -> None:
    """Check every interpreted access from now on (idempotent)."""
    global _installed
    if _installed:
        return
    b = ti.InterpreterBuilder
    load, store = b.create_masked_load, b.create_masked_store
    rmw, cas = b.create_atomic_rmw, b.create_atomic_cas

    def masked_load(self, ptrs, mask, other, cache_policy, is_volatile):
        check(ptrs.data, mask.data, _element_size(ptrs), "load")
        return load(self, ptrs, mask, other, cache_policy, is_volatile)

    def masked_store(self, ptrs, value, mask, cache_policy):
        check(ptrs.data, mask.data, _element_size(ptrs), "store")
        return store(self, ptrs, value, mask, cache_policy)

    def atomic_rmw(self, rmw_op, ptr, val, mask, sem, scope):
        check(ptr.data, mask.data, _element_size(ptr), "atomic")
        return rmw(self, rmw_op, ptr, val, mask, sem, scope)

    def atomic_cas(self, ptr, cmp, val, sem, scope):
        check(ptr.data, None, _element_size(ptr), "atomic")
        return cas(self, ptr, cmp, val, sem, scope)

    b.create_masked_load, b.create_masked_store = masked_load, masked_store
    b.create_atomic_rmw, b.create_atomic_cas = atomic_rmw, atomic_cas
    ti.GridExecutor.__call__ = _wrap_call(ti.GridExecutor.__call__)
    launch.record_addresses()
    _installed = True
