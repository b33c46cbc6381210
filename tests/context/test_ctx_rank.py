import numpy as np

from agent.context.rank import (
    RankInput,
    build_edges,
    find_tests_for,
    named_files,
    pagerank,
    rank_files,
)


def test_pagerank_sums_to_one_and_follows_links() -> None:
    src, dst, w = np.array([0, 1, 2]), np.array([2, 2, 0]), np.ones(3)
    r = pagerank(4, src, dst, w)
    assert abs(r.sum() - 1) < 1e-9
    assert r[2] > r[0] > r[3] and r[2] > r[1]


def test_pagerank_personalised() -> None:
    src, dst, w = np.array([0, 1, 2, 3]), np.array([1, 0, 3, 2]), np.ones(4)
    r = pagerank(4, src, dst, w, personal=np.array([0.0, 0.0, 1.0, 0.0]))
    assert r[2] > r[3] > r[0] and abs(r[0] - r[1]) < 1e-9


def test_named_files_forms() -> None:
    paths = ["agent/context/pack.py", "agent/pack.py", "tools/read.py", "README.md", "pkg/__init__.py"]
    assert named_files("fix agent/context/pack.py please", paths) == ["agent/context/pack.py"]
    assert named_files("what does read.py do, and README.md?", paths) == ["tools/read.py", "README.md"]
    assert named_files("see `context/pack.py`", paths) == ["agent/context/pack.py"]
    assert named_files("module tools.read", paths) == ["tools/read.py"]
    assert named_files(None, paths) == []


def test_tests_for() -> None:
    paths = ["src/foo.py", "tests/test_foo.py", "pkg/foo_test.go", "web/foo.test.ts", "FooTest.java",
             "tests/test_foobar.py"]
    assert find_tests_for("src/foo.py", paths) == ["tests/test_foo.py", "pkg/foo_test.go",
                                                   "web/foo.test.ts", "FooTest.java"]


def _inp(path: str, defs: set[str], idents: set[str]) -> RankInput:
    return RankInput(path, frozenset(defs), frozenset(idents))


def test_rank_order_named_neighbours_tests_rest() -> None:
    files = [
        _inp("core/models.py", {"User", "load_user"}, {"User", "load_user"}),
        _inp("core/service.py", {"create_user"}, {"models", "User", "load_user", "create_user"}),
        _inp("core/api.py", {"handler"}, {"service", "create_user", "handler"}),
        _inp("tests/test_service.py", {"test_it"}, {"test_it"}),
        _inp("misc/alpha.py", {"alpha"}, {"alpha", "beta"}),
        _inp("misc/beta.py", {"beta"}, {"beta"}),
        _inp("misc/gamma.py", {"gamma"}, {"gamma", "beta"}),
    ]
    src, dst, _ = build_edges(files)
    assert (1, 0) in set(zip(src.tolist(), dst.tolist(), strict=True))  # service -> models
    order = rank_files(files, "Why does core/service.py fail?")
    assert order[0] == "core/service.py"
    assert set(order[1:3]) == {"core/models.py", "core/api.py"}  # imports it, references it
    assert order[3] == "tests/test_service.py"
    assert set(order[4:]) == {"misc/alpha.py", "misc/beta.py", "misc/gamma.py"}
    assert order[4] == "misc/beta.py"  # referenced by alpha and gamma: higher rank
    assert rank_files(files, "Why does core/service.py fail?") == order  # deterministic
