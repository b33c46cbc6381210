"""The prefix cache's on-disk tier: one ``<key>.pt`` file per block under a byte budget.

    disk = DiskBlocks(directory, budget_bytes)
    disk.load(key) -> dict | None      # a miss for absent, torn or foreign files, never an error
    disk.save(key, payload)            # atomic (write + rename), then evict to the budget

Eviction is least-recently-used over the files: a load or a save marks the block used (its
mtime, so the order survives a restart), and past ``budget_bytes`` the oldest files go first.
``PrefixCache.match`` touches a matched chain deepest-first, leaving its root the most recent, so
a prefix loses its leaves before its root (a child block is useless without its parents).
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

DEFAULT_DISK_BYTES = 64 << 30


@dataclass(slots=True)
class DiskBlocks:
    directory: Path
    budget_bytes: int = DEFAULT_DISK_BYTES
    files: OrderedDict[str, int] = field(default_factory=OrderedDict)  # key → bytes, LRU first
    used_bytes: int = 0

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        found = []
        for path in self.directory.glob("*.pt"):
            try:
                st = path.stat()
            except OSError:
                continue
            found.append((st.st_mtime_ns, path.stem, st.st_size))
        for _, key, size in sorted(found):
            self.files[key] = size
            self.used_bytes += size
        self._evict()

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.pt"

    def load(self, key: str) -> dict[str, Any] | None:
        if key not in self.files:
            return None
        path = self.path(key)
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, KeyError, ValueError, EOFError):
            self._forget(key)
            return None
        self.touch([key])
        return payload

    def touch(self, keys: list[str]) -> None:
        """Mark ``keys`` used, in order (the last is the most recent)."""
        now = time.time()
        for i, key in enumerate(keys):
            if key in self.files:
                self.files.move_to_end(key)
                try:
                    stamp = now + i * 1e-6
                    os.utime(self.path(key), (stamp, stamp))
                except OSError:
                    self._forget(key)

    def save(self, key: str, payload: dict[str, Any]) -> None:
        path = self.path(key)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(payload, tmp)
        os.replace(tmp, path)
        size = path.stat().st_size
        self.used_bytes += size - self.files.pop(key, 0)
        self.files[key] = size
        self._evict(keep=key)

    def _forget(self, key: str) -> None:
        self.used_bytes -= self.files.pop(key, 0)

    def _evict(self, keep: str | None = None) -> None:
        while self.used_bytes > self.budget_bytes and self.files:
            key = next(iter(self.files))
            if key == keep:
                break
            self._forget(key)
            try:
                self.path(key).unlink()
            except OSError:
                pass
