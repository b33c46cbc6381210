"""Pure helpers: fuzzy matching, call diffs, the context meter."""

from __future__ import annotations

from app.tui.diffs import call_diff, diff_stats, working_tree_diff
from app.tui.fuzzy import fuzzy_rank, fuzzy_score, repo_file_list
from app.tui.status import StatusState, meter, render_status


def test_fuzzy_prefers_file_names_and_runs():
    files = ["app/tui/prompt.py", "agent/prompts.py", "tests/tui/test_prompt.py", "README.md"]
    assert fuzzy_rank("prompt", files)[0] in ("app/tui/prompt.py", "agent/prompts.py")
    assert fuzzy_rank("atp", files)[0] == "app/tui/prompt.py"
    assert fuzzy_score("zz", "README.md") is None
    assert fuzzy_rank("", files, limit=2) == files[:2] or len(fuzzy_rank("", files, limit=2)) == 2


def test_repo_file_list_uses_git(repo):
    (repo / "untracked.txt").write_text("x\n")
    (repo / ".gitignore").write_text("ignored.txt\n")
    (repo / "ignored.txt").write_text("x\n")
    files = repo_file_list(repo)
    assert "hello.py" in files and "untracked.txt" in files and "ignored.txt" not in files


def test_call_diffs(repo):
    edit = call_diff(repo, "edit_file", {"path": "hello.py", "old_string": "'hi ' + name",
                                         "new_string": "'hey ' + name"})
    assert "@@ -1,5 +1,5 @@" in edit and "-    return 'hi ' + name" in edit
    assert diff_stats(edit) == (1, 1)
    new = call_diff(repo, "write_file", {"path": "new.py", "content": "a\nb\n"})
    assert new.startswith("--- /dev/null\n+++ b/new.py") and diff_stats(new) == (2, 0)
    assert call_diff(repo, "bash", {"command": "ls"}) == ""
    assert call_diff(repo, "write_file", {"path": "../escape.py", "content": "x"}).startswith(
        "--- /dev/null")  # never reads outside the repository
    (repo / "hello.py").write_text("changed\n")
    (repo / "extra.txt").write_text("extra\n")
    tree = working_tree_diff(repo)
    assert "+changed" in tree and "+++ b/extra.txt" in tree


def test_context_meter():
    assert meter(0, 0).plain == "▕" + "░" * 12 + "▏"
    assert meter(500_000, 250_000).plain == "▕" + "█" * 3 + "▒" * 3 + "░" * 6 + "▏"
    text = render_status(StatusState(backend="replay", model="m", prompt_tokens=12_345,
                                      cached_tokens=10_000, tokens_per_second=201, step=4)).plain
    assert "12.3k/1M (10.0k cached, 2.3k new)" in text and "201 tok/s" in text and "step 4" in text
