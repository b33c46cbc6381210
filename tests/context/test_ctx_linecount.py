"""Per-line token arithmetic equals the tokenizer on the rendered text, and the parse pool
gives the same facts as parsing in-process."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import agent.context as context_pkg
from agent.context.linecount import LineTokenCounter
from agent.context.parsing import _parallel, parse_batch, parse_files
from agent.context.render import number_lines, render_outline, split_lines
from agent.context.tokens import count_tokens

TRICKY = [
    "",
    "x",
    "\n\n\n",
    "def f():\n    return 1\n",
    "no final newline",
    "trailing spaces   \n\ttabs\t\n",
    "12345\n007 x = 1\n1 2 3\n9999999999999\n",  # lines that start or end with digits
    "value = 1\n2\n",
    "windows\r\nline endings\r\n",
    "中文 注释 1２３ ٣٤٥ ½ ²\n日本語のテキスト\n",  # CJK and non-ASCII numerics
    "<｜User｜> and <｜place▁holder▁no▁12｜> inside a line\n</think>\n",
    "    \n  \n\n" * 5,
    "".join(f"line {i}\n" for i in range(1, 1200)),  # line numbers past 999 (digit runs split)
]


def _source_files() -> list[str]:
    root = Path(context_pkg.__file__).parent
    return [p.read_text(encoding="utf-8") for p in sorted(root.glob("*.py"))]


def test_body_count_equals_tokenizer_on_the_rendered_body() -> None:
    texts = TRICKY + _source_files()
    counter = LineTokenCounter()
    lines = [split_lines(t) for t in texts]
    counter.add(lines)
    got = [counter.body(ls) for ls in lines]
    assert got == count_tokens([number_lines(ls) for ls in lines])
    assert len(counter.lines) < sum(map(len, lines))  # repeated lines were counted once


def test_outline_count_equals_tokenizer_on_the_rendered_outline() -> None:
    counter = LineTokenCounter()
    entries = [(1, "class A:"), (999, "    def f(self, x=1):"), (1000, "12"), (123456, ""),
               (7, "<｜User｜>"), (1001, "中文")]
    counter.add([[line for _, line in entries]])
    assert counter.entries(entries) == count_tokens([render_outline(entries)])[0]


def test_numbers_upto_sums_the_number_tokens() -> None:
    counter = LineTokenCounter()
    assert counter.numbers_upto(0) == 0
    assert counter.numbers_upto(1500) == sum(count_tokens([str(n) for n in range(1, 1501)]))


def _items(n_files: int) -> list[tuple[str, bytes, str]]:
    items = []
    for i in range(n_files):
        body = "".join(f"class C{i}_{k}:\n    def m{k}(self, a,\n           b):\n        return a + b  # {k}\n\n"
                       for k in range(600))
        items.append((f"pkg/m{i}.py", body.encode(), body))
    items.append(("README.md", b"# Title\ntext\n## Part\n", "# Title\ntext\n## Part\n"))
    items.append(("data.txt", b"plain words here\n", "plain words here\n"))
    return items


def test_parse_pool_matches_parsing_in_process() -> None:
    items = _items(8)  # workers= forces the pool even for these few hundred KB
    expected = parse_batch(items)
    for workers in (2, 3):
        got: dict[int, object] = {}
        for batch, results in _parallel(items, workers):  # the forked pool itself
            for i, r in zip(batch, results, strict=True):
                assert i not in got
                got[i] = r
        assert [got[i] for i in range(len(items))] == expected
    assert expected[0].symbols[1].kind == "method" and expected[0].symbols[1].end_line == 3
    assert [n for n, _ in expected[-2].outline] == [1, 3]  # markdown headings
    assert expected[-1].outline == [] and "words" in expected[-1].idents


def test_small_input_is_parsed_in_process_with_the_same_results() -> None:
    items = _items(2)
    got = sorted((i, r) for batch, results in parse_files(items, workers=1)
                 for i, r in zip(batch, results, strict=True))
    assert [r for _, r in got] == parse_batch(items)


def test_a_threaded_process_parses_in_process() -> None:
    """With another Python thread alive, parse_files never forks (a lock held by that thread
    would stay held in the child); the results are the same."""
    import threading

    items = _items(4)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        got, children = [], set()
        for batch, results in parse_files(items, workers=3):
            children.update(multiprocessing.active_children())  # a pool's workers show here
            got += zip(batch, results, strict=True)
        got.sort()
        assert not children
    finally:
        stop.set()
        other.join()
    assert [r for _, r in got] == parse_batch(items)
