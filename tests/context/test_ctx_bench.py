"""`v4coder bench pack` on a small real directory: every check it reports holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.context.bench import bench_one


def test_bench_one_reports_times_cpu_and_the_cache_and_delta_checks(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        body = "".join(f"def f{i}_{k}(x):\n    return x + {k}\n\n" for k in range(60))
        (src / f"m{i}.py").write_text(f"import m{(i + 1) % 12}\n" + body, encoding="utf-8")
    (src / "notes.txt").write_text("not python\n", encoding="utf-8")
    run = bench_one(src, budget=9_000, glob="*.py")  # over budget: ranking and outlines run
    assert run["files_walked"] == 12 and run["files_outlined"] > 0 and run["files_whole"] > 0
    assert run["packed_tokens"] <= 9_000
    assert run["prefix_identical_after_edit"] and run["delta_only_the_edit"] and run["deterministic"]
    assert run["repack_cache_hit"]
    assert run["raw_tokenize_cpu_s"] > 0 and run["pack_cpu_s"] > 0
    # the ratio is of the unrounded times; the rounded ones (to 1 ms) give it within ~10%
    ratio = run["pack_cpu_s"] / run["raw_tokenize_cpu_s"]
    assert run["pack_cpu_over_raw_cpu"] == pytest.approx(ratio, rel=0.1)
