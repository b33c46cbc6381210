import re

from agent.context.render import PREAMBLE, render_body, render_file, split_lines
from agent.context.tokens import count_tokens

SRC = "import os\n\ndef main():\n    return 0\r\n  \n\tx = '12 3'\n"


def test_every_line_is_numbered_with_one_space() -> None:
    out = render_file("pkg/mod.py", SRC)
    assert out.splitlines()[0] == "### pkg/mod.py"
    body = out.split("\n", 1)[1]
    assert body == ("1 import os\n2 \n3 def main():\n4     return 0\r\n5   \n6 \tx = '12 3'\n")


def test_no_trailing_newline_and_empty_file() -> None:
    assert render_body("a\nb") == "1 a\n2 b\n"
    assert render_body("") == ""
    assert split_lines("x\n\n") == ["x", ""]


def test_citations_resolve_to_real_lines() -> None:
    text = render_body(SRC)
    lines = split_lines(SRC)
    for row in text.splitlines(keepends=False):
        m = re.match(r"(\d+) (.*)\Z", row, re.DOTALL)
        assert m, row
        assert lines[int(m.group(1)) - 1].rstrip("\r") == m.group(2).rstrip("\r")


def test_token_counts_add_up_across_files() -> None:
    parts = [PREAMBLE, render_file("a.py", "x = 1\n\n\n"), render_file("b/c.ts", "let y = 2;"),
             render_file("d.md", "# T\n\n1. one\n")]
    assert sum(count_tokens(parts)) == count_tokens(["".join(parts)])[0]
