"""``v4coder demo [NAME]``: run a bundled example end to end in a temporary copy.

Copies ``examples/NAME/repo`` into a fresh git repository, runs ``v4coder run`` on the
example's issue with its replay transcript, then applies the patch to a clean copy and
runs the example's tests there: the demo passes only if the patch makes them pass.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from agent.backends.replay import ReplayBackend
from app.headless import RunOptions, UsageError, run_headless

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
GIT_ID = {"GIT_AUTHOR_NAME": "v4coder demo", "GIT_AUTHOR_EMAIL": "demo@v4coder.invalid",
          "GIT_COMMITTER_NAME": "v4coder demo", "GIT_COMMITTER_EMAIL": "demo@v4coder.invalid"}


def example_names() -> list[str]:
    return sorted(p.name for p in EXAMPLES.iterdir() if (p / "repo").is_dir() and (p / "replay.jsonl").is_file())


def make_example_repo(name: str, dest: Path) -> Path:
    """Copy an example's repository into ``dest`` and commit it. Returns the repo path."""
    src = EXAMPLES / name / "repo"
    if not src.is_dir():
        raise UsageError(f"no example named {name!r}; examples: {', '.join(example_names())}")
    repo = dest / name
    shutil.copytree(src, repo)
    env = {**os.environ, **GIT_ID}
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "initial"]):
        subprocess.run(["git", "-C", str(repo), *cmd], check=True, env=env, capture_output=True)
    return repo


def run_tests(repo: Path) -> tuple[bool, str]:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                          cwd=repo, capture_output=True, text=True, timeout=300)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return proc.returncode == 0, lines[-1] if lines else ""


def demo_main(name: str | None, keep: bool = False) -> int:
    names = [name] if name else example_names()[:1]
    tmp = Path(tempfile.mkdtemp(prefix="v4coder-demo-"))
    try:
        for example in names:
            repo = make_example_repo(example, tmp)
            issue = (EXAMPLES / example / "issue.md").read_text(encoding="utf-8")
            patch_path = tmp / f"{example}.diff"
            print(f"v4coder demo: {example} in {repo}", file=sys.stderr)
            backend = ReplayBackend(EXAMPLES / example / "replay.jsonl")
            code = run_headless(RunOptions(repo=repo, issue=issue, patch=patch_path,
                                           events=tmp / f"{example}.events.jsonl"),
                                backend, model_name=backend.model)
            patch = patch_path.read_text(encoding="utf-8")
            print(patch)
            clean = make_example_repo(example, tmp / "clean")
            before, _ = run_tests(clean)
            subprocess.run(["git", "-C", str(clean), "apply", str(patch_path)], check=True)
            after, last = run_tests(clean)
            print(f"v4coder demo: tests before the patch {'pass' if before else 'fail'}; "
                  f"after: {'pass' if after else 'fail'} ({last})", file=sys.stderr)
            if code != 0 or before or not after:
                return 1
        return 0
    finally:
        if keep:
            print(f"v4coder demo: kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
