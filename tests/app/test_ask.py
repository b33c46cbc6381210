"""`v4coder ask` end to end, as a real subprocess, on a real git repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from agent.session import Session, sessions_dir

ROOT = Path(__file__).resolve().parents[2]
FILES = {
    "calc/ops.py": "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n",
    "calc/__init__.py": "from calc.ops import add, sub\n",
    "AGENTS.md": "Answer briefly.\n",
}
ANSWER = ("`add` is defined at calc/ops.py:1-2 and re-exported by calc/__init__.py:1; "
          "`sub` is at calc/ops.py:5-6, and calc/ops.py:40 does not exist.")


def v4coder_ask(*args: object, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "V4CODER_CACHE_DIR": str(tmp / "cache")}
    return subprocess.run([sys.executable, "-m", "app.cli", "ask", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)


def test_ask_streams_a_cited_answer_and_reports_the_invalid_citation(make_repo, make_replay, tmp_path):
    repo = make_repo(FILES)
    replay = make_replay([("Let me check.", [("read_file", {"path": "calc/ops.py"})]), ANSWER])
    proc = v4coder_ask("--repo", repo, "--backend", f"replay:{replay}", "where", "is", "add?", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith(ANSWER + "\n")
    assert "citations: 4 (3 valid, 1 invalid)" in proc.stderr
    assert "invalid: calc/ops.py:40 (the file has 6 lines)" in proc.stderr
    assert '[read_file {"path": "calc/ops.py"}]' in proc.stderr
    # The model saw the instructions and the packed repository, with the read-only tools.
    session = Session.latest(sessions_dir(repo))
    assert session is not None and session.header["purpose"] == "ask"
    system = session.messages[0]["content"]
    assert "Cite every claim" in system and "Answer briefly." in system
    assert "### calc/ops.py\n1 def add(a, b):\n" in system
    assert session.messages[1] == {"role": "user", "content": "where is add?"}


def test_ask_json_shape(make_repo, make_replay, tmp_path):
    repo = make_repo(FILES)
    proc = v4coder_ask("--repo", repo, "--backend", f"replay:{make_replay([ANSWER])}", "--json",
                       "--budget", "5000", "where is add?", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)  # exactly one JSON object on stdout
    assert set(data) == {"answer", "citations", "invalid", "usage"}
    assert data["answer"] == ANSWER and data["invalid"] == 1
    assert data["citations"] == [
        {"path": "calc/ops.py", "start": 1, "end": 2, "valid": True},
        {"path": "calc/__init__.py", "start": 1, "end": 1, "valid": True},
        {"path": "calc/ops.py", "start": 5, "end": 6, "valid": True},
        {"path": "calc/ops.py", "start": 40, "end": 40, "valid": False}]
    usage = data["usage"]
    assert usage["steps"] == 1 and usage["prompt_tokens"] > usage["packed_tokens"] > 0
    assert usage["packed_files"] == 3


def test_ask_errors_are_one_line(make_repo, make_replay, tmp_path):
    repo = make_repo(FILES)
    cases = [
        (["--repo", tmp_path / "missing", "--backend", "replay:x.jsonl", "q"], 2, "not a directory"),
        (["--repo", repo, "--backend", "nope", "q"], 2, "unknown backend"),
        (["--repo", repo, "--backend", f"replay:{make_replay([ANSWER])}", "--budget", "0", "q"], 2,
         "--budget 0"),
        (["--repo", repo, "--backend", f"replay:{make_replay([('', [('list_files', {})])])}",
          "--max-steps", "1", "q"], 1, "no answer: the run ended with step_limit"),
        (["--repo", repo, "--backend", f"replay:{make_replay([('', [('list_files', {})])])}", "q"], 1,
         "no completion left"),
    ]
    for args, code, text in cases:
        proc = v4coder_ask(*args, tmp=tmp_path)
        assert proc.returncode == code, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert lines[-1].startswith("v4coder ask: ") and text in lines[-1], proc.stderr
        assert "Traceback" not in proc.stderr
