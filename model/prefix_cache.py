"""Prefix reuse over the compressed KV cache (fact sheet §2.9, paper §3.6).

The cache is paged by token blocks of ``block_tokens`` raw tokens (lcm of 128 and the
compression ratios: 128 for V4 = 32 CSA rows + 1 HCA row per layer). A block is keyed by a
hash chained over the checkpoint fingerprint and every token up to its end, so equal keys
mean equal prefixes. A block holds, per layer, the compressed rows it produced (CSA rows,
indexer keys, HCA rows) and — when ``state`` is kept — the per-sequence state at its end
boundary: the sliding-window KV rows and the CSA compressor's overlap half. At a block boundary
every compressor block is closed, so there is no open compressor tail to keep. Rows are kept
in the format the live cache holds them (model/cache.py): under ``native`` numerics the KV rows
and the indexer keys are packed uint8 rows (FP8 / FP4), sliced, stored and concatenated as is.

A request whose tokens match cached blocks restores a ``SequenceCache`` at the deepest matched
block that has state and recomputes only the tokens after it (the uncompressed tail). Blocks
live in memory (LRU under a byte budget) and, with ``disk_dir``, on disk, one file per block
(model/prefix_disk.py: LRU under ``disk_budget_bytes``), so a restarted process reuses them too.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model.cache import CompressorState, LayerCache, SequenceCache
from model.prefix_disk import DEFAULT_DISK_BYTES, DiskBlocks

Tensor = torch.Tensor


@dataclass(slots=True)
class LayerBlock:
    rows: Tensor | None = None         # main compressed rows of this block [b, B/ratio, d]
    index_rows: Tensor | None = None   # indexer keys of this block (CSA layers)
    window: Tensor | None = None       # window KV at the block's end (state blocks only)
    prev: tuple[Tensor, Tensor] | None = None        # CSA overlap half (kv, score) at the end
    index_prev: tuple[Tensor, Tensor] | None = None  # same for the indexer's compressor


@dataclass(slots=True)
class CachedBlock:
    key: str
    tokens: tuple[int, ...]
    layers: list[LayerBlock]
    has_state: bool

    def nbytes(self) -> int:
        total = 0
        for lb in self.layers:
            tensors = [lb.rows, lb.index_rows, lb.window, *(lb.prev or ()), *(lb.index_prev or ())]
            total += sum(t.numel() * t.element_size() for t in tensors if t is not None)
        return total


def block_size(ratios: Sequence[int], base: int = 128) -> int:
    size = base
    for r in ratios:
        if r:
            size = math.lcm(size, r)
    return size


def checkpoint_fingerprint(checkpoint_dir: str | Path, extra: str = "") -> str:
    """Hash of the config, the shard index and each shard's name, size, head and tail bytes."""
    folder = Path(checkpoint_dir)
    h = hashlib.blake2b(extra.encode(), digest_size=16)
    for name in ("config.json", "model.safetensors.index.json"):
        path = folder / name
        if path.is_file():
            h.update(path.read_bytes())
    for shard in sorted(folder.glob("*.safetensors")):
        size = shard.stat().st_size
        h.update(f"{shard.name}:{size}".encode())
        with shard.open("rb") as f:
            h.update(f.read(1 << 16))
            f.seek(max(0, size - (1 << 16)))
            h.update(f.read(1 << 16))
    return h.hexdigest()


def chain_keys(root: str, tokens: Sequence[int], block: int) -> list[str]:
    """Key of every full block of ``tokens``: hash(previous key, block tokens)."""
    keys, parent = [], root
    for start in range(0, len(tokens) - block + 1, block):
        h = hashlib.blake2b(parent.encode(), digest_size=16)
        h.update(b",".join(str(t).encode() for t in tokens[start:start + block]))
        parent = h.hexdigest()
        keys.append(parent)
    return keys


@dataclass(slots=True)
class PrefixCache:
    root: str                      # checkpoint fingerprint (+ numerics): roots every key chain
    block_tokens: int
    budget_bytes: int = 1 << 30
    disk_dir: Path | None = None
    state_every: int = 1           # keep boundary state on every n-th block (and chunk ends)
    blocks: OrderedDict[str, CachedBlock] = field(default_factory=OrderedDict)
    used_bytes: int = 0
    disk_budget_bytes: int = DEFAULT_DISK_BYTES
    disk: DiskBlocks | None = None

    def __post_init__(self) -> None:
        if self.disk_dir is not None:
            self.disk_dir = Path(self.disk_dir) / self.root[:16]
            self.disk = DiskBlocks(self.disk_dir, self.disk_budget_bytes)

    # -- lookup --------------------------------------------------------------------------
    def get(self, key: str) -> CachedBlock | None:
        block = self.blocks.get(key)
        if block is not None:
            self.blocks.move_to_end(key)
            return block
        payload = self.disk.load(key) if self.disk is not None else None
        if payload is None:
            return None
        try:
            block = _from_dict(payload)
        except (RuntimeError, KeyError, ValueError, TypeError):
            return None  # a foreign file is a miss, never an error
        self._remember(block)
        return block

    def match(self, tokens: Sequence[int], limit: int) -> list[CachedBlock]:
        """The longest run of cached blocks that prefixes ``tokens[:limit]`` and ends on a
        block with state (empty when nothing usable matches)."""
        found: list[CachedBlock] = []
        usable = 0
        for i, key in enumerate(chain_keys(self.root, tokens[:limit], self.block_tokens)):
            block = self.get(key)
            start = i * self.block_tokens
            if block is None or block.tokens != tuple(tokens[start:start + self.block_tokens]):
                break
            found.append(block)
            if block.has_state:
                usable = len(found)
        self.touch([b.key for b in found])
        return found[:usable]

    def touch(self, keys: Sequence[str]) -> None:
        """Mark a chain as just used, deepest block first, so the LRU order evicts the leaves
        of a prefix before its root (a child is useless without its parents)."""
        for key in reversed(keys):
            if key in self.blocks:
                self.blocks.move_to_end(key)
        if self.disk is not None:
            self.disk.touch(list(reversed(keys)))

    # -- insert --------------------------------------------------------------------------
    def put(self, block: CachedBlock) -> None:
        old = self.blocks.get(block.key)
        if old is not None and (old.has_state or not block.has_state):
            self.blocks.move_to_end(block.key)
            return
        self._remember(block)
        if self.disk is not None:
            self.disk.save(block.key, _to_dict(block))

    def _remember(self, block: CachedBlock) -> None:
        old = self.blocks.pop(block.key, None)
        if old is not None:
            self.used_bytes -= old.nbytes()
        self.blocks[block.key] = block
        self.used_bytes += block.nbytes()
        while self.used_bytes > self.budget_bytes and len(self.blocks) > 1:
            _, evicted = self.blocks.popitem(last=False)
            self.used_bytes -= evicted.nbytes()

    def clear_memory(self) -> None:
        self.blocks.clear()
        self.used_bytes = 0


# -- restore / capture ---------------------------------------------------------------------
def restore(blocks: Sequence[CachedBlock], n_layers: int, device: torch.device) -> SequenceCache:
    """A SequenceCache positioned at the end of ``blocks`` (the last one must have state)."""
    cache = SequenceCache.empty(n_layers)
    last = blocks[-1]
    for i, layer in enumerate(cache.layers):
        parts = [b.layers[i] for b in blocks]
        layer.window = _dev(last.layers[i].window, device)
        if parts[0].rows is not None:
            layer.compressor.rows = torch.cat([p.rows for p in parts], dim=1).to(device)
            layer.compressor.prev_kv, layer.compressor.prev_score = _pair(last.layers[i].prev, device)
        if parts[0].index_rows is not None:
            layer.indexer.rows = torch.cat([p.index_rows for p in parts], dim=1).to(device)
            layer.indexer.prev_kv, layer.indexer.prev_score = _pair(last.layers[i].index_prev,
                                                                    device)
    cache.length = len(blocks) * len(last.tokens)
    return cache


def start_capture(cache: SequenceCache) -> None:
    for layer in cache.layers:
        layer.tap, layer.compressor.tap, layer.indexer.tap = [], [], []


def stop_capture(cache: SequenceCache) -> None:
    for layer in cache.layers:
        layer.tap = layer.compressor.tap = layer.indexer.tap = None


def extend_keys(pc: PrefixCache, keys: list[str], tokens: Sequence[int], valid_upto: int) -> None:
    """Make ``keys`` the chain keys of every full block of ``tokens``, reusing the ones of
    blocks that end at or before ``valid_upto`` (tokens before it are unchanged)."""
    bt = pc.block_tokens
    del keys[valid_upto // bt:]
    parent = keys[-1] if keys else pc.root
    start = len(keys) * bt
    keys.extend(chain_keys(parent, tokens[start:len(tokens) // bt * bt], bt))


def collect_blocks(pc: PrefixCache, cache: SequenceCache, tokens: Sequence[int], start: int,
                   ratios: Sequence[int], window: int, keys: list[str]) -> list[CachedBlock]:
    """Blocks whose end boundary fell inside the forward over tokens [start, cache.length)
    that just ran with capture on. ``tokens`` is the whole sequence so far; ``keys`` its
    block keys (extended here, kept by the caller so hashing stays linear)."""
    bt, end = pc.block_tokens, cache.length
    first = start // bt + 1
    bounds = [j * bt for j in range(first, end // bt + 1)]
    extend_keys(pc, keys, tokens[:end], start)
    if not bounds:
        return []
    out = []
    for n, boundary in enumerate(bounds):
        key = keys[boundary // bt - 1]
        keep = n == len(bounds) - 1 or (boundary // bt) % pc.state_every == 0
        if pc.blocks.get(key) is not None and (pc.blocks[key].has_state or not keep):
            continue
        layers = [_layer_block(layer, ratio, boundary, bt, window, keep)
                  for layer, ratio in zip(cache.layers, ratios, strict=False)]
        out.append(CachedBlock(key, tuple(tokens[boundary - bt:boundary]), layers, keep))
    return out


def _layer_block(layer: LayerCache, ratio: int, boundary: int, bt: int, window: int,
                 keep: bool) -> LayerBlock:
    lb = LayerBlock()
    if keep:
        keys, first = layer.tap[-1]
        lo = max(0, boundary - (window - 1))
        lb.window = keys[:, lo - first:boundary - first].clone()
    if ratio:
        lo, hi = (boundary - bt) // ratio, boundary // ratio
        lb.rows = layer.compressor.rows[:, lo:hi].clone()
        if keep and ratio == 4:
            lb.prev = _prev_at(layer.compressor, boundary, ratio)
        if layer.indexer.rows is not None:
            lb.index_rows = layer.indexer.rows[:, lo:hi].clone()
            if keep:
                lb.index_prev = _prev_at(layer.indexer, boundary, ratio)
    return lb


def _prev_at(state: CompressorState, boundary: int, ratio: int) -> tuple[Tensor, Tensor]:
    kv, score, first = state.tap[-1]
    lo = boundary - ratio - first
    return kv[:, lo:lo + ratio].clone(), score[:, lo:lo + ratio].clone()


def _dev(t: Tensor | None, device: torch.device) -> Tensor | None:
    return None if t is None else t.to(device)


def _pair(p: tuple[Tensor, Tensor] | None, device: torch.device
          ) -> tuple[Tensor | None, Tensor | None]:
    return (None, None) if p is None else (p[0].to(device), p[1].to(device))


def _to_dict(block: CachedBlock) -> dict:
    layers = []
    for lb in block.layers:
        d = {k: getattr(lb, k) for k in ("rows", "index_rows", "window") if getattr(lb, k) is not None}
        for name in ("prev", "index_prev"):
            pair = getattr(lb, name)
            if pair is not None:
                d[f"{name}_kv"], d[f"{name}_score"] = (t.cpu() for t in pair)
        layers.append({k: v.cpu() for k, v in d.items()})
    return {"key": block.key, "tokens": list(block.tokens), "has_state": block.has_state,
            "layers": layers}


def _from_dict(d: dict) -> CachedBlock:
    layers = []
    for ld in d["layers"]:
        lb = LayerBlock(ld.get("rows"), ld.get("index_rows"), ld.get("window"))
        if "prev_kv" in ld:
            lb.prev = (ld["prev_kv"], ld["prev_score"])
        if "index_prev_kv" in ld:
            lb.index_prev = (ld["index_prev_kv"], ld["index_prev_score"])
        layers.append(lb)
    return CachedBlock(str(d["key"]), tuple(int(t) for t in d["tokens"]), layers,
                       bool(d["has_state"]))
