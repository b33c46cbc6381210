"""`v4coder run` end to end, as a real subprocess, on real git repositories."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.session import Session, sessions_dir
from app.demo import EXAMPLES, example_names, make_example_repo

V4CODER = [sys.executable, "-m", "app.cli"]
ROOT = Path(__file__).resolve().parents[2]


def v4coder(*args, cwd=None, timeout=120):
    return subprocess.run([*V4CODER, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


def pytest_passes(repo: Path) -> bool:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=repo,
                          capture_output=True, text=True, timeout=120)
    return proc.returncode == 0


@pytest.mark.parametrize("name", example_names())
def test_example_replay_produces_a_patch_that_fixes_the_tests(name, tmp_path):
    assert len(example_names()) >= 2
    repo = make_example_repo(name, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    proc = v4coder("run", "--repo", repo, "--issue", EXAMPLES / name / "issue.md",
                   "--backend", f"replay:{EXAMPLES / name / 'replay.jsonl'}", "--events", out / "ev.jsonl",
                   "--patch", out / "fix.diff", "--predictions", out / "preds.jsonl", "--quiet")
    assert proc.returncode == 0, proc.stderr
    patch = (out / "fix.diff").read_text()
    assert patch.startswith("diff --git")
    assert "repro.py" not in patch  # scratch files stay out of the patch
    branch = subprocess.run(["git", "-C", repo, "branch", "--show-current"], capture_output=True, text=True)
    assert branch.stdout.startswith("v4coder/run-")
    clean = make_example_repo(name, tmp_path / "clean")
    assert not pytest_passes(clean)
    subprocess.run(["git", "-C", clean, "apply", out / "fix.diff"], check=True)
    assert pytest_passes(clean)
    pred = json.loads((out / "preds.jsonl").read_text())
    assert pred["model_patch"] == patch and set(pred) == {"instance_id", "model_name_or_path", "model_patch"}
    events = [json.loads(line) for line in (out / "ev.jsonl").read_text().splitlines()]
    assert events[-1]["type"] == "done" and events[-1]["finished"]
    assert {"step", "text_delta", "tool_call", "tool_result", "usage", "done"} <= {e["type"] for e in events}


def test_intervals_patch_includes_the_new_test_file(tmp_path):
    repo = make_example_repo("intervals", tmp_path)
    proc = v4coder("run", "--repo", repo, "--issue", "fix it", "--quiet", "--patch", tmp_path / "p.diff",
                   "--backend", f"replay:{EXAMPLES / 'intervals' / 'replay.jsonl'}")
    assert proc.returncode == 0, proc.stderr
    patch = (tmp_path / "p.diff").read_text()
    assert "b/tests/test_touching.py" in patch and "new file mode" in patch
    assert (repo / "repro.py").exists()  # left in the tree, just not in the patch


def test_swe_bench_instance(make_repo, make_replay, tmp_path):
    repo = make_repo({"m.py": "X = 1\n"})
    head = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    inst = tmp_path / "inst.json"
    inst.write_text(json.dumps({"instance_id": "acme__m-1", "base_commit": head, "problem_statement": "X should be 2"}))
    replay = make_replay([("Fix.", [("edit_file", {"path": "m.py", "old_string": "X = 1", "new_string": "X = 2"})]),
                          ("Done.", [("finish", {"summary": "X is 2"})])])
    proc = v4coder("run", "--repo", repo, "--instance", inst, "--backend", f"replay:{replay}",
                   "--predictions", tmp_path / "p.jsonl", "--quiet")
    assert proc.returncode == 0, proc.stderr
    pred = json.loads((tmp_path / "p.jsonl").read_text())
    assert pred["instance_id"] == "acme__m-1" and "+X = 2" in pred["model_patch"]

    inst.write_text(json.dumps({"instance_id": "a", "base_commit": "0" * 40, "problem_statement": "p"}))
    proc = v4coder("run", "--repo", repo, "--instance", inst, "--backend", f"replay:{replay}")
    assert proc.returncode == 2 and "base_commit" in proc.stderr and "Traceback" not in proc.stderr


def test_unfinished_run_exits_non_zero_but_still_writes_the_patch(make_repo, make_replay, tmp_path):
    repo = make_repo({"m.py": "X = 1\n"})
    replay = make_replay([("Fix.", [("write_file", {"path": "m.py", "content": "X = 3\n"})])])
    proc = v4coder("run", "--repo", repo, "--issue", "x", "--backend", f"replay:{replay}",
                   "--patch", tmp_path / "p.diff", "--quiet")
    assert proc.returncode == 1
    assert "+X = 3" in (tmp_path / "p.diff").read_text()


@pytest.mark.parametrize("args, message", [
    (["run", "--repo", "/nonexistent/x", "--issue", "i", "--backend", "replay:r"], "not a directory"),
    (["run", "--issue", "i", "--backend", "replay:/nonexistent.jsonl"], "cannot read replay file"),
    (["run", "--issue", "i", "--backend", "warp:9"], "unknown backend"),
    (["run", "--issue", "i", "--backend", "openai:ftp://x"], "http(s) URL"),
    (["run", "--issue", "i", "--backend", "replay:r", "--max-steps", "zero"], "invalid int"),
    (["frobnicate"], "invalid choice"),
    (["run", "--issue", "i", "--backend", "replay:r", "--patch", "/nonexistent/dir/p.diff"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    proc = v4coder(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_not_a_git_repo_and_bad_replay_lines(tmp_path, make_repo):
    plain = tmp_path / "plain"
    plain.mkdir()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"completion": "ok"}\nnot json\n')
    proc = v4coder("run", "--repo", plain, "--issue", "i", "--backend", f"replay:{bad}")
    assert proc.returncode == 2 and "bad.jsonl:2" in proc.stderr
    good = tmp_path / "good.jsonl"
    good.write_text('{"completion": "ok"}\n')
    proc = v4coder("run", "--repo", plain, "--issue", "i", "--backend", f"replay:{good}")
    assert proc.returncode == 2 and "not a git repository" in proc.stderr


def test_resume_after_the_process_was_killed(make_repo, make_replay, tmp_path):
    repo = make_repo({"m.py": "X = 1\n"})
    slow = make_replay([
        ("Edit.", [("edit_file", {"path": "m.py", "old_string": "X = 1", "new_string": "X = 2"})]),
        ("Wait.", [("bash", {"command": "touch started && sleep 60"})])])
    proc = subprocess.Popen([*V4CODER, "run", "--repo", str(repo), "--issue", "make X 2",
                             "--backend", f"replay:{slow}", "--quiet"], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    deadline = time.time() + 60
    while not (repo / "started").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert (repo / "started").exists()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    session_file = sorted(sessions_dir(repo).glob("*.jsonl"))[-1]
    session = Session.load(session_file)
    assert session.messages[-1]["role"] == "tool" and session.messages[-1]["content"].startswith("interrupted")
    finish = make_replay([("Resumed; finishing.", [("finish", {"summary": "X is 2"})])])
    proc2 = v4coder("run", "--repo", repo, "--resume", "latest", "--backend", f"replay:{finish}",
                    "--patch", tmp_path / "p.diff", "--quiet")
    assert proc2.returncode == 0, proc2.stderr
    assert "+X = 2" in (tmp_path / "p.diff").read_text()
    roles = [m["role"] for m in Session.load(session_file).messages]
    assert roles.count("user") == 1 and roles[-2:] == ["assistant", "tool"]


def tree_snapshot(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for p in sorted(repo.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(repo).parts}


def test_undo_walks_back_every_mutating_step_exactly(make_repo, make_replay):
    repo = make_repo({"a.py": "A = 1\n", "b.txt": "bee\n", "keep/c.txt": "sea\n"})
    (repo / "untracked.txt").write_text("mine, not committed\n")
    start = tree_snapshot(repo)
    replay = make_replay([
        ("Edit.", [("edit_file", {"path": "a.py", "old_string": "A = 1", "new_string": "A = 2"})]),
        ("New file.", [("write_file", {"path": "new/d.txt", "content": "dee\n"})]),
        ("Delete.", [("bash", {"command": "rm b.txt untracked.txt && echo x >> keep/c.txt"})]),
        ("Done.", [("finish", {"summary": "s"})])])
    proc = v4coder("run", "--repo", repo, "--issue", "i", "--backend", f"replay:{replay}", "--quiet")
    assert proc.returncode == 0, proc.stderr
    after = tree_snapshot(repo)
    assert after != start and "b.txt" not in after and "new/d.txt" in after
    steps = []
    while True:
        proc = v4coder("undo", "--repo", repo)
        if proc.returncode != 0:
            assert "nothing to undo" in proc.stderr
            break
        steps.append(tree_snapshot(repo))
    assert len(steps) == 3
    assert steps[0]["keep/c.txt"] == b"sea\n" and "b.txt" in steps[0] and "new/d.txt" in steps[0]
    assert steps[-1] == start  # untracked file included
    status = subprocess.run(["git", "-C", repo, "status", "--porcelain"], capture_output=True, text=True).stdout
    assert status.strip() == "?? untracked.txt"  # index and HEAD untouched by undo


@pytest.mark.parametrize("allow", [False, True])
def test_secrets_stay_out_of_context_unless_allowed(allow, make_repo, make_replay, tmp_path):
    repo = make_repo({"app.py": "import os\n", ".gitignore": ".env\n"})
    (repo / ".env").write_text("API_TOKEN=s3cr3t-value\n")
    replay = make_replay([("Peek.", [("read_file", {"path": ".env"})]),
                          ("Shell.", [("bash", {"command": "cat .env"})]),
                          ("Done.", [("finish", {"summary": "s"})])])
    args = ["run", "--repo", repo, "--issue", "i", "--backend", f"replay:{replay}", "--quiet",
            "--events", tmp_path / "ev.jsonl", "--context-budget", "0"]
    proc = v4coder(*args, *(["--allow-secrets"] if allow else []))
    assert proc.returncode == 0, proc.stderr
    events = (tmp_path / "ev.jsonl").read_text()
    assert ("s3cr3t-value" in events) == allow


def test_run_on_the_embedded_runtime_ends_cleanly(make_repo, tmp_path):
    """A random toy model cannot solve anything, but the whole path — official-format
    checkpoint, engine, grammar, DSML parser, loop — runs and ends with a clear reason."""
    toy = tmp_path / "toy"
    assert v4coder("model", "init-toy", "--out", toy, "--preset", "tiny").returncode == 0
    repo = make_repo({"a.py": "x = 1\n"})
    proc = v4coder("run", "--repo", repo, "--issue", "fix", "--backend", f"embedded:{toy}",
                   "--max-tokens", "8", "--max-steps", "4", "--context-budget", "0",
                   "--events", tmp_path / "ev.jsonl", "--quiet")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    events = [json.loads(line) for line in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert events[-1]["type"] == "done" and events[-1]["reason"] in ("format_errors", "step_limit")
    assert any(e["type"] == "usage" and e["prompt_tokens"] > 100 for e in events)
