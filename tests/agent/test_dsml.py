"""The DSML parser: well-formed replies round-trip, malformed ones become errors, and no
input makes it raise."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.dsml import parse_completion
from agent.dsml_stream import DsmlTextStreamer
from agent.encoding import EOS, PARAM_CLOSE, render_tool_calls

TOOLS = [
    {"type": "function", "function": {"name": "edit_file", "description": "", "parameters": {
        "type": "object",
        "properties": {"path": {"type": "string"}, "old_string": {"type": "string"},
                       "new_string": {"type": "string"}, "replace_all": {"type": "boolean"}},
        "required": ["path", "old_string", "new_string"]}}},
    {"type": "function", "function": {"name": "read_file", "description": "", "parameters": {
        "type": "object",
        "properties": {"path": {"type": "string"}, "start_line": {"type": "integer"}},
        "required": ["path"]}}},
    {"type": "function", "function": {"name": "run_tests", "description": "", "parameters": {
        "type": "object", "properties": {"command": {"type": "string"}}, "required": []}}},
]

P = "<｜DSML｜parameter"
PC = "</｜DSML｜parameter>"


def block(*invokes: str) -> str:
    return "Text.\n\n<｜DSML｜tool_calls>\n" + "\n".join(invokes) + "\n</｜DSML｜tool_calls>"


def invoke(name: str, *params: str) -> str:
    return f'<｜DSML｜invoke name="{name}">\n' + "".join(p + "\n" for p in params) + "</｜DSML｜invoke>"


def param(name: str, value: str, string: str = "true") -> str:
    return f'{P} name="{name}" string="{string}">{value}{PC}'


def test_well_formed_reply_with_two_calls():
    raw = block(invoke("read_file", param("path", "a.py"), param("start_line", "3", "false")),
                invoke("run_tests")) + EOS
    c = parse_completion(raw, TOOLS)
    assert c.content == "Text."
    assert not c.has_errors
    assert [(t.name, t.arguments) for t in c.tool_calls] == [
        ("read_file", {"path": "a.py", "start_line": 3}), ("run_tests", {})]


def test_plain_answer_and_thinking_split():
    c = parse_completion("Let me think</think>The answer is 4.", TOOLS, thinking=True)
    assert (c.reasoning, c.content, c.tool_calls, c.format_error) == ("Let me think", "The answer is 4.", [], None)


def test_multiline_string_values_are_kept_verbatim():
    code = 'def f():\n    return "<b>"\n\n'
    c = parse_completion(block(invoke("edit_file", param("path", "x.py"), param("old_string", code),
                                      param("new_string", ""))), TOOLS)
    assert not c.has_errors
    assert c.tool_calls[0].arguments["old_string"] == code


def test_unclosed_invoke_is_a_block_error():
    raw = "x\n\n<｜DSML｜tool_calls>\n" + f'<｜DSML｜invoke name="run_tests">\n{param("command", "pytest")}\n'
    c = parse_completion(raw, TOOLS)
    assert c.format_error and "not closed" in c.format_error


def test_unclosed_block_is_a_block_error():
    raw = "x\n\n<｜DSML｜tool_calls>\n" + invoke("run_tests")
    assert "not closed" in parse_completion(raw, TOOLS).format_error


def test_unknown_tool_is_a_call_error():
    c = parse_completion(block(invoke("rm_everything", param("path", "/"))), TOOLS)
    assert c.has_errors and "unknown tool" in c.tool_calls[0].error


def test_duplicate_parameter_is_a_call_error():
    c = parse_completion(block(invoke("read_file", param("path", "a"), param("path", "b"))), TOOLS)
    assert "duplicate parameter" in c.tool_calls[0].error


def test_bad_json_literal_is_a_call_error():
    c = parse_completion(block(invoke("read_file", param("path", "a"), param("start_line", "three", "false"))), TOOLS)
    assert "JSON literal" in c.tool_calls[0].error


def test_missing_required_parameter_is_a_call_error():
    c = parse_completion(block(invoke("edit_file", param("path", "a"), param("old_string", "x"))), TOOLS)
    assert "missing required parameter 'new_string'" in c.tool_calls[0].error


def test_one_bad_call_marks_the_reply_as_erroneous():
    c = parse_completion(block(invoke("run_tests"), invoke("nope")), TOOLS)
    assert c.has_errors and c.tool_calls[0].error is None and c.tool_calls[1].error


def test_text_after_block_and_stray_dsml_are_errors():
    assert parse_completion(block(invoke("run_tests")) + "\nmore words", TOOLS).format_error
    assert parse_completion("I will call <｜DSML｜invoke name=\"x\">", TOOLS).format_error


def test_integer_written_as_string_is_coerced_when_unambiguous():
    c = parse_completion(block(invoke("read_file", param("path", "a"), param("start_line", "12"))), TOOLS)
    assert c.tool_calls[0].arguments["start_line"] == 12 and not c.has_errors


safe_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40).filter(
    lambda s: PARAM_CLOSE not in s and "｜DSML｜" not in s)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | safe_text,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(safe_text, inner, max_size=3),
                           max_leaves=6)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), json_values, max_size=4))
def test_render_then_parse_round_trips(args):
    tools = [{"type": "function", "function": {"name": "t", "parameters": {"type": "object"}}}]
    raw = "ok\n\n" + render_tool_calls([{"function": {"name": "t", "arguments": json.dumps(args)}}])
    c = parse_completion(raw, tools)
    assert c.format_error is None
    assert c.tool_calls[0].arguments == args


fragments = st.sampled_from([
    "<｜DSML｜tool_calls>", "</｜DSML｜tool_calls>", '<｜DSML｜invoke name="read_file">',
    '<｜DSML｜invoke name="', "</｜DSML｜invoke>", '<｜DSML｜parameter name="path" string="true">',
    '<｜DSML｜parameter name="start_line" string="false">', "</｜DSML｜parameter>", "\n\n", "\n",
    "</think>", EOS, '"', ">", "{", "3", "a.py", "｜DSML｜"])


@settings(max_examples=500, deadline=None)
@given(st.lists(fragments | st.text(max_size=10), max_size=30), st.booleans())
def test_parser_never_raises_and_never_half_accepts(parts, thinking):
    raw = "".join(parts)
    c = parse_completion(raw, TOOLS, thinking=thinking)
    if c.format_error is None:
        for call in c.tool_calls:
            assert call.error or call.name in {"edit_file", "read_file", "run_tests"}


@settings(max_examples=200, deadline=None)
@given(st.lists(fragments | st.text(max_size=8), max_size=20), st.integers(1, 9), st.booleans())
def test_streamer_emits_exactly_the_visible_text(parts, step, thinking):
    raw = "".join(parts)
    streamer = DsmlTextStreamer(thinking)
    out = []
    for i in range(0, len(raw), step):
        out.extend(streamer.feed(raw[i:i + step]))
    out.extend(streamer.flush())
    text = "".join(d.text for d in out if d.channel == "text")
    reasoning = "".join(d.text for d in out if d.channel == "reasoning")
    c = parse_completion(raw, TOOLS, thinking=thinking)
    if "<｜DSML｜tool_calls>" not in raw and EOS not in raw:
        assert text == c.content
        assert reasoning == c.reasoning
