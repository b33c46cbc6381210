"""A JSON prefix automaton and the token masks it implies, for tool-call values that are JSON
(array, object, number, integer parameters: ``string="false"`` in DSML).

    state = start("array")              # the root must be an array
    state = step(state, ch)             # None once the text can no longer become valid JSON
    complete(state)                     # the text so far is one whole JSON value of that kind
    completion(state)                   # a shortest text that completes it ('"]}' …)

States are small immutable tuples ``(mode, stack, aux)`` so simulating a token is cheap and masks
can be cached per state. Strict JSON (RFC 8259): no NaN/Infinity, no control characters inside
strings, no leading zeros; whitespace is allowed between tokens and around the value.

``JsonMasks`` answers "which vocabulary tokens keep the value a valid prefix?" without feeding all
129K tokens through the automaton at every step: tokens are bucketed by their first non-blank
character, and inside a string every token free of quotes, backslashes and control characters is
allowed wholesale; only the rest are simulated, and the result is cached per state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

State = tuple  # (mode, stack: tuple[str, ...], aux)

_WS = " \t\n\r"
_DIGITS = "0123456789"
_HEX = set("0123456789abcdefABCDEF")
_NUM_END = ("zero", "int", "frac", "exp")   # number sub-states where the number may end
_ROOT_FIRST = {"array": "[", "object": "{"}
MASK_CACHE_STATES = 256  # cached masks (one bool per vocabulary token: 129 KB each for V4)


def start(kind: str = "any") -> State:
    """The state before the first character. ``kind``: any, array, object, number, integer."""
    return ("V", (), ("root", kind))


def _value_start(ch: str, stack: tuple[str, ...], kind: str) -> State | None:
    if kind in _ROOT_FIRST and ch != _ROOT_FIRST[kind]:
        return None
    if kind in ("number", "integer") and ch != "-" and ch not in _DIGITS:
        return None
    integer = kind == "integer"
    if ch == "{":
        return ("K", stack + ("{",), "first")
    if ch == "[":
        return ("V", stack + ("[",), "first")
    if ch == '"':
        return ("S", stack, "v")
    if ch == "-":
        return ("N", stack, ("sign", integer))
    if ch == "0":
        return ("N", stack, ("zero", integer))
    if ch in _DIGITS:
        return ("N", stack, ("int", integer))
    for word in ("true", "false", "null"):
        if ch == word[0]:
            return ("L", stack, word[1:])
    return None


def _close(stack: tuple[str, ...], ch: str) -> State | None:
    if stack and ((ch == "}" and stack[-1] == "{") or (ch == "]" and stack[-1] == "[")):
        return ("A", stack[:-1], None)
    return None


def _after_value(stack: tuple[str, ...], ch: str) -> State | None:
    if ch in _WS:
        return ("A", stack, None)
    if ch == "," and stack:
        return ("V", stack, None) if stack[-1] == "[" else ("K", stack, None)
    return _close(stack, ch)


def step(state: State, ch: str) -> State | None:
    mode, stack, aux = state
    if mode == "V":
        if ch in _WS:
            return state
        if aux == "first" and ch == "]":
            return _close(stack, ch)
        kind = aux[1] if isinstance(aux, tuple) else "any"
        return _value_start(ch, stack, kind)
    if mode == "K":
        if ch in _WS:
            return state
        if ch == '"':
            return ("S", stack, "k")
        return _close(stack, ch) if aux == "first" else None
    if mode == "C":
        if ch in _WS:
            return state
        return ("V", stack, None) if ch == ":" else None
    if mode == "A":
        return _after_value(stack, ch)
    if mode == "S":
        if ch == '"':
            return ("C", stack, None) if aux == "k" else ("A", stack, None)
        if ch == "\\":
            return ("E", stack, aux)
        return None if ord(ch) < 0x20 else state
    if mode == "E":
        if ch in '"\\/bfnrt':
            return ("S", stack, aux)
        return ("U", stack, (aux, 4)) if ch == "u" else None
    if mode == "U":
        if ch not in _HEX:
            return None
        kind, left = aux
        return ("S", stack, kind) if left == 1 else ("U", stack, (kind, left - 1))
    if mode == "L":
        if ch != aux[0]:
            return None
        return ("A", stack, None) if len(aux) == 1 else ("L", stack, aux[1:])
    if mode == "N":
        return _number_step(stack, aux, ch)
    return None


def _number_step(stack: tuple[str, ...], aux: tuple[str, bool], ch: str) -> State | None:
    sub, integer = aux
    digit = ch in _DIGITS
    nxt = None
    if sub == "sign":
        nxt = "zero" if ch == "0" else "int" if digit else None
    elif sub in ("zero", "int"):
        if digit and sub == "int":
            nxt = "int"
        elif ch == "." and not integer:
            nxt = "dot"
        elif ch in "eE" and not integer:
            nxt = "e"
    elif sub in ("dot", "frac"):
        nxt = "frac" if digit else ("e" if ch in "eE" and sub == "frac" else None)
    elif sub == "e":
        nxt = "esign" if ch in "+-" else "exp" if digit else None
    elif sub in ("esign", "exp"):
        nxt = "exp" if digit else None
    if nxt is not None:
        return ("N", stack, (nxt, integer))
    if sub in _NUM_END:  # the number ends here; the character belongs to what follows
        return _after_value(stack, ch)
    return None


def feed(state: State | None, text: str) -> State | None:
    for ch in text:
        if state is None:
            return None
        state = step(state, ch)
    return state


def complete(state: State | None) -> bool:
    if state is None or state[1]:
        return False
    return state[0] == "A" or (state[0] == "N" and state[2][0] in _NUM_END)


def completion(state: State) -> str:
    """A shortest-ish text after which ``complete`` holds."""
    out = []
    for _ in range(10_000):
        if complete(state):
            return "".join(out)
        mode, stack, aux = state
        if mode == "V":
            ch = "]" if aux == "first" else _root_default(aux)
        elif mode == "K":
            ch = "}" if aux == "first" else '"'
        elif mode == "C":
            ch = ":"
        elif mode == "A" or (mode == "N" and aux[0] in _NUM_END):
            ch = "}" if stack[-1] == "{" else "]"
        elif mode in ("S", "E"):
            ch = '"'
        elif mode == "U":
            ch = "0"
        elif mode == "L":
            ch = aux[0]
        else:  # a number that cannot end yet
            ch = "0"
        out.append(ch)
        state = step(state, ch)
        assert state is not None, "completion left the grammar"
    raise AssertionError("no completion")


def _root_default(aux: object) -> str:
    kind = aux[1] if isinstance(aux, tuple) else "any"
    return {"array": "[", "object": "{", "number": "0", "integer": "0"}.get(kind, "n")


# -- token masks ---------------------------------------------------------------------------------

@dataclass(slots=True)
class JsonMasks:
    """Per-state masks over a vocabulary (``texts``: decoded text of each id; ``plain``: the ids
    that may appear inside a value at all)."""

    texts: list[str]
    plain: torch.Tensor
    string_safe: torch.Tensor = field(init=False)           # stays inside any string
    string_special: list[int] = field(init=False)           # contains a quote or backslash
    by_first: dict[str, list[int]] = field(init=False)      # first non-blank char → ids
    blank: list[int] = field(init=False)                    # whitespace-only tokens
    cache: dict[State, torch.Tensor] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        v = self.plain.shape[0]
        self.string_safe = torch.zeros(v, dtype=torch.bool)
        self.string_special, self.blank, self.by_first = [], [], {}
        for i in torch.nonzero(self.plain).flatten().tolist():
            text = self.texts[i]
            if any(ord(c) < 0x20 and c not in _WS for c in text):
                continue
            stripped = text.lstrip(_WS)
            if not stripped:
                self.blank.append(i)
            else:
                self.by_first.setdefault(stripped[0], []).append(i)
            if any(c in '"\\' or ord(c) < 0x20 for c in text):
                self.string_special.append(i)
            else:
                self.string_safe[i] = True

    def allowed(self, state: State) -> torch.Tensor:
        mask = self.cache.get(state)
        if mask is None:
            mask = self._compute(state)
            if len(self.cache) < MASK_CACHE_STATES:
                self.cache[state] = mask
        return mask

    def _compute(self, state: State) -> torch.Tensor:
        mode = state[0]
        if mode == "S":
            mask = self.string_safe.clone()
            candidates = self.string_special
        else:
            mask = torch.zeros_like(self.plain)
            firsts = _first_chars(state)
            candidates = list(self.blank) if step(state, " ") is not None else []
            for ch in firsts:
                candidates += self.by_first.get(ch, [])
        for i in candidates:
            if feed(state, self.texts[i]) is not None:
                mask[i] = True
        return mask


def _first_chars(state: State) -> str:
    """The non-blank characters that can come next (a superset is fine)."""
    candidates = '{}[],:"-0123456789.eE+tfn' + "aeilrsu"
    return "".join(c for c in dict.fromkeys(candidates) if step(state, c) is not None)
