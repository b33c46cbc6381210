"""Official-format checkpoints: ``config.json`` + ``model.safetensors.index.json`` + shards with the
reference tensor names (fact sheet §3).

Shards are memory-mapped (copy-on-write, never written): tensors that stay in checkpoint format
(FP4 experts and their scales) are views of the mapped file, so resident memory follows what is
touched. Every problem — missing file, corrupt or truncated shard, missing tensor, wrong shape or
dtype — raises one ``CheckpointError`` naming the tensor and the file.
"""

from __future__ import annotations

import json
import mmap
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model.config import ConfigError, ModelConfig

INDEX_NAME = "model.safetensors.index.json"
DTYPES: dict[str, torch.dtype] = {
    "F8_E4M3": torch.float8_e4m3fn, "F8_E8M0": torch.float8_e8m0fnu, "BF16": torch.bfloat16,
    "F32": torch.float32, "F16": torch.float16, "I8": torch.int8, "U8": torch.uint8,
    "I32": torch.int32, "I64": torch.int64,
}
NAMES = {v: k for k, v in DTYPES.items()}
# tensors whose on-disk dtype varies between releases / dumps (fact sheet §7.5): cast on load
ALTERNATE_DTYPES = {"ape": {"F32", "BF16"}, "tid2eid": {"I64", "I32"}}


class CheckpointError(Exception):
    """A checkpoint cannot be used; the message names the file and, if any, the tensor."""


@dataclass(frozen=True, slots=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


@dataclass(slots=True)
class Shard:
    path: Path
    entries: dict[str, TensorEntry]
    _map: mmap.mmap | None = None
    _bytes: torch.Tensor | None = None  # the whole mapping as one uint8 tensor

    @classmethod
    def open(cls, path: Path) -> Shard:
        """Parse and validate the header; the data size must match the file size exactly."""
        try:
            size = path.stat().st_size
            with path.open("rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise CheckpointError(f"{path}: truncated shard (no safetensors header)")
                (n,) = struct.unpack("<Q", head)
                if n > size - 8 or n > 100_000_000:
                    raise CheckpointError(f"{path}: corrupt or truncated shard (header length {n})")
                header = json.loads(f.read(n).decode("utf-8"))
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read shard ({exc.strerror})") from exc
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: corrupt shard header ({exc})") from exc
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: corrupt shard header")
        header.pop("__metadata__", None)
        entries, data_end = {}, 0
        for name, info in header.items():
            try:
                dtype, shape = info["dtype"], tuple(int(d) for d in info["shape"])
                begin, end = (int(o) for o in info["data_offsets"])
            except (KeyError, TypeError, ValueError) as exc:
                raise CheckpointError(f"{path}: corrupt header entry for tensor {name}") from exc
            if dtype not in DTYPES:
                raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {dtype}")
            numel = 1
            for d in shape:
                numel *= d
            if end - begin != numel * DTYPES[dtype].itemsize or begin < 0:
                raise CheckpointError(f"{path}: corrupt header: tensor {name} byte range "
                                      f"does not match its shape {list(shape)}")
            entries[name] = TensorEntry(dtype, shape, 8 + n + begin, 8 + n + end)
            data_end = max(data_end, end)
        if size != 8 + n + data_end:
            raise CheckpointError(f"{path}: truncated or corrupt shard: {size} bytes on disk, "
                                  f"header describes {8 + n + data_end}")
        return cls(path, entries)

    def tensor(self, name: str) -> torch.Tensor:
        """A view of the mapped file. Tensors of one shard share one storage (the whole mapping)
        when their offsets are aligned, so the routed experts of a layer can be addressed from
        one base tensor without copying (model/layers/expert_bank.py)."""
        entry = self.entries[name]
        if self._map is None:
            with self.path.open("rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            self._bytes = torch.frombuffer(self._map, dtype=torch.uint8)
        nbytes = entry.end - entry.start
        dtype = DTYPES[entry.dtype]
        if nbytes == 0:
            return torch.empty(entry.shape, dtype=dtype)
        if entry.start % dtype.itemsize == 0:
            raw = self._bytes[entry.start : entry.end]
        else:  # unaligned for its dtype: a storage of its own
            raw = torch.frombuffer(self._map, dtype=torch.uint8, count=nbytes, offset=entry.start)
        return raw.view(dtype).view(entry.shape)


@dataclass(slots=True)
class Checkpoint:
    root: Path
    config: ModelConfig
    weight_map: dict[str, str]
    shards: dict[str, Shard] = field(default_factory=dict)

    @classmethod
    def open(cls, root: str | Path) -> Checkpoint:
        root = Path(root)
        if not root.is_dir():
            raise CheckpointError(f"{root}: not a checkpoint directory")
        try:
            config = ModelConfig.from_file(root / "config.json")
        except ConfigError as exc:
            raise CheckpointError(str(exc)) from exc
        index_path = root / INDEX_NAME
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
            weight_map = dict(index["weight_map"])
        except FileNotFoundError as exc:
            raise CheckpointError(f"{index_path}: missing") from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index_path}: unreadable index ({exc})") from exc
        return cls(root, config, weight_map)

    def shard(self, filename: str) -> Shard:
        if filename not in self.shards:
            path = self.root / filename
            if not path.is_file():
                raise CheckpointError(f"{path}: shard listed in {INDEX_NAME} is missing")
            self.shards[filename] = Shard.open(path)
        return self.shards[filename]

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """The tensor ``name`` checked against the expected shape and dtype."""
        filename = self.weight_map.get(name)
        if filename is None:
            raise CheckpointError(f"tensor {name} is missing from {self.root / INDEX_NAME}")
        shard = self.shard(filename)
        entry = shard.entries.get(name)
        if entry is None:
            raise CheckpointError(f"tensor {name} is missing from {shard.path}")
        if entry.shape != tuple(shape):
            raise CheckpointError(f"tensor {name} in {shard.path} has shape {list(entry.shape)}, "
                                  f"expected {list(shape)}")
        expected = NAMES[dtype]
        allowed = ALTERNATE_DTYPES.get(name.rsplit(".", 1)[-1], {expected})
        if entry.dtype != expected and entry.dtype not in allowed:
            raise CheckpointError(f"tensor {name} in {shard.path} has dtype {entry.dtype}, "
                                  f"expected {expected}")
        tensor = shard.tensor(name)
        return tensor if tensor.dtype == dtype else tensor.to(dtype)


class Progress:
    """A one-line progress bar on stderr; ``callback(done, total)`` (optional) hears every step."""

    def __init__(self, total: int, label: str, enabled: bool = True,
                 callback: Callable[[int, int], None] | None = None) -> None:
        self.total, self.label, self.enabled, self.done, self._shown = total, label, enabled, 0, -1
        self.callback = callback

    def step(self, n: int = 1) -> None:
        self.done += n
        if self.callback is not None:
            self.callback(self.done, self.total)
        if not self.enabled:
            return
        if not sys.stderr.isatty():  # logs: one line at the end
            if self.done >= self.total:
                sys.stderr.write(f"{self.label}: {self.total} tensors\n")
            return
        percent = 100 * self.done // max(self.total, 1)
        if percent != self._shown or self.done >= self.total:
            self._shown = percent
            bar = "#" * (percent // 4)
            sys.stderr.write(f"\r{self.label} [{bar:<25}] {self.done}/{self.total} tensors")
            if self.done >= self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def load_weights(model: torch.nn.Module, ckpt: Checkpoint, device: torch.device | str = "cpu",
                 progress: bool = True, on_progress: Callable[[int, int], None] | None = None) -> None:
    """Fill every (meta) buffer of ``model`` from the checkpoint, by its official name.
    ``progress`` draws a bar on stderr; ``on_progress(done, total)`` hears each tensor."""
    names = [(n, b) for n, b in model.named_buffers() if b.is_meta]
    bar = Progress(len(names), f"loading {ckpt.root.name}", enabled=progress, callback=on_progress)
    for name, buf in names:
        tensor = ckpt.get(name, tuple(buf.shape), buf.dtype)
        if torch.device(device).type != "cpu":
            tensor = tensor.to(device)
        owner_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(owner_name) if owner_name else model, leaf, tensor)
        bar.step()
