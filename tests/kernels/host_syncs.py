"""A recorder of host syncs (the host waiting for the device) for the kernel tests: a decode
step must not make any, or it cannot be captured in a CUDA graph and stalls the launch queue."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from model.op_audit import is_host_sync


class _HostSyncs(TorchDispatchMode):
    """Records every op that makes the host wait for the device on CUDA: .item() / int() /
    bool() of a tensor (_local_scalar_dense), nonzero / boolean-mask indexing / masked_select /
    bincount / unique (output size read back); and, by patching (dispatch does not see them),
    .tolist() / .cpu() / .numpy() of a tensor."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.seen: list[str] = []
        for name in ("tolist", "cpu", "numpy"):
            monkeypatch.setattr(torch.Tensor, name, self._forbid(name))

    def _forbid(self, name):
        def call(tensor, *args, **kwargs):
            self.seen.append(f"Tensor.{name}")
            raise RuntimeError(f"host sync: Tensor.{name}")
        return call

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if is_host_sync(func, args, kwargs):
            self.seen.append(func._schema.name)
        return func(*args, **(kwargs or {}))


def sync_ops(monkeypatch, fn) -> list[str]:
    with monkeypatch.context() as patch, _HostSyncs(patch) as rec:
        try:
            fn()
        except RuntimeError:
            pass  # a forbidden Tensor method raised; it is recorded
    return rec.seen
