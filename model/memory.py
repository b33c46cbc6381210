"""Memory planner: how many tokens of context fit, and how large a prefill chunk may be.

From the free memory of the device (CUDA: ``mem_get_info``; CPU: ``MemAvailable``; both
measured after the weights are loaded) and the config, the planner counts

* per token: the compressed rows the live cache keeps (CSA rows + indexer keys every 4 tokens,
  HCA rows every 128) as ``model/cache.py`` stores them: the attention KV rows packed in the FP8
  layout under ``native`` numerics (``kv_layout(cfg).row_bytes``: 584 B for V4), head_dim values
  in the compute dtype under ``dequant``; indexer keys packed in the FP4 layout under ``native``
  (``index_key_layout(cfg).row_bytes``: 68 B for V4), index_head_dim values in the compute
  dtype under ``dequant``;
* per sequence: the sliding window and the compressor tails (fixed);
* the prefix cache's byte budget (reserved up front);
* per prefill chunk at context n: the row indices (window ∪ top-k ∪ n/ratio HCA rows per query),
  outputs and mHC streams, plus the bounded scratch of the attention / indexer references
  (they take queries a block at a time) — so long contexts get smaller chunks only when the
  indices themselves grow large, rather than running out of memory.

A request that does not fit is refused with ``ContextTooLong`` before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from model.cache import index_key_layout, kv_layout, window_capacity
from model.config import ModelConfig
from model.kernels.blocks import REFERENCE_BLOCK_ELEMENTS
from model.kernels.fp4_keys import KEYS_UPCONVERT_MAX_BYTES
from model.kernels.sparse_attn import UPCONVERT_MAX_BYTES

MAX_CONTEXT = 1_048_576
MIN_CHUNK = 64
SCRATCH_ELEMENTS = 3 * REFERENCE_BLOCK_ELEMENTS  # the references' per-block scratch tensors


class ContextTooLong(ValueError):
    """The request needs more memory (or context) than this engine has."""


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30  # unknown platform: assume a modest machine


@dataclass(frozen=True, slots=True)
class MemoryPlan:
    available_bytes: int     # free memory the planner may use (after the safety reserve)
    bytes_per_token: float   # live compressed cache per token of context
    fixed_bytes: int         # window + compressor tails + prefix-cache budget
    chunk_tokens: int        # largest prefill chunk asked for
    max_tokens: int          # longest context (prompt + completion) that fits
    element_size: int
    cfg: ModelConfig
    work_bytes: int = 1 << 62  # cap on one chunk's transient work (keeps it cache-friendly)
    sequence_bytes: int = 0    # the part of fixed_bytes each further sequence needs again

    def activation_bytes(self, chunk: int, context: int) -> int:
        """Transient bytes of one prefill chunk of ``chunk`` queries at context ``context``:
        what grows with the chunk (row indices, outputs, the mHC streams) plus the scratch of
        the attention and indexer references, which take queries a block at a time and so stay
        under ``SCRATCH_ELEMENTS``, and the Triton prefill's up-converted FP8 rows and FP4
        keys (at most ``sparse_attn.UPCONVERT_MAX_BYTES`` and
        ``fp4_keys.KEYS_UPCONVERT_MAX_BYTES``)."""
        c, es = self.cfg, 4  # attention and indexer scores run in fp32
        hca = [r for r in c.compress_ratios[:c.n_layers] if r > 4]
        rows = max([c.index_topk] + [context // r for r in hca])
        keys = c.window_size + rows
        attn = chunk * keys * 8 + chunk * c.n_heads * (c.head_dim + 1) * es
        attn += min(chunk * keys * (c.head_dim + 2 * c.n_heads), SCRATCH_ELEMENTS) * es
        if 4 in c.compress_ratios:   # a prefill's FP8 rows up-converted once (sparse_attn)
            attn += min((context // 4 + c.window_size + chunk) * c.head_dim * self.element_size,
                        UPCONVERT_MAX_BYTES)
        index = 0
        if 4 in c.compress_ratios:
            index = chunk * c.index_topk * 8
            # a prefill's FP4 keys up-converted once (fp4_keys.upconvert_index_keys)
            index += min((context // 4) * c.index_head_dim * self.element_size,
                         KEYS_UPCONVERT_MAX_BYTES)
            index += min(chunk * (c.index_n_heads + 2) * (context // 4), SCRATCH_ELEMENTS) * es
        hidden = chunk * c.dim * c.hc_mult * es * 8
        return attn + index + hidden

    def chunk_for(self, context: int) -> int:
        """The largest chunk (≤ chunk_tokens, ≥ MIN_CHUNK) whose work fits next to the cache
        and under ``work_bytes``."""
        room = self.available_bytes - self.fixed_bytes - self.bytes_per_token * context
        room = min(room, self.work_bytes)
        chunk = self.chunk_tokens
        while chunk > MIN_CHUNK and self.activation_bytes(chunk, context + chunk) > room:
            chunk //= 2
        return max(chunk, MIN_CHUNK)

    def fits(self, n_tokens: int) -> bool:
        if n_tokens > MAX_CONTEXT:
            return False
        need = self.fixed_bytes + self.bytes_per_token * n_tokens
        return need + self.activation_bytes(MIN_CHUNK, n_tokens) <= self.available_bytes

    def fits_batch(self, totals: list[int]) -> bool:
        """Whether sequences of these token counts (prompt + completion each) fit side by side:
        each holds its own window and tails and its rows; one prefill chunk runs at a time."""
        if not totals:
            return True
        need = (self.fixed_bytes + (len(totals) - 1) * self.sequence_bytes
                + self.bytes_per_token * sum(totals))
        return need + self.activation_bytes(MIN_CHUNK, max(totals)) <= self.available_bytes

    def check(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """Raise ContextTooLong (a one-line reason) unless prompt + completion fit."""
        total = prompt_tokens + max_new_tokens
        if total > MAX_CONTEXT:
            raise ContextTooLong(
                f"request needs {total:,} tokens ({prompt_tokens:,} prompt + {max_new_tokens:,} "
                f"completion) but the model's context is {MAX_CONTEXT:,} tokens")
        if total > self.max_tokens:
            gib = self.available_bytes / 2**30
            raise ContextTooLong(
                f"request needs {total:,} tokens ({prompt_tokens:,} prompt + {max_new_tokens:,} "
                f"completion) but only {self.max_tokens:,} fit in {gib:.1f} GiB of free memory "
                f"({self.bytes_per_token:.0f} bytes/token); shorten the prompt or lower max_tokens")


def kv_row_bytes(cfg: ModelConfig, element_size: int, numerics: str = "dequant") -> int:
    """Bytes of one attention KV row (window or compressed) as the cache holds it."""
    return kv_layout(cfg).row_bytes if numerics == "native" else cfg.head_dim * element_size


def index_key_bytes(cfg: ModelConfig, element_size: int, numerics: str = "dequant") -> int:
    """Bytes of one indexer key (CSA layers) as the cache holds it."""
    if numerics == "native":
        return index_key_layout(cfg).row_bytes
    return cfg.index_head_dim * element_size


def cache_bytes_per_token(cfg: ModelConfig, element_size: int, numerics: str = "dequant"
                          ) -> float:
    row = kv_row_bytes(cfg, element_size, numerics)
    key = index_key_bytes(cfg, element_size, numerics)
    total = 0.0
    for ratio in cfg.compress_ratios[:cfg.n_layers]:
        if ratio:
            total += row / ratio
        if ratio == 4:
            total += key / ratio
    return total


def fixed_bytes_per_sequence(cfg: ModelConfig, element_size: int, numerics: str = "dequant"
                             ) -> int:
    window = (cfg.n_layers * window_capacity(cfg.window_size)
              * kv_row_bytes(cfg, element_size, numerics))
    tails = 0
    for ratio in cfg.compress_ratios[:cfg.n_layers]:
        if ratio == 4:  # pending + previous block, kv and score, fp32, main and indexer
            tails += 2 * 2 * 4 * 2 * (cfg.head_dim + cfg.index_head_dim) * 4
        elif ratio:
            tails += 2 * ratio * cfg.head_dim * 4
    return window + tails


def plan_memory(cfg: ModelConfig, dtype: torch.dtype, device: torch.device | str = "cpu",
                chunk_tokens: int = 2048, prefix_cache_bytes: int = 0,
                available: int | None = None, reserve: float = 0.1,
                work_bytes: int | None = None, numerics: str = "dequant") -> MemoryPlan:
    """Plan for one sequence on ``device``; ``available`` overrides the measured free bytes;
    ``numerics`` ("dequant" / "native") decides the KV row format (float / packed FP8).
    ``work_bytes`` caps a chunk's transient work (default: 1 GiB on CPU, where smaller
    working sets run faster, a quarter of free memory on GPU)."""
    device = torch.device(device)
    es = torch.empty((), dtype=dtype).element_size()
    free = free_bytes(device) if available is None else available
    usable = int(free * (1 - reserve))
    per_token = cache_bytes_per_token(cfg, es, numerics)
    sequence = fixed_bytes_per_sequence(cfg, es, numerics)
    fixed = sequence + prefix_cache_bytes
    if work_bytes is None:
        work_bytes = usable // 4 if device.type == "cuda" else 1 << 30
    plan = MemoryPlan(usable, per_token, fixed, chunk_tokens, 0, es, cfg, work_bytes, sequence)
    lo, hi = 0, MAX_CONTEXT
    while lo < hi:  # largest n with plan.fits(n)
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if plan.fits(mid) else (lo, mid - 1)
    return MemoryPlan(usable, per_token, fixed, chunk_tokens, lo, es, cfg, work_bytes, sequence)
