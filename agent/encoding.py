"""DeepSeek-V4 chat encoding: OpenAI-style messages -> the exact prompt text the model saw
in training (fact sheet §5; DeepSeek's ``encoding_dsv4.py`` is the conformance suite).

Rules, in short:
- prompt = BOS + rendered messages. The system message is its text verbatim, then
  ``"\\n\\n" + tools block`` when tools are offered.
- There is no tool role: consecutive ``tool`` messages become one user turn whose content
  is ``<tool_result>…</tool_result>`` blocks joined by blank lines, ordered like the
  preceding assistant's tool calls.
- A user turn that the assistant answers ends with ``<｜Assistant｜>`` then ``<think>``
  (thinking mode, the turn being generated) or ``</think>`` (chat mode, or an earlier turn
  whose reasoning was dropped).
- An assistant turn is ``reasoning</think>`` (thinking mode, when kept) + content +
  ``"\\n\\n"`` + DSML tool-call block + EOS.
- drop_thinking: reasoning before the last user turn is removed — unless tools are
  offered, in which case every turn keeps its reasoning (interleaved thinking).
"""

from __future__ import annotations

import json
from typing import Any

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
LATEST_REMINDER = "<｜latest_reminder｜>"
THINK_START = "<think>"
THINK_END = "</think>"
DSML = "｜DSML｜"
TOOL_CALLS_OPEN = f"<{DSML}tool_calls>"
TOOL_CALLS_CLOSE = f"</{DSML}tool_calls>"
INVOKE_OPEN = f"<{DSML}invoke"
INVOKE_CLOSE = f"</{DSML}invoke>"
PARAM_OPEN = f"<{DSML}parameter"
PARAM_CLOSE = f"</{DSML}parameter>"
# Where a reply's visible text ends and its tool calls begin.
TOOL_BLOCK_START = "\n\n" + TOOL_CALLS_OPEN

REASONING_EFFORT_MAX = (
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to "
    "resolve the root cause, rigorously stress-testing your logic against all potential paths, "
    "edge cases, and adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, "
    "considered alternative, and rejected hypothesis to ensure absolutely no assumption is left "
    "unchecked.\n\n"
)

# The tools block is part of the wire format the model was trained on: its wording matters.
_TOOLS_BLOCK = (
    "## Tools\n\n"
    "You have access to a set of tools to help answer the user's question. You can invoke tools "
    f'by writing a "{TOOL_CALLS_OPEN}" block like the following:\n\n'
    f"{TOOL_CALLS_OPEN}\n"
    f'<{DSML}invoke name="$TOOL_NAME">\n'
    f'<{DSML}parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE{PARAM_CLOSE}\n'
    "...\n"
    f"{INVOKE_CLOSE}\n"
    f'<{DSML}invoke name="$TOOL_NAME2">\n'
    "...\n"
    f"{INVOKE_CLOSE}\n"
    f"{TOOL_CALLS_CLOSE}\n\n"
    'String parameters should be specified as is and set `string="true"`. For all other types '
    '(numbers, booleans, arrays, objects), pass the value in JSON format and set `string="false"`.\n\n'
    f"If thinking_mode is enabled (triggered by {THINK_START}), you MUST output your complete "
    f"reasoning inside {THINK_START}...{THINK_END} BEFORE any tool calls or final response.\n\n"
    f"Otherwise, output directly after {THINK_END} with tool calls or final response.\n\n"
    "### Available Tool Schemas\n\n"
    "{tool_schemas}\n\n"
    "You MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.\n"
)


def to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def render_tools_block(tools: list[dict[str, Any]]) -> str:
    """OpenAI-format tools -> the system prompt's tools block (one JSON schema per line)."""
    schemas = "\n".join(to_json(t.get("function", t)) for t in tools)
    return _TOOLS_BLOCK.replace("{tool_schemas}", schemas)


def _arguments(call: dict[str, Any]) -> dict[str, Any]:
    fn = call.get("function", call)
    args = fn.get("arguments", {})
    if isinstance(args, str):
        args = json.loads(args) if args.strip() else {}
    return args


def render_tool_calls(calls: list[dict[str, Any]]) -> str:
    """OpenAI-format tool calls -> the DSML block (without the leading blank line)."""
    invokes = []
    for call in calls:
        name = call.get("function", call)["name"]
        params = []
        for key, value in _arguments(call).items():
            is_str = isinstance(value, str)
            text = value if is_str else to_json(value)
            flag = "true" if is_str else "false"
            params.append(f'{PARAM_OPEN} name="{key}" string="{flag}">{text}{PARAM_CLOSE}')
        invokes.append(f'{INVOKE_OPEN} name="{name}">\n' + "\n".join(params) + f"\n{INVOKE_CLOSE}")
    return f"{TOOL_CALLS_OPEN}\n" + "\n".join(invokes) + f"\n{TOOL_CALLS_CLOSE}"


def _reasoning_of(msg: dict[str, Any]) -> str:
    return msg.get("reasoning_content") or msg.get("reasoning") or ""


def merge_tool_results(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fold ``tool`` messages (and a user message right after them) into user turns made of
    blocks, ordering tool results like the calls of the assistant turn before them."""
    merged: list[dict[str, Any]] = []
    call_order: dict[str, int] = {}
    for msg in messages:
        role = msg.get("role")
        if role == "assistant" and msg.get("tool_calls"):
            call_order = {c.get("id", ""): i for i, c in enumerate(msg["tool_calls"]) if c.get("id")}
        if role == "tool":
            block = {"type": "tool_result", "id": msg.get("tool_call_id", ""),
                     "content": msg.get("content") or ""}
            if merged and merged[-1].get("role") == "user" and "blocks" in merged[-1]:
                merged[-1]["blocks"].append(block)
            else:
                merged.append({"role": "user", "blocks": [block], "_order": call_order})
        elif role == "user":
            block = {"type": "text", "text": msg.get("content") or ""}
            if merged and merged[-1].get("role") == "user" and "blocks" in merged[-1]:
                merged[-1]["blocks"].append(block)
            else:
                merged.append({**msg, "blocks": [block]})
        else:
            merged.append(dict(msg))
    for msg in merged:
        order = msg.pop("_order", None)
        if order and "blocks" in msg:
            results = sorted((b for b in msg["blocks"] if b["type"] == "tool_result"),
                             key=lambda b: order.get(b["id"], 0))
            it = iter(results)
            msg["blocks"] = [next(it) if b["type"] == "tool_result" else b for b in msg["blocks"]]
    return merged


def _user_text(msg: dict[str, Any]) -> str:
    blocks = msg.get("blocks")
    if not blocks:
        return msg.get("content") or ""
    parts = [f"<tool_result>{b['content']}</tool_result>" if b["type"] == "tool_result" else b["text"]
             for b in blocks]
    return "\n\n".join(parts)


def encode_messages(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    thinking: bool = False,
    drop_thinking: bool = True,
    reasoning_effort: str | None = None,
    add_bos: bool = True,
) -> str:
    """Render a conversation. When the last message is a user (or tool) turn, the prompt ends
    with ``<｜Assistant｜>`` + ``<think>``/``</think>``, ready for the model to continue."""
    msgs = [dict(m) for m in messages]
    if tools:
        sys_idx = next((i for i, m in enumerate(msgs) if m.get("role") == "system"), None)
        if sys_idx is None:
            msgs.insert(0, {"role": "system", "content": ""})
            sys_idx = 0
        msgs[sys_idx]["tools"] = tools
    msgs = merge_tool_results(msgs)
    drop = drop_thinking and not any(m.get("tools") for m in msgs)
    last_user = max((i for i, m in enumerate(msgs) if m.get("role") in ("user", "developer")),
                    default=-1)
    if thinking and drop:
        kept = []
        for i, m in enumerate(msgs):
            if i < last_user and m.get("role") == "developer":
                continue
            if i < last_user and m.get("role") == "assistant":
                m = {k: v for k, v in m.items() if k not in ("reasoning", "reasoning_content")}
            kept.append(m)
        msgs = kept
        last_user = max((i for i, m in enumerate(msgs) if m.get("role") in ("user", "developer")),
                        default=-1)

    out = [BOS] if add_bos else []
    for i, msg in enumerate(msgs):
        role = msg.get("role")
        if i == 0 and thinking and reasoning_effort == "max":
            out.append(REASONING_EFFORT_MAX)
        if role == "system":
            out.append(msg.get("content") or "")
            if msg.get("tools"):
                out.append("\n\n" + render_tools_block(msg["tools"]))
        elif role == "developer":
            text = USER + (msg.get("content") or "")
            if msg.get("tools"):
                text += "\n\n" + render_tools_block(msg["tools"])
            out.append(text)
        elif role == "user":
            out.append(USER + _user_text(msg))
        elif role == "latest_reminder":
            out.append(LATEST_REMINDER + (msg.get("content") or ""))
        elif role == "assistant":
            reasoning = ""
            if thinking and (not drop or i > last_user):
                reasoning = _reasoning_of(msg) + THINK_END
            calls = ""
            if msg.get("tool_calls"):
                calls = "\n\n" + render_tool_calls(msg["tool_calls"])
            out.append(reasoning + (msg.get("content") or "") + calls + EOS)
        else:
            raise ValueError(f"unknown message role {role!r}")
        nxt = msgs[i + 1].get("role") if i + 1 < len(msgs) else None
        if role in ("user", "developer") and nxt in (None, "assistant", "latest_reminder"):
            opens_thinking = thinking and (not drop or i >= last_user)
            out.append(ASSISTANT + (THINK_START if opens_thinking else THINK_END))
    return "".join(out)
