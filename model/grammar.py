"""Grammar-constrained DSML tool calls: logit masking over the real tokenizer's vocabulary.

Outside a block nothing is constrained, except that the ``｜DSML｜`` token may only follow a
``<`` (so it can only open a block). Once the model opens ``<｜DSML｜tool_calls>`` (or the caller
forces the block open), every token must keep the text a prefix of a well-formed block:

    <｜DSML｜tool_calls>\\n(<｜DSML｜invoke name="TOOL">\\n
        (<｜DSML｜parameter name="P" string="true|false">VALUE</｜DSML｜parameter>\\n)*
    </｜DSML｜invoke>\\n)+</｜DSML｜tool_calls>  then end-of-sentence

TOOL is one of the offered tools; P one of its parameters, each at most once, all required
ones before the invoke closes; ``string`` follows the schema type. Values: strings are free text
(closed by ``</｜DSML｜parameter>``; forced closed after ``max_value_tokens`` when set — off by
default, since a file's content is one value and the reply's max_tokens bounds it anyway);
booleans and enums one of their literals; arrays, objects, numbers and integers strict JSON of
that kind (model/json_grammar.py), closable only once the value is whole, and completed by the
shortest valid text after 8 tokens for a number or ``4 × max_value_tokens`` when set.
The token strings are written here (model/ never imports agent/); tools are OpenAI-format dicts.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from model import json_grammar
from model.json_grammar import JsonMasks

DSML = "｜DSML｜"
BLOCK_OPEN = f"<{DSML}tool_calls>"
BLOCK_CLOSE = f"</{DSML}tool_calls>"
INVOKE_OPEN = f'<{DSML}invoke name="'
INVOKE_CLOSE = f"</{DSML}invoke>"
PARAM_OPEN = f'<{DSML}parameter name="'
PARAM_CLOSE = f"</{DSML}parameter>"
EOS_ID = 1


@dataclass(slots=True)
class VocabIndex:
    texts: list[str]                 # decoded text of every token id
    by_text: dict[str, list[int]]    # text → ids usable inside literals
    plain: torch.Tensor              # bool [V]: ordinary text tokens (values)
    dsml_id: int
    json: JsonMasks | None = None    # built on the first JSON-typed value, then shared

    def json_masks(self) -> JsonMasks:
        if self.json is None:
            self.json = JsonMasks(self.texts, self.plain)
        return self.json


@functools.lru_cache(maxsize=4)
def vocab_index(tokenizer: Any, vocab_size: int) -> VocabIndex:
    texts = [tokenizer.decode([i], skip_special_tokens=False) for i in range(vocab_size)]
    special = set(tokenizer.get_added_tokens_decoder())
    dsml_id = next(i for i in special if texts[i] == DSML)
    plain = torch.zeros(vocab_size, dtype=torch.bool)
    by_text: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        if i in special or not text or "｜" in text:
            continue
        plain[i] = True
        if "\ufffd" not in text:
            by_text.setdefault(text, []).append(i)
    by_text[DSML] = [dsml_id]
    return VocabIndex(texts, by_text, plain, dsml_id)


Action = Callable[[], None]


@dataclass(slots=True)
class ToolCallGrammar:
    """A TokenConstraint (model/engine.py) for one reply."""

    index: VocabIndex
    tools: dict[str, dict[str, Any]]       # name → JSON schema of its parameters
    max_value_tokens: int | None = None    # None: values end when the model closes them
    max_invokes: int = 8
    invokes: int = 0
    mode: str = "free"                     # free | literal | value | json | eos | done
    text: str = ""                         # everything generated so far
    choices: list[tuple[str, Action]] = field(default_factory=list)
    tool: str = ""
    used: set[str] = field(default_factory=set)
    value_tokens: int = 0
    json_state: tuple | None = None        # JSON automaton state of the value being written
    json_budget: int = 0

    @classmethod
    def for_tools(cls, tokenizer: Any, vocab_size: int, tools: list[dict[str, Any]],
                  force_open: bool = False, max_value_tokens: int | None = None,
                  max_invokes: int = 8) -> ToolCallGrammar:
        by_name = {}
        for tool in tools:
            fn = tool.get("function", tool)
            by_name[fn["name"]] = fn.get("parameters") or {}
        if not by_name:
            raise ValueError("a tool-call grammar needs at least one tool")
        g = cls(vocab_index(tokenizer, vocab_size), by_name, max_value_tokens, max_invokes)
        if force_open:
            g._literal([("\n\n" + BLOCK_OPEN + "\n", g._start_invoke)])
        return g

    # -- TokenConstraint -----------------------------------------------------------------
    def allowed(self) -> torch.Tensor | None:
        v = self.index.plain.shape[0]
        if self.mode == "free":
            if self.text.endswith("<") and not self.text.endswith("</"):
                return None
            mask = torch.ones(v, dtype=torch.bool)
            mask[self.index.dsml_id] = False
            return mask
        mask = torch.zeros(v, dtype=torch.bool)
        if self.mode in ("eos", "done"):
            mask[EOS_ID] = True
        elif self.mode == "value":
            mask |= self.index.plain
            if self.text.endswith("</"):
                mask[self.index.dsml_id] = True
        elif self.mode == "json":
            mask |= self.index.json_masks().allowed(self.json_state)
            if json_grammar.complete(self.json_state):
                self._literal_mask(mask, [PARAM_CLOSE + "\n"])
        else:
            self._literal_mask(mask, [c for c, _ in self.choices])
        return mask

    def advance(self, token_id: int) -> None:
        piece = self.index.texts[token_id]
        self.text += piece
        if self.mode == "free":
            if token_id == self.index.dsml_id:
                self._literal([("tool_calls>\n", self._start_invoke)])
        elif self.mode == "value":
            self.value_tokens += 1
            if token_id == self.index.dsml_id:
                self._literal([("parameter>\n", self._params)])
            elif self.max_value_tokens and self.value_tokens >= self.max_value_tokens:
                self._literal([(PARAM_CLOSE + "\n", self._params)])
        elif self.mode == "json":
            self._json_advance(piece)
        elif self.mode == "literal":
            self._consume(piece)
        elif self.mode == "eos":
            self.mode = "done"

    # -- states --------------------------------------------------------------------------
    def _literal(self, choices: list[tuple[str, Action]]) -> None:
        self.mode, self.choices = "literal", choices

    def _consume(self, piece: str) -> None:
        left = [(c[len(piece):], act) for c, act in self.choices if c.startswith(piece)]
        if not left:  # cannot happen under the mask; fail closed
            self.mode = "eos"
            return
        for rest, act in left:
            if not rest:
                act()
                return
        self.choices = left

    def _start_invoke(self) -> None:
        self._literal([(INVOKE_OPEN + name + '">\n', functools.partial(self._invoke, name))
                       for name in self.tools])

    def _invoke(self, name: str) -> None:
        self.tool, self.used = name, set()
        self.invokes += 1
        self._params()

    def _params(self) -> None:
        schema = self.tools[self.tool]
        props: dict[str, Any] = schema.get("properties") or {}
        choices: list[tuple[str, Action]] = []
        for name, spec in props.items():
            if name in self.used:
                continue
            flag = "true" if (spec or {}).get("type", "string") == "string" else "false"
            head = f'{PARAM_OPEN}{name}" string="{flag}">'
            choices.append((head, functools.partial(self._value, name, spec or {})))
        if all(r in self.used for r in schema.get("required") or []):
            end = INVOKE_CLOSE + "\n"
            if self.invokes < self.max_invokes:
                choices.append((end + INVOKE_OPEN, self._after_open_invoke))
            choices.append((end + BLOCK_CLOSE, self._close))
        self._literal(choices)

    def _after_open_invoke(self) -> None:
        self._literal([(name + '">\n', functools.partial(self._invoke, name))
                       for name in self.tools])

    def _value(self, name: str, spec: dict[str, Any]) -> None:
        self.used.add(name)
        self.value_tokens = 0
        kind = spec.get("type", "string")
        closer = PARAM_CLOSE + "\n"
        if "enum" in spec and spec["enum"]:
            words = [v if isinstance(v, str) else _json(v) for v in spec["enum"]]
            self._literal([(w + closer, self._params) for w in words])
        elif kind == "boolean":
            self._literal([("true" + closer, self._params), ("false" + closer, self._params)])
        elif kind in ("integer", "number", "array", "object"):
            self.mode, self.json_state = "json", json_grammar.start(kind)
            self.json_budget = (8 if kind in ("integer", "number")
                                else 4 * self.max_value_tokens if self.max_value_tokens else 0)
        else:
            self.mode = "value"

    def _json_advance(self, piece: str) -> None:
        closer = PARAM_CLOSE + "\n"
        if json_grammar.complete(self.json_state) and piece.startswith("<"):
            self._literal([(closer, self._params)])
            self._consume(piece)
            return
        self.json_state = json_grammar.feed(self.json_state, piece)
        if self.json_state is None:  # cannot happen under the mask; fail closed
            self.mode = "eos"
            return
        self.value_tokens += 1
        if self.json_budget and self.value_tokens >= self.json_budget:
            self._literal([(json_grammar.completion(self.json_state) + closer, self._params)])

    def _close(self) -> None:
        self.mode = "eos"

    # -- masks ---------------------------------------------------------------------------
    def _literal_mask(self, mask: torch.Tensor, literals: list[str]) -> None:
        for lit in literals:
            for end in range(1, len(lit) + 1):
                for i in self.index.by_text.get(lit[:end], ()):
                    mask[i] = True


def _json(value: Any) -> str:
    import json
    return json.dumps(value, ensure_ascii=False)


_SAFE_NAME = re.compile(r"^[^\"\n<>]+$")


def check_tools(tools: list[dict[str, Any]]) -> None:
    """Tool and parameter names must be writable inside the DSML attribute quotes."""
    for tool in tools:
        fn = tool.get("function", tool)
        names = [fn.get("name", "")] + list(((fn.get("parameters") or {}).get("properties")
                                             or {}).keys())
        for name in names:
            if not isinstance(name, str) or not _SAFE_NAME.match(name):
                raise ValueError(f"tool or parameter name {name!r} cannot appear in a DSML tag")
