"""Project instructions for the system prompt: AGENTS.md, with CLAUDE.md as the fallback.

These are pinned facts: the session must never compact them away.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

INSTRUCTION_FILES = ("AGENTS.md", "CLAUDE.md")
MAX_INSTRUCTION_BYTES = 64 * 1024


@dataclass(slots=True, frozen=True)
class Instructions:
    path: str  # file name relative to the repository root
    text: str
    truncated: bool = False


def load_instructions(repo: str | Path, max_bytes: int = MAX_INSTRUCTION_BYTES) -> Instructions | None:
    """AGENTS.md (else CLAUDE.md) at the repository root, or None when neither exists."""
    root = Path(repo)
    for name in INSTRUCTION_FILES:
        path = root / name
        if not path.is_file():
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        truncated = len(data) > max_bytes
        text = data[:max_bytes].decode("utf-8", errors="replace")
        return Instructions(name, text, truncated)
    return None


INSTRUCTIONS_BLOCK = """\
The repository's own instructions ({name}) follow. Respect them where they do not conflict with the above.
<repository-instructions>
{text}
</repository-instructions>
"""


def instructions_prompt(repo: str | Path) -> str:
    """The system-prompt section for the repository's instructions ("" when none).

    The one rendering used everywhere (agent.prompts.system_prompt, ask): the text is
    wrapped in delimiters, as data that never widens what the agent may do."""
    inst = load_instructions(repo)
    if inst is None:
        return ""
    note = "\n[truncated]" if inst.truncated else ""
    return INSTRUCTIONS_BLOCK.format(name=inst.path, text=inst.text.strip() + note)
