"""Test-wide setup. TRITON_INTERPRET must be set before any @triton.jit runs."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("GIT_AUTHOR_NAME", "v4coder tests")
os.environ.setdefault("GIT_AUTHOR_EMAIL", "tests@v4coder.invalid")
os.environ.setdefault("GIT_COMMITTER_NAME", "v4coder tests")
os.environ.setdefault("GIT_COMMITTER_EMAIL", "tests@v4coder.invalid")

import json  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _kernel_promises_checked():
    """Every interpreted Triton launch checks the kernels' tl.multiple_of / tl.max_contiguous
    promises against its values (``interpret_hints``: a GPU builds vector loads on them) and
    each access against the memory the launch may touch (``interpret_bounds``), and runs its
    programs in a shuffled order (``interpret_order``), as a GPU may."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        from model.kernels import interpret_bounds, interpret_hints, interpret_order

        interpret_hints.install()
        interpret_bounds.install()
        interpret_order.install()


@pytest.fixture
def make_repo(tmp_path):
    """make_repo({"path": "text", ...}, name="repo") -> a committed git repository."""

    def make(files: dict[str, str], name: str = "repo") -> Path:
        repo = tmp_path / name
        repo.mkdir()
        for rel, text in files.items():
            path = repo / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "initial"]):
            subprocess.run(["git", "-C", str(repo), *cmd], check=True, capture_output=True)
        return repo

    return make


@pytest.fixture
def make_replay(tmp_path):
    """make_replay([(text, [(tool, args), ...]), "raw completion", ...]) -> replay file path."""
    from agent.encoding import render_tool_calls

    counter = iter(range(1000))

    def make(replies: list) -> Path:
        lines = []
        for reply in replies:
            if isinstance(reply, str):
                raw = reply
            else:
                text, calls = reply
                block = render_tool_calls([{"function": {"name": n, "arguments": a}} for n, a in calls])
                raw = f"{text}\n\n{block}" if calls else text
            lines.append(json.dumps({"completion": raw}, ensure_ascii=False))
        path = tmp_path / f"replay{next(counter)}.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    return make
