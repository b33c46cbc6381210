"""What a piece of model code asks of the device, counted on any machine.

    with OpAudit() as audit:
        engine.forward(seq, [token])
    audit.launches()      # torch ops that launch a kernel + Triton kernel launches
    audit.syncs           # ops after which the host waits for the device, by op
    audit.overlapped      # Triton launches that may overlap the one before (launch.pdl)

A decode step on a GPU is bound by the host when it issues thousands of small kernels (each
costs the host microseconds to launch) or waits for the device (a sync also rules out CUDA
graph capture). Both are properties of the code, not of the device, so they are counted here
from the torch dispatcher and Triton's launcher — on a CPU too, where Triton runs in its
interpreter (``TRITON_INTERPRET=1``; ops the interpreter itself issues are not counted).
"""

from __future__ import annotations

import collections
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# ops that only make views or metadata, or allocate without writing: no kernel launch
NO_LAUNCH_OPS = frozenset({
    "aten::view", "aten::_unsafe_view", "aten::reshape", "aten::slice", "aten::select",
    "aten::unsqueeze", "aten::squeeze", "aten::flatten", "aten::unflatten", "aten::expand",
    "aten::permute", "aten::transpose", "aten::t", "aten::alias", "aten::detach",
    "aten::detach_", "aten::as_strided", "aten::split", "aten::split_with_sizes",
    "aten::chunk", "aten::unbind", "aten::lift_fresh", "aten::empty", "aten::empty_strided",
    "aten::empty_like", "aten::new_empty", "aten::new_empty_strided", "aten::to",
    "aten::contiguous", "aten::numel", "aten::size", "aten::stride", "aten::is_same_size",
    "aten::_reshape_alias", "aten::view_as", "aten::expand_as", "aten::set_",
})
# ops after which the host must wait for the device: a value read back (.item(), bool(),
# int()), or an output whose size depends on values
SYNCING_OPS = frozenset({
    "aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::bincount",
    "aten::_unique", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive",
    "aten::item",
})

# ops that make a tensor from host (Python) data: on a GPU a host→device copy, which a CUDA
# graph cannot capture (model/decode_graphs.py)
HOST_DATA_OPS = frozenset({"aten::lift_fresh", "aten::lift_fresh_copy"})


def is_host_sync(func: Any, args: Any, kwargs: Any = None) -> bool:
    """Whether this dispatched op makes the host wait for the device."""
    name = func._schema.name
    if name in SYNCING_OPS:
        return True
    if name == "aten::repeat_interleave":   # tensor repeats: the output size is read back
        return func._overloadname != "self_int" and not (kwargs or {}).get("output_size")
    return _bool_index(name, args)


class OpAudit(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()
        self.triton: collections.Counter[str] = collections.Counter()
        # of those, the launches that may overlap the one before (``launch.pdl``'s options)
        self.overlapped: collections.Counter[str] = collections.Counter()
        self.syncs: collections.Counter[str] = collections.Counter()   # op → host syncs
        self._inside_triton = 0
        self._restore: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> OpAudit:
        for cls in _triton_launchers():
            real = cls.run

            def run(fn: Any, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
                name = getattr(getattr(fn, "fn", fn), "__name__", "kernel")
                self.triton[name] += 1
                if kwargs.get("launch_pdl"):
                    self.overlapped[name] += 1
                self._inside_triton += 1
                try:
                    return _real(fn, *args, **kwargs)
                finally:
                    self._inside_triton -= 1

            self._restore.append((cls, "run", real))
            cls.run = run
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        for cls, name, real in reversed(self._restore):
            setattr(cls, name, real)
        self._restore.clear()
        super().__exit__(*exc)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if not self._inside_triton:
            name = func._schema.name
            self.ops[name] += 1
            if is_host_sync(func, args, kwargs):
                self.syncs[name] += 1
        return func(*args, **(kwargs or {}))

    def torch_launches(self) -> int:
        return sum(n for name, n in self.ops.items() if name not in NO_LAUNCH_OPS)

    def launches(self) -> int:
        return self.torch_launches() + sum(self.triton.values())

    def host_tensors(self) -> int:
        """Tensors made from host data (``torch.tensor(...)``): host→device copies on a GPU."""
        return sum(self.ops[name] for name in HOST_DATA_OPS)

    def top(self, n: int = 12) -> dict[str, int]:
        """The kernel-launching torch ops and Triton kernels seen most."""
        launching = collections.Counter({k: v for k, v in self.ops.items()
                                         if k not in NO_LAUNCH_OPS})
        launching.update({f"triton:{k}": v for k, v in self.triton.items()})
        return dict(launching.most_common(n))


def _bool_index(name: str, args: Any) -> bool:
    """Indexing with a boolean mask: the output size is read back from the device."""
    if not name.startswith("aten::index"):
        return False
    index = args[1] if len(args) > 1 else None
    items = index if isinstance(index, list | tuple) else [index]
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _triton_launchers() -> list[Any]:
    """The classes whose ``run`` launches a Triton kernel (compiled, and the interpreter's)."""
    out = []
    try:
        from triton.runtime.jit import JITFunction
        out.append(JITFunction)
        from triton.runtime.interpreter import InterpretedFunction
        out.append(InterpretedFunction)
    except ImportError:
        pass
    return out
