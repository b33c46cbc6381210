"""Small helpers for running git as a subprocess on the user's repository.

Every call gets the allow-listed environment of tools.environment — so neither our secrets
nor variables that would point git somewhere else (``GIT_DIR``, ``GIT_INDEX_FILE`` … set
when we are started from a git hook) reach git, its hooks or its filters — never prompts,
and decodes paths with ``surrogateescape`` so any file name round-trips to ``os`` calls.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tools.base import ToolError
from tools.environment import GIT_ONLY_NAMES, inherited_env

# Used for commits that v4coder writes on its own behalf (checkpoints, fallback identity).
FALLBACK_NAME = "v4coder"
FALLBACK_EMAIL = "v4coder@localhost"
IDENTITY_ENV = {
    "GIT_AUTHOR_NAME": FALLBACK_NAME, "GIT_AUTHOR_EMAIL": FALLBACK_EMAIL,
    "GIT_COMMITTER_NAME": FALLBACK_NAME, "GIT_COMMITTER_EMAIL": FALLBACK_EMAIL,
}


def git_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Allow-listed, secret-free variables (hooks and filters run with this) + git settings."""
    env = inherited_env(GIT_ONLY_NAMES)
    env.update({"GIT_TERMINAL_PROMPT": "0", "GIT_PAGER": "cat", "PAGER": "cat",
                "LC_ALL": "C", "GIT_OPTIONAL_LOCKS": "0"})
    if extra:
        env.update(extra)
    return env


def run_git(repo: Path, *args: str, env: dict[str, str] | None = None,
            input_text: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``git args`` in ``repo``; raise ToolError with git's message when it fails."""
    try:
        proc = subprocess.run(
            ["git", *args], cwd=repo, env=git_env(env), input=input_text,
            stdin=None if input_text is not None else subprocess.DEVNULL,
            capture_output=True, text=True, encoding="utf-8", errors="surrogateescape",
            timeout=600,
        )
    except FileNotFoundError as exc:
        raise ToolError("git is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"git {args[0]} took longer than 600 s") from exc
    if check and proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip().splitlines()
        detail = message[-1] if message else f"exit code {proc.returncode}"
        raise ToolError(f"git {args[0]} failed: {detail}")
    return proc


def git_out(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    return run_git(repo, *args, env=env).stdout


def is_git_repo(repo: Path) -> bool:
    proc = run_git(repo, "rev-parse", "--is-inside-work-tree", check=False)
    return proc.returncode == 0 and proc.stdout.strip() == "true"


def require_git_repo(repo: Path) -> None:
    if not is_git_repo(repo):
        raise ToolError(f"{repo} is not inside a git repository")


def git_toplevel(repo: Path) -> Path:
    return Path(git_out(repo, "rev-parse", "--show-toplevel").strip())


def git_prefix(repo: Path) -> str:
    """Path of ``repo`` below the top of its work tree ('' at the top, else 'sub/dir/')."""
    return git_out(repo, "rev-parse", "--show-prefix").strip()


def head_commit(repo: Path) -> str | None:
    proc = run_git(repo, "rev-parse", "--verify", "--quiet", "HEAD^{commit}", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def empty_tree(repo: Path) -> str:
    """The id of the empty tree in this repository's hash (sha1 or sha256)."""
    return run_git(repo, "hash-object", "-t", "tree", "--stdin", input_text="").stdout.strip()


def has_identity(repo: Path) -> bool:
    name = run_git(repo, "config", "user.name", check=False).stdout.strip()
    email = run_git(repo, "config", "user.email", check=False).stdout.strip()
    return bool(name and email)


def split_z(output: str) -> list[str]:
    return [item for item in output.split("\0") if item]


@contextmanager
def temporary_index(repo: Path, seed_from_real: bool = True) -> Iterator[dict[str, str]]:
    """Yield an env whose GIT_INDEX_FILE is a private copy of the real index.

    Seeding from the real index keeps git's stat cache, so ``git add -A`` only rehashes
    files that changed; the real index itself is never written.
    """
    real_index = repo / git_out(repo, "rev-parse", "--git-path", "index").strip()
    with tempfile.TemporaryDirectory(prefix="v4coder-index-") as tmp:
        index = Path(tmp) / "index"
        if seed_from_real and real_index.is_file():
            # copy2 keeps the index's mtime: git's "racily clean" check compares entries
            # against it, so a same-size edit made right after staging is still rehashed.
            shutil.copy2(real_index, index)
        yield {"GIT_INDEX_FILE": str(index)}


# Keep conversions from user config out of snapshots so bytes round-trip exactly.
NO_CONVERSION = ("-c", "core.autocrlf=false", "-c", "core.safecrlf=false")


def snapshot_tree(repo: Path) -> str:
    """Write the whole work tree (tracked + untracked, not ignored) as a tree object."""
    top = git_toplevel(repo)
    with temporary_index(top) as env:
        proc = run_git(top, *NO_CONVERSION, "add", "-A", "--", ".", env=env, check=False)
        if proc.returncode != 0:  # e.g. an index format we could not reuse: start fresh
            Path(env["GIT_INDEX_FILE"]).unlink(missing_ok=True)
            run_git(top, *NO_CONVERSION, "add", "-A", "--", ".", env=env)
        return git_out(top, "write-tree", env=env).strip()
