"""Citation extraction and checking against real files."""

from __future__ import annotations

from agent.context.citations import check_citations, citation_report, extract_citations


def test_extract_citations_forms_and_non_citations() -> None:
    text = ("See `a/b.py:12`, (c.py:3-5) and ./d.txt:7–9; a/b.py:12 again; e.py:1:4. "
            "Not http://example.com:8080/x, not 12:30, not Note:3.")
    assert extract_citations(text) == [("a/b.py", 12, 12), ("c.py", 3, 5), ("d.txt", 7, 9),
                                       ("e.py", 1, 1)]


def test_check_citations_resolve_to_real_lines(make_repo) -> None:  # noqa: ANN001
    repo = make_repo({"pkg/mod.py": "a = 1\nb = 2\nc = 3\n", "README.md": "hi\n"})
    (repo.parent / "outside.py").write_text("x\n" * 50)
    cites = check_citations(repo, "pkg/mod.py:1-3, pkg/mod.py:4, README.md:1, nope.py:1, "
                                  "../outside.py:2, pkg/mod.py:3-2")
    assert [(c.label, c.valid) for c in cites] == [
        ("pkg/mod.py:1-3", True), ("pkg/mod.py:4", False), ("README.md:1", True),
        ("nope.py:1", False), ("../outside.py:2", False), ("pkg/mod.py:3-2", False)]
    assert cites[1].reason == "the file has 3 lines"
    assert cites[4].reason == "no such file in the repository"
    report = citation_report(cites)
    assert report.startswith("citations: 6 (2 valid, 4 invalid)\n")
    assert "  invalid: pkg/mod.py:4 (the file has 3 lines)\n" in report
    assert citation_report([]) == "citations: none found in the answer\n"


def test_bare_file_names_count_when_the_repository_has_them(make_repo) -> None:  # noqa: ANN001
    repo = make_repo({"Makefile": "all:\n\techo hi\n\techo bye\n", "LICENSE": "MIT\n",
                      "README.md": "".join(f"line {i}\n" for i in range(1, 13)),
                      "docs/README.md": "one\ntwo\n", "src/tool.py": "x = 1\ny = 2\n"})
    text = ("Build with Makefile:3 (see also Makefile:2-3), licence LICENSE:1, README.md:10, "
            "LICENSE:9. Note:3 and Dockerfile:2 are not files; neither is 10:30.")
    cites = check_citations(repo, text)
    assert [(c.label, c.valid) for c in cites] == [
        ("Makefile:3", True), ("Makefile:2-3", True), ("LICENSE:1", True), ("README.md:10", True),
        ("LICENSE:9", False)]
    assert cites[-1].reason == "the file has 1 lines"


def test_known_paths_resolve_unique_base_names(make_repo) -> None:  # noqa: ANN001
    repo = make_repo({"Makefile": "a\nb\nc\n", "src/tool.py": "x = 1\ny = 2\n",
                      "docs/README.md": "one\ntwo\n", "pkg/README.md": "1\n", "build/Makefile": "q\n"})
    packed = ["Makefile", "src/tool.py", "docs/README.md", "pkg/README.md"]  # build/ not packed
    cites = check_citations(repo, "tool.py:2, Makefile:3, README.md:1, src/tool.py:3, Other:1",
                            known_paths=packed)
    assert [(c.label, c.valid) for c in cites] == [
        ("src/tool.py:2", True),  # the one packed file named tool.py
        ("Makefile:3", True),  # the root Makefile itself, not build/Makefile
        ("README.md:1", False),  # two packed README.md files and none at the root: ambiguous
        ("src/tool.py:3", False)]
    assert cites[2].reason == "no such file in the repository"
