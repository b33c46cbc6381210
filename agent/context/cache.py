"""On-disk cache for packing, so re-packing an unchanged repository costs almost nothing.

Location: ``<repo>/.git/v4coder/`` when the repository root holds a ``.git`` directory
(git never looks there, and it disappears with the clone), else
``~/.cache/v4coder/<sha1 of the absolute path>[:16]/`` (``$V4CODER_CACHE_DIR`` overrides
``~/.cache/v4coder``). Two pickle files:

- ``files.pkl``: per-file facts keyed by content hash + extension (token count of the
  numbered body, tree-sitter symbols, identifiers, outline body and its token count).
  A file that changes gets a new key; entries not seen in the last pack are dropped.
- ``packs.pkl``: the last few finished packs (text and file lists) keyed by a digest of
  every (path, content hash), the budget, the question and the format version, so a
  second pack of an unchanged repository only walks, hashes and loads.

The cache is an optimisation only: a missing, stale or corrupt file is ignored.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.context.tokens import tokenizer_path

FORMAT_VERSION = 1
MAX_PACKS = 4


@dataclass(slots=True)
class FileFacts:
    body_tokens: int | None = None
    symbols: list[Any] | None = None  # list[outline.Symbol]
    idents: frozenset[str] | None = None
    outline_body: str | None = None
    outline_tokens: int | None = None


def content_key(path: str, data: bytes) -> str:
    dot = path.rfind(".")
    ext = path[dot:].lower() if dot > path.rfind("/") else ""
    return hashlib.sha1(data).hexdigest() + ext


def cache_dir_for(repo: Path) -> Path:
    git = repo / ".git"
    if git.is_dir():
        return git / "v4coder"
    base = Path(os.environ.get("V4CODER_CACHE_DIR") or Path.home() / ".cache" / "v4coder")
    return base / hashlib.sha1(str(repo.resolve()).encode()).hexdigest()[:16]


def _stamp() -> str:
    p = tokenizer_path()
    st = p.stat()
    return f"v{FORMAT_VERSION}:{st.st_size}:{st.st_mtime_ns}"


def _load(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            obj = pickle.load(fh)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError):
        return {}
    if not isinstance(obj, dict) or obj.get("stamp") != _stamp():
        return {}
    return obj


def _save(path: Path, obj: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with tmp.open("wb") as fh:
            pickle.dump({**obj, "stamp": _stamp()}, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except OSError:
        pass  # read-only location: run without a cache


@dataclass(slots=True)
class PackCache:
    directory: Path | None
    facts: dict[str, FileFacts] = field(default_factory=dict)
    _facts_loaded: bool = False

    def load_pack(self, key: str) -> dict[str, Any] | None:
        if self.directory is None:
            return None
        packs = _load(self.directory / "packs.pkl").get("packs", {})
        return packs.get(key)

    def save_pack(self, key: str, value: dict[str, Any]) -> None:
        if self.directory is None:
            return
        path = self.directory / "packs.pkl"
        packs = _load(path).get("packs", {})
        packs.pop(key, None)
        packs[key] = value
        while len(packs) > MAX_PACKS:
            packs.pop(next(iter(packs)))
        _save(path, {"packs": packs})

    def load_facts(self) -> dict[str, FileFacts]:
        if not self._facts_loaded and self.directory is not None:
            self.facts = _load(self.directory / "files.pkl").get("facts", {})
        self._facts_loaded = True
        return self.facts

    def save_facts(self, keep: set[str]) -> None:
        if self.directory is None:
            return
        facts = {k: v for k, v in self.facts.items() if k in keep}
        _save(self.directory / "files.pkl", {"facts": facts})


def pack_key(pairs: list[tuple[str, str]], budget: int, question: str | None, extra: str) -> str:
    h = hashlib.sha1(f"{FORMAT_VERSION}\0{budget}\0{question or ''}\0{extra}\0".encode())
    for path, key in pairs:
        h.update(path.encode("utf-8", "surrogateescape") + b"\0" + key.encode() + b"\0")
    return h.hexdigest()
