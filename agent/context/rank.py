"""Rank files for a budget: named files, their graph neighbours, their tests, the rest.

The symbol graph has an edge A→B when file A uses an identifier that file B defines
(tree-sitter definitions, see agent.context.outline); each file also "defines" its module
name (``pack`` for ``agent/context/pack.py``, the directory for ``__init__.py``/``index.js``/
``mod.rs``) so imports and includes link files too. A name defined in k files spreads
weight 1/k; names defined in more than :data:`MAX_DEFINERS` files are ignored as generic.
Reverse edges (B→A, weight × :data:`REVERSE_WEIGHT`) let rank flow from a file to the
files that use it. Scores are a PageRank by power iteration, personalised to the files
named in the question (and, more weakly, to files defining identifiers it mentions).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

DAMPING = 0.85
MAX_DEFINERS = 12
REVERSE_WEIGHT = 0.5
BASELINE = 0.05
_GENERIC_STEMS = {"__init__", "index", "mod", "main", "lib", "__main__"}
_WORD = re.compile(r"[\w./\\-]+")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{3,}")


@dataclass(slots=True)
class RankInput:
    path: str
    defs: frozenset[str]  # names defined in the file
    idents: frozenset[str]  # identifiers used in the file


def module_name(path: str) -> str:
    parts = path.split("/")
    stem = parts[-1].split(".")[0]
    if stem in _GENERIC_STEMS and len(parts) > 1:
        return parts[-2]
    return stem


def build_edges(files: list[RankInput]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(src, dst, weight) arrays of the symbol graph over file indices."""
    definers: dict[str, list[int]] = {}
    for i, f in enumerate(files):
        for name in f.defs | {module_name(f.path)}:
            definers.setdefault(name, []).append(i)
    names = {n for n, d in definers.items() if len(d) <= MAX_DEFINERS and not n.startswith("__")}
    weights: dict[tuple[int, int], float] = {}
    for a, f in enumerate(files):
        for name in f.idents & names if len(f.idents) < len(names) else names & f.idents:
            ds = definers[name]
            w = 1.0 / len(ds)
            for b in ds:
                if b != a:
                    weights[(a, b)] = weights.get((a, b), 0.0) + w
                    weights[(b, a)] = weights.get((b, a), 0.0) + w * REVERSE_WEIGHT
    if not weights:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    keys = sorted(weights)
    src = np.fromiter((k[0] for k in keys), dtype=np.int64, count=len(keys))
    dst = np.fromiter((k[1] for k in keys), dtype=np.int64, count=len(keys))
    w = np.fromiter((weights[k] for k in keys), dtype=np.float64, count=len(keys))
    return src, dst, w


def pagerank(n: int, src: np.ndarray, dst: np.ndarray, w: np.ndarray,
             personal: np.ndarray | None = None, iters: int = 60, tol: float = 1e-10) -> np.ndarray:
    """Personalised PageRank by power iteration; dangling mass returns to ``personal``."""
    if n == 0:
        return np.zeros(0)
    p = np.full(n, 1.0 / n) if personal is None or personal.sum() <= 0 else personal / personal.sum()
    out_w = np.bincount(src, weights=w, minlength=n) if len(src) else np.zeros(n)
    norm = w / out_w[src] if len(src) else w
    dangling = out_w == 0
    r = p.copy()
    for _ in range(iters):
        flow = np.bincount(dst, weights=r[src] * norm, minlength=n) if len(src) else np.zeros(n)
        new = DAMPING * (flow + r[dangling].sum() * p) + (1 - DAMPING) * p
        if np.abs(new - r).sum() < tol:
            return new
        r = new
    return r


def named_files(question: str | None, paths: list[str]) -> list[str]:
    """Files the question names: full paths, unique path suffixes, basenames, dotted modules."""
    if not question:
        return []
    by_base: dict[str, list[str]] = {}
    for p in paths:
        by_base.setdefault(p.rsplit("/", 1)[-1], []).append(p)
    pathset = set(paths)
    found: list[str] = []
    for raw in _WORD.findall(question):
        word = raw.strip("./\\-`'\"").replace("\\", "/")
        if not word:
            continue
        cands: list[str] = []
        if word in pathset:
            cands = [word]
        elif "/" in word:
            cands = [p for p in by_base.get(word.rsplit("/", 1)[-1], []) if p.endswith("/" + word)]
        elif "." in word:
            cands = by_base.get(word, [])
            if not cands and word.count(".") >= 1:
                mod = word.replace(".", "/")
                cands = [p for p in paths if p.startswith(mod + ".") or p.startswith(mod + "/__init__.")]
        for c in cands:
            if c not in found:
                found.append(c)
    return found


def find_tests_for(target: str, paths: Iterable[str]) -> list[str]:
    """Test files that by name belong to ``target`` (test_x.py, x_test.go, x.test.ts, XTest.java…)."""
    stem = target.rsplit("/", 1)[-1].split(".")[0]
    if not stem:
        return []
    pats = {f"test_{stem}", f"{stem}_test", f"{stem}_tests", f"{stem}.test", f"{stem}.spec",
            f"{stem}test", f"{stem}tests", f"tests_{stem}"}
    out = []
    for p in paths:
        if p == target:
            continue
        base = p.rsplit("/", 1)[-1]
        low = base.lower()
        head = low.rsplit(".", 1)[0]
        if head in {q.lower() for q in pats}:
            out.append(p)
    return out


def rank_files(files: list[RankInput], question: str | None = None) -> list[str]:
    """All paths, best first: named, graph neighbours of named, their tests, the rest."""
    paths = [f.path for f in files]
    index = {p: i for i, p in enumerate(paths)}
    named = named_files(question, paths)
    src, dst, w = build_edges(files)
    personal = np.zeros(len(files))
    for p in named:
        personal[index[p]] = 1.0
    if question:
        mentioned = set(_IDENT.findall(question))
        for i, f in enumerate(files):
            if f.defs & mentioned:
                personal[i] += 0.25
    if personal.any():  # a little uniform mass still orders the files the question never reaches
        personal += BASELINE * personal.sum() / len(files)
    score = pagerank(len(files), src, dst, w, personal if personal.any() else None)
    by_score = sorted(range(len(files)), key=lambda i: (-round(float(score[i]), 12), paths[i]))
    order: list[str] = list(named)
    seen = set(named)
    named_idx = {index[p] for p in named}
    neighbours = set(dst[np.isin(src, list(named_idx))].tolist()) if named_idx and len(src) else set()
    for i in by_score:
        if i in neighbours and paths[i] not in seen:
            order.append(paths[i])
            seen.add(paths[i])
    for p in named:
        for t in find_tests_for(p, paths):
            if t not in seen:
                order.append(t)
                seen.add(t)
    order.extend(paths[i] for i in by_score if paths[i] not in seen)
    return order
