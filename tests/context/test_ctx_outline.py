import pytest

from agent.context.outline import extract_symbols, identifiers, language_of, outline_entries
from agent.context.render import split_lines

SNIPPETS = {
    "a.py": ("class Foo(Base):\n    def bar(self, x):\n        return x\n\n    async def baz(\n"
             "        self, y,\n    ) -> int:\n        pass\n\ndef top(a):\n    pass\n",
             [("Foo", "class", 1), ("bar", "method", 2), ("baz", "method", 5), ("top", "function", 10)]),
    "a.js": ("class Foo extends Bar {\n  constructor(x) { this.x = x; }\n}\nfunction top(a) {\n"
             "  return a;\n}\nconst arrow = (x) => x * 2;\n",
             [("Foo", "class", 1), ("constructor", "method", 2), ("top", "function", 4),
              ("arrow", "function", 7)]),
    "a.ts": ("interface Shape {\n  area(): number;\n}\ntype Id = string;\nexport class Circle {\n"
             "  area(): number { return 1; }\n}\nexport function make(r: number): Circle {\n"
             "  return new Circle();\n}\n",
             [("Shape", "interface", 1), ("area", "method", 2), ("Id", "type", 4),
              ("Circle", "class", 5), ("area", "method", 6), ("make", "function", 8)]),
    "a.tsx": ("export function App(props: Props) {\n  return <div>{props.x}</div>;\n}\n"
              "const Btn = () => <button/>;\n",
              [("App", "function", 1), ("Btn", "function", 4)]),
    "a.go": ("package main\n\ntype Server struct {\n\tAddr string\n}\n\n"
             "func (s *Server) Start() error {\n\treturn nil\n}\n\nfunc main() {\n}\n",
             [("Server", "type", 3), ("Start", "method", 7), ("main", "function", 11)]),
    "a.rs": ("struct Point { x: i32 }\nimpl Point {\n    fn new(x: i32) -> Self {\n        Point { x }\n"
             "    }\n}\ntrait Draw {\n    fn draw(&self);\n}\nfn main() {\n}\n",
             [("Point", "class", 1), ("Point", "impl", 2), ("new", "method", 3), ("Draw", "trait", 7),
              ("draw", "method", 8), ("main", "function", 10)]),
    "A.java": ("public class A {\n    public A(int x) {\n    }\n    public int get()\n    {\n"
               "        return 1;\n    }\n}\n",
               [("A", "class", 1), ("A", "method", 2), ("get", "method", 4)]),
    "a.c": ("struct point { int x; };\nstatic int add(int a, int b) {\n    return a + b;\n}\n"
            "char *name(void)\n{\n    return 0;\n}\nint proto(int);\n",
            [("point", "class", 1), ("add", "function", 2), ("name", "function", 5),
             ("proto", "function", 9)]),
    "a.cpp": ("namespace ns {\nclass Widget {\npublic:\n    int size() const { return 0; }\n};\n}\n"
              "int Widget::count() {\n  return 1;\n}\n",
              [("ns", "namespace", 1), ("Widget", "class", 2), ("size", "method", 4),
               ("count", "function", 7)]),
}


@pytest.mark.parametrize("path", sorted(SNIPPETS))
def test_outline_symbols_per_language(path: str) -> None:
    src, expected = SNIPPETS[path]
    got = [(s.name, s.kind, s.line) for s in extract_symbols(path, src.encode())]
    assert got == expected


def test_outline_is_signatures_only_and_multiline_signatures_kept() -> None:
    src, _ = SNIPPETS["a.py"]
    entries = outline_entries("a.py", split_lines(src), extract_symbols("a.py", src.encode()))
    assert [n for n, _ in entries] == [1, 2, 5, 6, 7, 10]
    assert all("return" not in line and "pass" not in line for _, line in entries)


def test_java_signature_stops_before_allman_brace() -> None:
    src, _ = SNIPPETS["A.java"]
    entries = outline_entries("A.java", split_lines(src), extract_symbols("A.java", src.encode()))
    assert (5, "    {") not in entries


def test_markdown_outline_and_unknown_language() -> None:
    md = "# Title\ntext\n## Part\nmore\n"
    assert outline_entries("README.md", split_lines(md), []) == [(1, "# Title"), (3, "## Part")]
    assert language_of("x.unknown") is None
    assert extract_symbols("x.unknown", b"whatever") == []


def test_identifiers() -> None:
    assert identifiers("from pack import pack_repository as pr\nx = 1") >= {"pack", "pack_repository",
                                                                             "import", "from"}
