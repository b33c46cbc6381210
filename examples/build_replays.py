"""Regenerate the examples' replay transcripts (``python examples/build_replays.py``).

A replay line is the raw text the model writes after ``<｜Assistant｜></think>``: prose,
then a DSML tool-call block. Building the blocks with the encoder keeps them exact.
"""

from __future__ import annotations

import json
from pathlib import Path

from agent.encoding import render_tool_calls

HERE = Path(__file__).parent


def reply(text: str, *calls: tuple[str, dict]) -> dict:
    block = render_tool_calls([{"function": {"name": n, "arguments": a}} for n, a in calls])
    return {"completion": f"{text}\n\n{block}"}


WORDSTATS = [
    reply("I'll run the test suite first to see how the bug shows up.", ("run_tests", {})),
    reply("The whitespace tests fail. Let me read the implementation.",
          ("read_file", {"path": "textstats.py"})),
    reply('`text.split(" ")` splits on single spaces only, so runs of spaces produce empty '
          "strings and tabs or newlines never separate words. `str.split()` with no argument "
          "splits on runs of any whitespace and drops empty pieces, which is what the docstring "
          "promises.",
          ("edit_file", {"path": "textstats.py", "old_string": '    return len(text.split(" "))',
                         "new_string": "    return len(text.split())"})),
    reply("Now the tests again.", ("run_tests", {})),
    reply("All tests pass.",
          ("finish", {"summary": "word_count() now uses str.split() with no separator, so any run "
                                 "of whitespace (spaces, tabs, newlines) separates words and empty "
                                 "text counts 0 words. The existing tests all pass."})),
]

REGRESSION_TEST = '''from intervals import merge_intervals


def test_touching_intervals_merge():
    assert merge_intervals([(1, 3), (3, 5)]) == [(1, 5)]


def test_touching_out_of_order():
    assert merge_intervals([(3, 5), (0, 1), (1, 3)]) == [(0, 5)]
'''

INTERVALS = [
    reply("Let me find the merge function.", ("search", {"pattern": "def merge_intervals"})),
    reply("Reading it.", ("read_file", {"path": "intervals.py"})),
    reply("I'll reproduce the issue with a scratch script before changing anything.",
          ("write_file", {"path": "repro.py", "content":
                          "from intervals import merge_intervals\nprint(merge_intervals([(1, 3), (3, 5)]))\n"}),
          ("bash", {"command": "python repro.py", "timeout": 60})),
    reply("Confirmed: touching intervals stay apart because the comparison is strict. Closed "
          "intervals that share an end point overlap, so the test must be `<=`.",
          ("edit_file", {"path": "intervals.py",
                         "old_string": "if merged and start < merged[-1][1]:",
                         "new_string": "if merged and start <= merged[-1][1]:"})),
    reply("Adding a regression test and running the suite.",
          ("write_file", {"path": "tests/test_touching.py", "content": REGRESSION_TEST}),
          ("run_tests", {})),
    reply("Everything passes.",
          ("finish", {"summary": "merge_intervals() merges intervals that touch (start == previous "
                                 "end), since bookings are closed intervals. Added "
                                 "tests/test_touching.py; the whole suite passes."})),
]


def main() -> None:
    for name, lines in (("wordstats", WORDSTATS), ("intervals", INTERVALS)):
        out = HERE / name / "replay.jsonl"
        out.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
        print(f"wrote {out} ({len(lines)} completions)")


if __name__ == "__main__":
    main()
