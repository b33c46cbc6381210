from __future__ import annotations

import stat

import pytest
from tools_testkit import write

from tools.base import ToolContext, ToolError
from tools.files import edit_file

SOURCE = """\
class Greeter:
    def greet(self, name):
        message = "hello " + name
        return message

    def part(self):
        return "bye"
"""


@pytest.fixture
def py(ctx, repo):
    write(repo, {"g.py": SOURCE})
    return repo / "g.py"


def test_exact_unique_match(ctx, py):
    out = edit_file(ctx, "g.py", 'return "bye"', 'return "goodbye"')
    assert out.startswith("edited g.py: replaced 1 occurrence")
    assert "(matched" not in out
    assert '   7|         return "goodbye"' in out  # a numbered snippet of the result
    assert py.read_text() == SOURCE.replace('"bye"', '"goodbye"')


def test_non_unique_exact_match_reports_lines_and_changes_nothing(ctx, py):
    with pytest.raises(ToolError) as info:
        edit_file(ctx, "g.py", "    def ", "    def renamed_")
    message = str(info.value)
    assert "occurs 2 times" in message and "lines 2, 6" in message
    assert "replace_all" in message
    assert py.read_text() == SOURCE


def test_replace_all(ctx, py):
    out = edit_file(ctx, "g.py", "self", "this", replace_all=True)
    assert "replaced 2 occurrences" in out
    assert py.read_text() == SOURCE.replace("self", "this")


def test_trailing_whitespace_tolerant(ctx, py):
    old = 'message = "hello " + name   \n        return message  \n'
    out = edit_file(ctx, "g.py", old, 'message = "hi " + name\n        return message\n')
    assert "ignoring trailing whitespace" in out
    assert '        message = "hi " + name\n        return message\n' in py.read_text()


def test_indentation_tolerant_reindents_the_replacement(ctx, py):
    old = 'message = "hello " + name\nreturn message\n'
    new = 'if not name:\n    name = "world"\nmessage = "hello " + name\nreturn message\n'
    out = edit_file(ctx, "g.py", old, new)
    assert "ignoring indentation" in out
    assert py.read_text() == SOURCE.replace(
        '        message = "hello " + name\n',
        '        if not name:\n            name = "world"\n        message = "hello " + name\n')


def test_indentation_tolerant_when_the_model_over_indents(ctx, py):
    old = '            message = "hello " + name\n            return message'
    new = '            return "hello " + name'
    edit_file(ctx, "g.py", old, new)
    assert '        return "hello " + name\n\n    def part' in py.read_text()


def test_whitespace_collapsed_match(ctx, repo):
    write(repo, {"c.txt": "alpha   beta\tgamma\nsecond  line\n"})
    out = edit_file(ctx, "c.txt", "alpha beta gamma\nsecond line", "replaced")
    assert "ignoring whitespace differences" in out
    assert (repo / "c.txt").read_text() == "replaced\n"


def test_spaces_for_tabs_are_mapped_back_to_tabs(ctx, repo):
    write(repo, {"main.go": "func f() int {\n\tif x {\n\t\treturn 1\n\t}\n\treturn 0\n}\n"})
    edit_file(ctx, "main.go", "    if x {\n        return 1\n    }",
              "    if x {\n        log()\n        return 2\n    }")
    assert (repo / "main.go").read_text() == (
        "func f() int {\n\tif x {\n\t\tlog()\n\t\treturn 2\n\t}\n\treturn 0\n}\n")


def test_fuzzy_match_must_be_unique(ctx, repo):
    write(repo, {"d.py": "if x:\n    go()\nif y:\n    go()\n"})
    with pytest.raises(ToolError, match=r"matches 2 places .* lines 2, 4"):
        edit_file(ctx, "d.py", "go()   \n", "stop()\n")
    assert (repo / "d.py").read_text() == "if x:\n    go()\nif y:\n    go()\n"


def test_not_found_suggests_the_closest_lines(ctx, py):
    with pytest.raises(ToolError) as info:
        edit_file(ctx, "g.py", 'message = "helo " + nam\nreturn mesage', "x")
    message = str(info.value)
    assert "not found" in message
    assert "Did you mean lines 3-4" in message
    assert '   3|         message = "hello " + name' in message
    assert py.read_text() == SOURCE


def test_not_found_without_anything_similar(ctx, py):
    with pytest.raises(ToolError, match="Nothing in the file is similar"):
        edit_file(ctx, "g.py", "zzzzqqqq 12345 !!!", "x")


def test_crlf_file_keeps_crlf(ctx, repo):
    (repo / "w.txt").write_bytes(b"first\r\nsecond\r\nthird\r\n")
    edit_file(ctx, "w.txt", "second\n", "2nd\nand more\n")
    assert (repo / "w.txt").read_bytes() == b"first\r\n2nd\r\nand more\r\nthird\r\n"
    edit_file(ctx, "w.txt", "third\r\n", "3rd\r\n")  # CRLF in the arguments is fine too
    assert (repo / "w.txt").read_bytes() == b"first\r\n2nd\r\nand more\r\n3rd\r\n"


def test_bom_and_mode_are_preserved(ctx, repo):
    target = repo / "bom.sh"
    target.write_bytes(b"\xef\xbb\xbfecho one\n")
    target.chmod(0o755)
    edit_file(ctx, "bom.sh", "one", "two")
    assert target.read_bytes() == b"\xef\xbb\xbfecho two\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o755


def test_identical_strings_are_an_error(ctx, py):
    with pytest.raises(ToolError, match="identical"):
        edit_file(ctx, "g.py", "self", "self")


def test_empty_old_string_creates_a_missing_file(ctx, repo):
    assert edit_file(ctx, "pkg/new.py", "", "x = 1\n").startswith("created pkg/new.py")
    assert (repo / "pkg/new.py").read_text() == "x = 1\n"
    with pytest.raises(ToolError, match="already has content"):
        edit_file(ctx, "pkg/new.py", "", "y = 2\n")
    with pytest.raises(ToolError, match="does not exist"):
        edit_file(ctx, "pkg/other.py", "x", "y")


def test_secret_files_are_not_edited(ctx, repo):
    write(repo, {".env": "TOKEN=abc\n"})
    with pytest.raises(ToolError, match="secret"):
        edit_file(ctx, ".env", "TOKEN=zzz", "TOKEN=x")
    assert (repo / ".env").read_text() == "TOKEN=abc\n"
    edit_file(ToolContext(repo=repo, allow_secrets=True), ".env", "abc", "def")
    assert (repo / ".env").read_text() == "TOKEN=def\n"
