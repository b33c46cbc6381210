"""Check a tool call's arguments against the offered tools' JSON schemas.

Both the DSML parser (embedded / replay backends) and the OpenAI backend use this, so a
call is judged the same way whichever way the model was reached. Only what a tool schema
here uses is checked: object properties, ``required``, and the primitive ``type``s.
"""

from __future__ import annotations

from typing import Any

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


def tools_by_name(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """OpenAI-format tool list -> {name: function schema}."""
    out: dict[str, dict[str, Any]] = {}
    for tool in tools:
        fn = tool.get("function", tool)
        out[fn["name"]] = fn
    return out


def _type_ok(value: Any, expected: str | list[str]) -> bool:
    names = [expected] if isinstance(expected, str) else list(expected)
    for name in names:
        kinds = _JSON_TYPES.get(name)
        if kinds is None:
            return True  # a type we do not check
        if isinstance(value, bool) and name in ("integer", "number"):
            continue
        if isinstance(value, kinds):
            return True
    return False


def check_call(name: str, arguments: Any, tools: dict[str, dict[str, Any]]) -> str | None:
    """Return None when the call is well-formed, else a one-line reason for the model."""
    fn = tools.get(name)
    if fn is None:
        offered = ", ".join(sorted(tools)) or "none"
        return f"unknown tool {name!r}; the tools offered are: {offered}"
    if not isinstance(arguments, dict):
        return f"{name}: arguments must be an object, got {type(arguments).__name__}"
    schema = fn.get("parameters") or {}
    props: dict[str, Any] = schema.get("properties") or {}
    for key in arguments:
        if props and key not in props:
            return f"{name}: unknown parameter {key!r}; parameters are: {', '.join(props)}"
    for key in schema.get("required") or []:
        if key not in arguments:
            return f"{name}: missing required parameter {key!r}"
    for key, value in arguments.items():
        expected = (props.get(key) or {}).get("type")
        if expected is not None and not _type_ok(value, expected):
            return f"{name}: parameter {key!r} must be of type {expected}, got {type(value).__name__}"
    return None
