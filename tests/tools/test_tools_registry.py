from __future__ import annotations

import json

from tools.base import Tool, ToolContext, ToolError, ToolResult
from tools.registry import default_tools, run_tool, tools_by_name

CONTRACT = {
    "read_file": (["path"], ["path", "start_line", "end_line"]),
    "list_files": ([], ["path", "glob"]),
    "search": (["pattern"], ["pattern", "path", "glob"]),
    "edit_file": (["path", "old_string", "new_string"],
                  ["path", "old_string", "new_string", "replace_all"]),
    "write_file": (["path", "content"], ["path", "content"]),
    "run_tests": ([], ["command"]),
    "bash": (["command"], ["command", "timeout"]),
    "git_status": ([], []),
    "git_diff": ([], ["path"]),
    "git_log": ([], ["n"]),
    "git_commit": (["message"], ["message"]),
    "finish": (["summary"], ["summary"]),
}


def test_the_model_facing_contract():
    tools = default_tools()
    assert [t.name for t in tools] == list(CONTRACT)
    for tool in tools:
        required, names = CONTRACT[tool.name]
        schema = tool.parameters
        assert schema["type"] == "object"
        assert schema["required"] == required
        assert list(schema["properties"]) == names
        for prop in schema["properties"].values():
            assert prop["type"] in ("string", "integer", "boolean") and prop["description"]
        assert 20 < len(tool.description) < 400
        json.dumps(tool.openai_schema())
    mutating = {t.name for t in tools if t.mutating}
    assert mutating == {"edit_file", "write_file", "bash", "run_tests", "git_commit"}


def test_finish_ends_the_run(ctx):
    result = run_tool(tools_by_name()["finish"], ctx, {"summary": "fixed the bug"})
    assert result == ToolResult(ok=True, output="fixed the bug", finished=True)


def test_arguments_are_checked_and_coerced(ctx, repo):
    tools = tools_by_name()
    (repo / "f.txt").write_text("a\nb\nc\n")
    ranged = run_tool(tools["read_file"], ctx, {"path": "f.txt", "start_line": "2",
                                                "end_line": 2})
    assert ranged.ok and ranged.output.endswith("   2| b")
    missing = run_tool(tools["read_file"], ctx, {})
    assert not missing.ok and "missing required argument 'path'" in missing.output
    unknown = run_tool(tools["read_file"], ctx, {"path": "f.txt", "lines": 3})
    assert not unknown.ok and "unknown argument 'lines'" in unknown.output
    wrong = run_tool(tools["read_file"], ctx, {"path": 12})
    assert not wrong.ok and "must be of type string" in wrong.output
    flag = run_tool(tools["read_file"], ctx, {"path": "f.txt", "start_line": True})
    assert not flag.ok and "must be of type integer" in flag.output
    not_object = run_tool(tools["read_file"], ctx, ["f.txt"])
    assert not not_object.ok


def test_failures_become_one_line_results_never_tracebacks(ctx):
    def expected(ctx, args):
        raise ToolError("a clear reason")

    def unexpected(ctx, args):
        raise KeyError("boom")

    calm = Tool("calm", "d", {"type": "object", "properties": {}, "required": []}, expected)
    wild = Tool("wild", "d", {"type": "object", "properties": {}, "required": []}, unexpected)
    assert run_tool(calm, ctx, {}) == ToolResult(ok=False, output="a clear reason")
    result = run_tool(wild, ctx, {})
    assert not result.ok
    assert result.output == "wild failed: KeyError: 'boom'"
    assert "Traceback" not in result.output


def test_run_tool_refuses_denied_calls_before_running(repo):
    marker = repo / "ran.txt"
    ctx = ToolContext(repo=repo, mode="read-only")
    result = run_tool(tools_by_name()["write_file"], ctx, {"path": "ran.txt", "content": "x"})
    assert not result.ok and result.output.startswith("refused:")
    assert not marker.exists()
    result = run_tool(tools_by_name()["bash"], ctx, {"command": "touch ran.txt"})
    assert not result.ok and not marker.exists()


def test_a_full_edit_round_trip_through_the_registry(ctx, repo):
    tools = tools_by_name()
    assert run_tool(tools["edit_file"], ctx, {"path": "src/app.py", "old_string": "'hi'",
                                              "new_string": "'hello'"}).ok
    found = run_tool(tools["search"], ctx, {"pattern": "'hello'"})
    assert found.output == "src/app.py:1:print('hello')"
    assert "+print('hello')" in run_tool(tools["git_diff"], ctx, {}).output
    bash = run_tool(tools["bash"], ctx, {"command": "python3 src/app.py", "timeout": 30})
    assert bash.ok and bash.output == "hello\n[exit code: 0]"
