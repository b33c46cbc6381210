"""Grammar-constrained DSML: a random toy model forced into a block writes only blocks that
agent/dsml.py accepts, naming only offered tools and parameters."""

from __future__ import annotations

import pytest
import torch
from engine_support import token_ids

from agent.dsml import parse_completion
from model.grammar import DSML, ToolCallGrammar, check_tools
from model.sampling import SamplingParams

TOOLS = [
    {"type": "function", "function": {
        "name": "read_file", "description": "read",
        "parameters": {"type": "object", "required": ["path"], "properties": {
            "path": {"type": "string"}, "max_lines": {"type": "integer"}}}}},
    {"type": "function", "function": {
        "name": "git_log", "parameters": {"type": "object", "properties": {
            "oneline": {"type": "boolean"}, "order": {"type": "string", "enum": ["new", "old"]}}}}},
]


@pytest.mark.parametrize("seed", [0, 1])
def test_forced_block_from_random_model_parses(make_engine, toy_tokenizer, seed):
    engine = make_engine(prefix_cache=False)
    grammar = ToolCallGrammar.for_tools(toy_tokenizer, engine.lm.config.vocab_size, TOOLS,
                                        force_open=True, max_value_tokens=2,
                                        max_invokes=2)
    params = SamplingParams(temperature=1.0, seed=seed, max_new_tokens=400)
    gen = engine.generate(token_ids(12, seed=seed), params, constraint=grammar)
    text = "".join(e.text for e in gen)
    assert gen.stats.finish_reason == "tool_calls"
    completion = parse_completion(text, TOOLS)
    assert completion.format_error is None, text
    assert completion.tool_calls
    for call in completion.tool_calls:
        assert call.error is None, (call, text)
        assert call.name in {"read_file", "git_log"}


def test_dsml_token_only_opens_a_block(toy_tokenizer, toy_lm):
    grammar = ToolCallGrammar.for_tools(toy_tokenizer, toy_lm.config.vocab_size, TOOLS)
    dsml = grammar.index.dsml_id
    assert grammar.allowed()[dsml].item() is False
    for tok in toy_tokenizer.encode("Let me look.\n\n<", add_special_tokens=False).ids:
        grammar.advance(tok)
    assert grammar.allowed() is None             # after "<" the block may open
    grammar.advance(dsml)
    mask = grammar.allowed()
    allowed_text = {grammar.index.texts[i] for i in torch.nonzero(mask).flatten().tolist()}
    assert allowed_text and all("tool_calls>\n".startswith(t) for t in allowed_text)
    assert grammar.index.texts[dsml] == DSML


def test_bad_tool_names_are_refused():
    with pytest.raises(ValueError, match="DSML"):
        check_tools([{"function": {"name": 'bad"name'}}])


JSON_TOOLS = [
    {"type": "function", "function": {
        "name": "batch", "parameters": {"type": "object", "required": ["paths", "options"],
                                        "properties": {
            "paths": {"type": "array", "items": {"type": "string"}},
            "options": {"type": "object"},
            "scale": {"type": "number"}, "offset": {"type": "integer"}}}}},
]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_json_typed_values_from_random_model_are_strict_json(make_engine, toy_tokenizer, seed):
    import json

    engine = make_engine(prefix_cache=False)
    grammar = ToolCallGrammar.for_tools(toy_tokenizer, engine.lm.config.vocab_size, JSON_TOOLS,
                                        force_open=True, max_value_tokens=3, max_invokes=1)
    params = SamplingParams(temperature=1.0, seed=seed, max_new_tokens=300)
    gen = engine.generate(token_ids(12, seed=seed), params, constraint=grammar)
    text = "".join(e.text for e in gen)
    assert gen.stats.finish_reason == "tool_calls", text
    completion = parse_completion(text, JSON_TOOLS)
    assert completion.format_error is None, text
    (call,) = completion.tool_calls
    assert call.error is None, (call, text)
    assert isinstance(call.arguments["paths"], list)
    assert isinstance(call.arguments["options"], dict)
    if "offset" in call.arguments:
        assert isinstance(call.arguments["offset"], int)
    json.dumps(call.arguments)  # every value is plain JSON


def test_json_value_closes_only_when_whole(toy_tokenizer, toy_lm):
    grammar = ToolCallGrammar.for_tools(toy_tokenizer, toy_lm.config.vocab_size, JSON_TOOLS,
                                        force_open=True)
    text = '\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="batch">\n<｜DSML｜parameter name="paths" string="false">["a", '
    ids = toy_tokenizer.encode(text, add_special_tokens=False).ids
    for tok in ids:
        assert grammar.allowed()[tok], repr(grammar.index.texts[tok])
        grammar.advance(tok)
    mask = grammar.allowed()
    lt = toy_tokenizer.token_to_id("<")
    assert not mask[lt]                          # the array is still open
    for piece in ['"b"', "]"]:
        for tok in toy_tokenizer.encode(piece, add_special_tokens=False).ids:
            assert grammar.allowed()[tok]
            grammar.advance(tok)
    assert grammar.allowed()[lt]                 # now whole: the parameter may close


def test_long_string_values_are_not_cut_by_default(toy_tokenizer, toy_lm):
    """A file's content is one parameter value: without an explicit max_value_tokens the
    grammar never forces it closed (the reply's max_tokens bounds it)."""
    grammar = ToolCallGrammar.for_tools(toy_tokenizer, toy_lm.config.vocab_size, TOOLS,
                                        force_open=True)
    head = ('\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="read_file">\n'
            '<｜DSML｜parameter name="path" string="true">')
    body = "line of a long file\n" * 100
    for tok in toy_tokenizer.encode(head + body, add_special_tokens=False).ids:
        assert grammar.allowed()[tok]
        grammar.advance(tok)
    assert grammar.mode == "value" and grammar.value_tokens > 400
    word = toy_tokenizer.encode("more", add_special_tokens=False).ids[0]
    assert grammar.allowed()[word]
