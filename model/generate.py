"""A small generation loop over the per-sequence cache: what the agent's ``embedded`` backend
calls until the engine (chunked prefill, prefix reuse, batching) replaces it.

    lm = load_model("/path/to/ckpt", dtype="float32", device="cpu")
    for token_id in lm.generate([0, 128803, ...], max_new_tokens=64, stop_ids=[1],
                                temperature=0.0, seed=0):
        ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from model.cache import SequenceCache
from model.checkpoint import Checkpoint, CheckpointError, load_weights
from model.config import ModelConfig
from model.layers.linear import Numerics
from model.transformer import Transformer

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif dtype in DTYPES:
        resolved = DTYPES[dtype]
    else:
        raise ValueError(f"unsupported dtype {dtype!r} (use float32 or bfloat16)")
    if resolved not in (torch.float32, torch.bfloat16):
        raise ValueError(f"unsupported dtype {resolved} (use float32 or bfloat16; never fp16)")
    return resolved


@dataclass(slots=True)
class LoadedModel:
    model: Transformer
    config: ModelConfig
    checkpoint_dir: Path
    device: torch.device

    def new_cache(self) -> SequenceCache:
        return self.model.new_cache()

    def logits(self, token_ids: list[int], cache: SequenceCache | None = None,
               last_only: bool = False) -> torch.Tensor:
        """fp32 logits for ``token_ids`` continuing ``cache`` ([n, vocab], or [vocab])."""
        ids = torch.tensor([token_ids], dtype=torch.long, device=self.device)
        return self.model(ids, cache, last_only=last_only)[0]

    def generate(self, token_ids: Iterable[int], max_new_tokens: int,
                 stop_ids: Iterable[int] = (), temperature: float = 0.0, seed: int = 0,
                 cache: SequenceCache | None = None) -> Iterator[int]:
        return generate(self, token_ids, max_new_tokens, stop_ids, temperature, seed, cache)


class ModelTransform(Protocol):
    """A load-time rewrite of the module tree (expert parallelism, tensor parallelism, offload)."""

    def before_load(self, model: Transformer, ckpt: Checkpoint) -> None: ...

    def after_prepare(self, model: Transformer, ckpt: Checkpoint) -> None: ...


def load_model(checkpoint_dir: str | Path, dtype: str | torch.dtype = "float32",
               device: str | torch.device = "cpu", numerics: str = "dequant",
               progress: bool = True, with_mtp: bool = False,
               transforms: Sequence[ModelTransform] = (),
               on_progress: Callable[[int, int], None] | None = None,
               fp8_resident: bool = True) -> LoadedModel:
    """Load an official-format checkpoint. Raises CheckpointError (clear message) on bad input.
    ``transforms`` rewrite the model before the weights are read and after they are prepared;
    ``on_progress(done, total)`` hears each tensor as it loads. ``fp8_resident`` (default) keeps
    FP8 and BF16 weights as mapped from the checkpoint and dequantises them per use (same
    logits, memory ≈ file size); False dequantises them once at load (model/layers/linear.py)."""
    if numerics not in ("dequant", "native"):
        raise ValueError(f"numerics must be 'dequant' or 'native', not {numerics!r}")
    compute = parse_dtype(dtype)
    ckpt = Checkpoint.open(checkpoint_dir)
    model = Transformer(ckpt.config, with_mtp=with_mtp)
    for transform in transforms:
        transform.before_load(model, ckpt)
    load_weights(model, ckpt, device=device, progress=progress, on_progress=on_progress)
    model.prepare(Numerics(numerics, compute), resident=fp8_resident)
    for transform in transforms:
        transform.after_prepare(model, ckpt)
    model.eval()
    return LoadedModel(model, ckpt.config, Path(checkpoint_dir), torch.device(device))


def sample(logits: torch.Tensor, temperature: float, gen: torch.Generator) -> int:
    """Greedy when temperature ≤ 0, else Gumbel-max (exponential race) as the reference does."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    race = torch.empty_like(probs).exponential_(1.0, generator=gen)
    return int((probs / race).argmax())


def generate(model: LoadedModel, token_ids: Iterable[int], max_new_tokens: int,
             stop_ids: Iterable[int] = (), temperature: float = 0.0, seed: int = 0,
             cache: SequenceCache | None = None) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` new token ids after the prompt ``token_ids``.

    A stop id is yielded and then generation ends, so the caller can tell a stop from a length
    cut-off. ``cache`` (optional) continues an existing sequence; the prompt is its next chunk.
    """
    prompt = list(token_ids)
    stops = set(stop_ids)
    if not prompt:
        raise ValueError("generate needs at least one prompt token")
    cache = cache if cache is not None else model.new_cache()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    logits = model.logits(prompt, cache, last_only=True)
    for _ in range(max_new_tokens):
        token = sample(logits.cpu(), temperature, gen)
        yield token
        if token in stops:
            return
        logits = model.logits([token], cache, last_only=True)


__all__ = ["LoadedModel", "load_model", "generate", "sample", "CheckpointError"]
