"""Loop limits and the cut applied to tool output before it reaches the model."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class LoopLimits:
    max_steps: int = 100
    wall_seconds: float = 3600.0
    max_format_errors: int = 3      # consecutive malformed replies before giving up
    max_repeats: int = 3            # identical consecutive tool-call replies before giving up
    output_chars: int = 30_000      # tool output sent to the model, head + tail


def cut_output(text: str, limit: int) -> str:
    """Keep the head and tail of a long output with a note on what was cut."""
    if len(text) <= limit:
        return text
    half = (limit - 200) // 2
    head, tail = text[:half], text[-half:]
    cut_lines = text[half:-half].count("\n")
    return (f"{head}\n\n[... {len(text) - 2 * half} characters ({cut_lines} lines) cut from the "
            f"middle of this output; narrow the command (grep, head, tail, a line range) to see "
            f"them ...]\n\n{tail}")
