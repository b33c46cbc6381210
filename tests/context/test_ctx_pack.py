import json
import re
from pathlib import Path

import pytest

from agent.context.cli import pack_main
from agent.context.instructions import instructions_prompt, load_instructions
from agent.context.pack import delta_for_edits, pack_repository
from agent.context.render import PREAMBLE
from agent.context.tokens import count_tokens


def _filler(name: str, n: int) -> str:
    return "".join(f"def {name}_{i}(value):\n    return value * {i} + len('{name}')\n\n" for i in range(n))


FILES = {
    "core/models.py": "class User:\n    def __init__(self, name):\n        self.name = name\n\n"
                      "def load_user(name):\n    return User(name)\n",
    "core/service.py": "from core.models import User, load_user\n\n"
                       "def create_user(name):\n    user = load_user(name)\n    return user\n",
    "core/api.py": "from core.service import create_user\n\ndef handler(req):\n"
                   "    return create_user(req)\n",
    "tests/test_service.py": "from core.service import create_user\n\ndef test_it():\n"
                             "    assert create_user('a')\n",
    "README.md": "# Demo\n\nA demo repository.\n",
    **{f"misc/filler_{k}.py": _filler(f"f{k}", 60) for k in range(8)},
}


def test_whole_repository_fits_in_path_order(make_repo) -> None:  # noqa: ANN001
    repo = make_repo(FILES)
    packed = pack_repository(repo)
    assert packed.files == sorted(FILES)
    assert packed.outlined == [] and packed.omitted == []
    assert packed.text.startswith(PREAMBLE)
    assert packed.tokens == count_tokens([packed.text])[0]
    heads = re.findall(r"^### (\S+)$", packed.text, re.MULTILINE)
    assert heads == sorted(FILES)
    # citations resolve: every numbered row matches the file's real line
    for path in FILES:
        lines = (repo / path).read_text().split("\n")
        block = packed.text.split(f"### {path}\n", 1)[1].split("### ", 1)[0]
        for row in block.splitlines():
            n, _, text = row.partition(" ")
            assert lines[int(n) - 1] == text


def test_overflowing_budget_keeps_named_file_and_ranks_neighbours(make_repo) -> None:  # noqa: ANN001
    repo = make_repo(FILES)
    full = pack_repository(repo, use_cache=False)
    budget = full.tokens // 3
    q = "Why does core/service.py return None?"
    packed = pack_repository(repo, budget=budget, question=q)
    assert packed.tokens <= budget
    assert abs(packed.tokens - count_tokens([packed.text])[0]) <= 2
    assert "core/service.py" in packed.files
    assert {"core/models.py", "core/api.py", "tests/test_service.py"} <= set(packed.files)
    assert packed.outlined, "some files must have become outlines"
    assert set(packed.files) | set(packed.outlined) | set(packed.omitted) == set(FILES)
    name = packed.outlined[0]
    assert f"### {name} (outline: " in packed.text
    # outlines show signatures only, with their real line numbers
    assert re.search(r"^1 def f\d_0\(value\):$", packed.text, re.MULTILINE)
    assert "return value * 0" not in packed.text.split(f"### {name} (outline")[1].split("###")[0]
    # a named file is always included, even with a budget too small for much else
    tiny = pack_repository(repo, budget=300, question="look at core/api.py")
    assert "core/api.py" in tiny.files and tiny.tokens <= 300


def test_deterministic_and_cached_second_pack(make_repo) -> None:  # noqa: ANN001
    repo = make_repo(FILES)
    first = pack_repository(repo, budget=2000, question="core/models.py")
    assert not first.cache_hit
    assert (repo / ".git" / "v4coder" / "packs.pkl").is_file()
    second = pack_repository(repo, budget=2000, question="core/models.py")
    assert second.cache_hit and second.text == first.text and second.files == first.files
    fresh = pack_repository(repo, budget=2000, question="core/models.py", use_cache=False)
    assert fresh.text == first.text and fresh.tokens == first.tokens
    # fits-in-budget packs do not depend on the question: one prefix for every question
    a = pack_repository(repo, question="core/api.py")
    b = pack_repository(repo, question="something else")
    assert b.cache_hit and a.text == b.text


def test_file_facts_cache_survives_an_edit(make_repo) -> None:  # noqa: ANN001
    repo = make_repo(FILES)
    pack_repository(repo)
    (repo / "core/api.py").write_text("def handler(req):\n    return 2\n")
    again = pack_repository(repo)
    assert not again.cache_hit
    assert "1 def handler(req):\n2     return 2\n" in again.text
    assert again.tokens == count_tokens([again.text])[0]


def test_delta_holds_only_the_change_and_prefix_is_untouched(make_repo) -> None:  # noqa: ANN001
    repo = make_repo(FILES)
    packed = pack_repository(repo)
    prefix = packed.text
    assert delta_for_edits(packed, repo) == ""
    path = repo / "core/service.py"
    lines = path.read_text().split("\n")
    lines[3] = "    user = load_user(name.strip())"
    path.write_text("\n".join(lines))
    (repo / "core/new_mod.py").write_text("X = 1\n")
    (repo / "README.md").unlink()
    delta = delta_for_edits(packed, repo)
    assert packed.text == prefix
    assert delta == ("### README.md (deleted since packing)\n"
                     "### core/new_mod.py (new since packing)\n1 X = 1\n"
                     "### core/service.py (edited since packing)\n"
                     "@@ lines 4-4 now (were 4-4) @@\n4     user = load_user(name.strip())\n")
    assert pack_repository(repo).text != prefix  # a re-pack (after compaction) sees the edit


def test_instructions_agents_then_claude(make_repo) -> None:  # noqa: ANN001
    repo = make_repo({"CLAUDE.md": "Use tabs.\n", "a.py": "x = 1\n"})
    inst = load_instructions(repo)
    assert inst is not None and inst.path == "CLAUDE.md" and inst.text == "Use tabs.\n"
    (repo / "AGENTS.md").write_text("Run make test.\n")
    assert load_instructions(repo).path == "AGENTS.md"
    assert instructions_prompt(repo).endswith(
        "(AGENTS.md) follow. Respect them where they do not conflict with the above.\n"
        "<repository-instructions>\nRun make test.\n</repository-instructions>\n")
    assert load_instructions(repo / "a.py") is None


def test_pack_cli(make_repo, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    repo = make_repo({**FILES, ".env": "SECRET=1\n", "Cargo.lock": "x\n"})
    assert pack_main(["--repo", str(repo), "--budget", "1500", "--question", "core/api.py",
                      "--stats"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["tokens"] <= 1500 and stats["files"] >= 1 and stats["seconds"] >= 0
    assert stats["skipped"]["by_reason"] == {"lock file": 1, "secret": 1}
    assert pack_main(["--repo", str(Path(repo) / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a directory" in err
    assert pack_main(["--repo", str(repo), "--budget", "lots"]) == 2
    assert pack_main(["--budget", "5"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 2


def test_cached_over_budget_pack_does_not_answer_a_question(make_repo):
    """An over-budget pack cached without a question must not be served for a question: the
    question re-ranks (a file it names comes whole), and a repeat of either is a cache hit."""
    from agent.context.pack import pack_repository

    body = "".join(f"def f{i}(x):\n    return x * {i} + {i}\n\n" for i in range(40))
    repo = make_repo({f"mod_{c}.py": body for c in "abcdefgh"})
    plain = pack_repository(repo, 4_000)
    assert "mod_h.py" in plain.outlined and not plain.cache_hit
    asked = pack_repository(repo, 4_000, "why does mod_h.py multiply?")
    assert "mod_h.py" in asked.files and not asked.cache_hit
    again = pack_repository(repo, 4_000)
    assert again.cache_hit and again.text == plain.text
    assert pack_repository(repo, 4_000, "why does mod_h.py multiply?").cache_hit
