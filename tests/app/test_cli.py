"""The command surface: every subcommand answers --help, bad input is one line and exit 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def v4coder(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "app.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("cmd", [[], ["run"], ["undo"], ["demo"], ["pack"], ["ask"], ["model"], ["plan"]])
def test_help(cmd):
    proc = v4coder(*cmd, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout.lower()


def test_bench_lists_and_refuses_unknown():
    assert "kernels" in v4coder("bench", "--help").stdout
    proc = v4coder("bench", "warp-drive")
    assert proc.returncode == 2 and "unknown benchmark" in proc.stderr and "Traceback" not in proc.stderr


def test_plan_json_and_refusal():
    proc = v4coder("plan", "--machine", "4xH200", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["tp"] * plan["ep"] == 4
    refused = v4coder("plan", "--machine", "unified128")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr


def test_undo_outside_git_and_nothing_to_undo(tmp_path, make_repo):
    repo = make_repo({"a": "1\n"})
    proc = v4coder("undo", "--repo", repo)
    assert proc.returncode == 1 and "nothing to undo" in proc.stderr
    plain = tmp_path / "plain"
    plain.mkdir()
    proc = v4coder("undo", "--repo", plain)
    assert proc.returncode == 2 and "not inside a git repository" in proc.stderr
    assert "internal error" not in proc.stderr
