"""The JSON prefix automaton behind constrained array/object/number tool-call values."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model import json_grammar as jg

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=4),
    max_leaves=12)


def strict_loads(text: str):
    def refuse(name):
        raise ValueError(name)
    return json.loads(text, parse_constant=refuse)


def accepts(text: str, kind: str = "any") -> bool:
    return jg.complete(jg.feed(jg.start(kind), text))


@settings(max_examples=300, deadline=None)
@given(json_values, st.sampled_from([None, 1, 2]))
def test_every_serialised_value_is_accepted(value, indent):
    text = json.dumps(value, indent=indent)
    state = jg.start()
    for ch in text:
        state = jg.step(state, ch)
        assert state is not None, text
    assert jg.complete(state), text


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet='{}[],:"\\ -0123456789.eE+truefalsnu\n', max_size=14))
def test_acceptance_agrees_with_strict_json_loads(text):
    try:
        strict_loads(text)
        valid = True
    except ValueError:
        valid = False
    assert accepts(text) == valid, repr(text)


@settings(max_examples=300, deadline=None)
@given(json_values, st.data())
def test_every_prefix_lives_and_its_completion_is_valid_json(value, data):
    text = json.dumps(value)
    cut = data.draw(st.integers(0, len(text)))
    state = jg.feed(jg.start(), text[:cut])
    assert state is not None
    done = text[:cut] + jg.completion(state)
    strict_loads(done)


@pytest.mark.parametrize("kind,good,bad", [
    ("array", '[1, "a", {"b": null}]', '{"a": 1}'),
    ("object", '{"a": [true, false]}', "[1]"),
    ("integer", "-42", "4.5"),
    ("number", "-4.5e+3", '"4"'),
])
def test_root_kind_is_enforced(kind, good, bad):
    assert accepts(good, kind)
    assert not accepts(bad, kind)
    state = jg.start(kind)
    done = jg.completion(state)
    assert accepts(done, kind) and isinstance(strict_loads(done), (list, dict, int, float))


def test_rejections_are_immediate():
    assert jg.feed(jg.start(), "[01") is None          # leading zero
    assert jg.feed(jg.start(), '{"a" 1') is None       # missing colon
    assert jg.feed(jg.start(), '["a\nb"]') is None     # raw control character in a string
    assert jg.feed(jg.start(), "[1,]") is None         # trailing comma
    assert jg.feed(jg.start(), "[1]]") is None         # closes what was never opened
    assert jg.feed(jg.start(), "[NaN]") is None


def test_masks_over_the_real_vocabulary_match_simulation(toy_tokenizer):
    import torch

    from model.grammar import vocab_index
    index = vocab_index(toy_tokenizer, toy_tokenizer.get_vocab_size())
    masks = jg.JsonMasks(index.texts, index.plain)
    plain_ids = torch.nonzero(index.plain).flatten().tolist()
    for prefix in ["", "[", '["ab', '{"k": ', "[1", '{"a": [tr']:
        state = jg.feed(jg.start(), prefix)
        mask = masks.allowed(state)
        # brute force over a sample of the vocabulary (every 7th token) agrees with the mask
        for i in plain_ids[::7]:
            ok = jg.feed(state, index.texts[i]) is not None
            clean = not any(ord(c) < 0x20 and c not in " \t\n\r" for c in index.texts[i])
            assert bool(mask[i]) == (ok and clean), (prefix, index.texts[i])
        assert masks.allowed(state) is mask  # cached per state
