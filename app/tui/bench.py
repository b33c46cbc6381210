"""``v4coder bench tui``: time to first paint (a fresh process, no model loaded) and a
replayed 200 tokens/s stream rendered without falling behind (the lag is measured).

``bench_tui()`` returns one dict; the CLI prints it as JSON.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

FIRST_PAINT_TARGET_S = 1.0

_CHILD = textwrap.dedent("""
    import sys, time
    t0 = float(sys.argv[1])
    from pathlib import Path
    from agent.backends.replay import ReplayBackend
    from app.tui.app import CoderApp

    class FirstPaint(CoderApp):
        def _first_paint(self):
            super()._first_paint()
            Path(sys.argv[4]).write_text(str(time.time() - t0))
            self.exit()

    repo = Path(sys.argv[2])
    FirstPaint(repo=repo, backend_spec="replay:" + sys.argv[3],
               backend=ReplayBackend(sys.argv[3])).run(headless=True, size=(120, 35))
""")


def _sample_markdown(tokens: int) -> str:
    """About ``tokens`` tokens (4 chars each) of mixed Markdown."""
    block = ("The parser keeps **one** pass over the input and records each `Token` with its "
             "offset.\n\n- first, the lexer\n- then the tree\n\n```python\ndef parse(text):\n"
             "    return [t for t in lex(text)]\n```\n\n")
    text = ""
    while len(text) < tokens * 4:
        text += block
    return text[: tokens * 4]


def _setup(directory: Path, text: str) -> tuple[Path, Path]:
    repo = directory / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / "main.py").write_text("print('bench')\n")
    replay = directory / "replay.jsonl"
    replay.write_text(json.dumps({"completion": text}) + "\n" + json.dumps({"completion": "x"}) + "\n")
    return repo, replay


def first_paint_seconds(repo: Path, replay: Path, runs: int = 3) -> list[float]:
    times = []
    child = repo.parent / "first_paint.py"     # a file: Textual resolves CSS_PATH by source
    child.write_text(_CHILD)
    for _ in range(runs):
        with tempfile.NamedTemporaryFile(suffix=".txt", delete=False) as out:
            marker = Path(out.name)
        proc = subprocess.run([sys.executable, str(child), str(time.time()), str(repo),
                               str(replay), str(marker)], timeout=60, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError("first-paint child failed: " + proc.stderr.strip()[-500:])
        times.append(float(marker.read_text()))
        marker.unlink()
    return times


class _TimedReplay:
    """Wraps a ReplayBackend and records when each text chunk was produced."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self.model = inner.model
        self.marks: list[tuple[int, float]] = []     # (cumulative chars, time)

    def stream(self, request):
        chars = 0
        for piece in self.inner.stream(request):
            if hasattr(piece, "channel") and piece.channel == "text":
                chars += len(piece.text)
                self.marks.append((chars, time.perf_counter()))
            yield piece


def _baseline_rate(replay: Path, tokens_per_second: float) -> float:
    """The paced replay's own rate with no UI attached (sleep granularity included)."""
    from agent.backends.base import CompletionRequest, Sampling
    from agent.backends.replay import ReplayBackend

    backend = _TimedReplay(ReplayBackend(replay, tokens_per_second=tokens_per_second))
    for _ in backend.stream(CompletionRequest([{"role": "user", "content": "go"}], [], Sampling())):
        pass
    marks = backend.marks
    seconds = marks[-1][1] - marks[0][1]
    return round(marks[-1][0] / 4 / seconds, 1) if seconds > 0 else 0.0


async def _stream_lag(repo: Path, replay: Path, tokens_per_second: float, text: str) -> dict:
    from agent.backends.replay import ReplayBackend
    from app.tui.app import CoderApp
    from app.tui.transcript import AssistantReply

    backend = _TimedReplay(ReplayBackend(replay, tokens_per_second=tokens_per_second))
    app = CoderApp(repo=repo, backend_spec=f"replay:{replay}", backend=backend, mode="full-auto")
    lags: list[float] = []
    async with app.run_test(size=(120, 35)) as pilot:
        await pilot.press(*"go", "enter")
        start = time.perf_counter()
        while time.perf_counter() - start < 120:
            await asyncio.sleep(0.02)
            replies = app.transcript.query(AssistantReply)
            rendered = len(replies.last().source.rstrip()) if replies else 0
            marks = backend.marks
            if marks and rendered:
                counts = [m[0] for m in marks]
                i = min(bisect.bisect_left(counts, rendered), len(marks) - 1)
                # How long ago the producer had written what the screen shows now, minus how
                # long ago it wrote its newest chunk: the backlog in seconds.
                lags.append(max(0.0, marks[-1][1] - marks[i][1]))
            if marks and rendered >= len(text.rstrip()):
                break
        done = time.perf_counter()
        total_chars = backend.marks[-1][0] if backend.marks else 0
        produce_s = backend.marks[-1][1] - backend.marks[0][1] if len(backend.marks) > 1 else 0.0
        final_lag = max(0.0, done - backend.marks[-1][1]) if backend.marks else 0.0
    return {
        "stream_tokens": total_chars // 4,
        "stream_target_tokens_per_s": tokens_per_second,
        "stream_produced_tokens_per_s": round(total_chars / 4 / produce_s, 1) if produce_s else None,
        "stream_max_lag_s": round(max(lags), 3) if lags else None,
        "stream_mean_lag_s": round(sum(lags) / len(lags), 3) if lags else None,
        "stream_final_lag_s": round(final_lag, 3),
    }


def bench_tui(tokens: int = 600, tokens_per_second: float = 200.0, paint_runs: int = 3) -> dict:
    """First paint of a fresh process, and the lag of a paced replay stream."""
    text = _sample_markdown(tokens)
    with tempfile.TemporaryDirectory(prefix="v4coder-bench-tui-") as tmp:
        repo, replay = _setup(Path(tmp), text)
        paints = first_paint_seconds(repo, replay, runs=paint_runs)
        baseline = _baseline_rate(replay, tokens_per_second)
        stream = asyncio.run(_stream_lag(repo, replay, tokens_per_second, text))
        stream["stream_produced_tokens_per_s_without_ui"] = baseline
    best = min(paints)
    result = {
        "bench": "tui",
        "first_paint_s": round(best, 3),
        "first_paint_runs_s": [round(t, 3) for t in paints],
        "first_paint_target_s": FIRST_PAINT_TARGET_S,
        "first_paint_ok": best <= FIRST_PAINT_TARGET_S,
        **stream,
    }
    lag = stream["stream_final_lag_s"]
    result["stream_keeps_up"] = lag is not None and lag < 0.5
    return result


if __name__ == "__main__":
    print(json.dumps(bench_tui()))
