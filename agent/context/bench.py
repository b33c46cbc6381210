"""``v4coder bench pack``: packing speed against the raw tokenizer, cache and delta checks.

For each path: copy its packable files into a temporary directory (the source is never
touched), then in one run measure

- ``raw_tokenize_s``: the V4 tokenizer alone on the same file texts (best of 2),
- ``pack_s``: a cold pack (empty cache; best of 2, like the raw time: the second is the
  determinism check's uncached pack) and ``pack_over_raw`` = pack_s / raw_tokenize_s
  (target ≤ 1.5),
- ``raw_tokenize_cpu_s``, ``pack_cpu_s`` and ``pack_cpu_over_raw_cpu``: the same two runs
  in CPU seconds (this process and its parse workers), which other load on the machine
  disturbs less than wall time (information only; the target is on wall time),
- ``repack_s``: packing the unchanged copy again and ``repack_over_pack`` (target ≤ 0.05),
- after appending one line to one packed file: the prefix is byte-identical, the delta
  names only that file and holds only the new line; reverting and re-packing reproduces
  the first prefix exactly (determinism).
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.context.pack import DEFAULT_BUDGET, delta_for_edits, pack_repository
from agent.context.tokens import count_tokens, load_tokenizer
from agent.context.walk import walk_repository

MARKER = "# v4coder-bench-edit"


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the parse workers), at the
    clocks' full resolution (``os.times`` counts 10 ms ticks: a small run read as 0.0)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _copy(src: Path, dst: Path, glob: str | None) -> list[str]:
    if glob:
        rels = sorted(str(p.relative_to(src)) for p in src.glob(glob) if p.is_file())
    else:
        rels = [f.path for f in walk_repository(src).files]
    for rel in rels:
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, target)
    return rels


def bench_one(path: str | Path, budget: int = DEFAULT_BUDGET, glob: str | None = None) -> dict[str, Any]:
    """Benchmark one repository (optionally only the files matching ``glob``)."""
    load_tokenizer()
    src = Path(path)
    with tempfile.TemporaryDirectory(prefix="v4bench-") as tmp, \
            tempfile.TemporaryDirectory(prefix="v4cache-") as cache_root:
        old_env = os.environ.get("V4CODER_CACHE_DIR")
        os.environ["V4CODER_CACHE_DIR"] = cache_root
        try:
            repo = Path(tmp) / "repo"
            repo.mkdir()
            _copy(src, repo, glob)
            texts = [f.text for f in walk_repository(repo).files]
            raw, raw_cpu = [], []
            for _ in range(2):
                t, c = time.perf_counter(), cpu_seconds()
                raw_tokens = sum(count_tokens(texts))
                raw.append(time.perf_counter() - t)
                raw_cpu.append(cpu_seconds() - c)
            raw_s = min(raw)
            first = pack_repository(repo, budget)
            second = pack_repository(repo, budget)
            prefix_hash = hashlib.sha1(first.text.encode()).hexdigest()
            target = first.files[len(first.files) // 2] if first.files else None
            delta_ok = False
            delta_tokens = 0
            if target is not None:
                fpath = repo / target
                original = fpath.read_bytes()
                fpath.write_bytes(original + f"{MARKER}\n".encode())
                delta = delta_for_edits(first, repo)
                delta_tokens = count_tokens([delta])[0] if delta else 0
                n = len(first.contents[target].split("\n")) - (first.contents[target].endswith("\n"))
                expected = f"### {target} (edited since packing)\n"
                delta_ok = delta.startswith(expected) and delta.count("###") == 1 \
                    and delta.endswith(f"{n + 1} {MARKER}\n") and delta.count("\n") == 3
                fpath.write_bytes(original)
            unchanged = hashlib.sha1(first.text.encode()).hexdigest() == prefix_hash
            c = cpu_seconds()
            third = pack_repository(repo, budget, use_cache=False)
            pack_cpu = cpu_seconds() - c
            pack_s = min(first.seconds, third.seconds)
            return {
                "path": str(src) + (f"/{glob}" if glob else ""),
                "files_walked": len(texts),
                "bytes": sum(len(t.encode()) for t in texts),
                "raw_tokens": raw_tokens,
                "packed_tokens": first.tokens,
                "budget": budget,
                "files_whole": len(first.files),
                "files_outlined": len(first.outlined),
                "files_skipped": sum(s.files for s in first.skipped),
                "raw_tokenize_s": round(raw_s, 4),
                "pack_s": round(pack_s, 4),
                "pack_over_raw": round(pack_s / raw_s, 3),
                "raw_tokenize_cpu_s": round(min(raw_cpu), 3),
                "pack_cpu_s": round(pack_cpu, 3),
                "pack_cpu_over_raw_cpu": round(pack_cpu / max(min(raw_cpu), 1e-9), 3),
                "repack_s": round(second.seconds, 4),
                "repack_cache_hit": second.cache_hit,
                "repack_over_pack": round(second.seconds / pack_s, 4),
                "prefix_identical_after_edit": unchanged,
                "delta_only_the_edit": delta_ok,
                "delta_tokens": delta_tokens,
                "deterministic": third.text == first.text,
                "ok": pack_s <= 1.5 * raw_s and second.seconds <= 0.05 * pack_s
                and unchanged and delta_ok and third.text == first.text,
            }
        finally:
            if old_env is None:
                os.environ.pop("V4CODER_CACHE_DIR", None)
            else:
                os.environ["V4CODER_CACHE_DIR"] = old_env


def bench_pack(paths: list[str], budget: int = DEFAULT_BUDGET) -> dict[str, Any]:
    """Benchmark each path (``dir`` or ``dir::glob``, e.g. ``.../python3.11::*.py``)."""
    runs = []
    for spec in paths:
        path, _, glob = spec.partition("::")
        runs.append(bench_one(path, budget, glob or None))
    return {"bench": "pack", "runs": runs, "ok": all(r["ok"] for r in runs)}
