"""The packed repository during a session: a stable prefix plus per-request deltas.

The repository is packed once, when the session starts, into the system message (after
the instructions). Edits made during the session never rewrite that prefix: before each
model request, :meth:`LiveContext.prepare_messages` (the loop's ``Agent.prepare_messages``
hook) returns the transcript plus ONE trailing user message holding
``delta_for_edits(...)`` when files changed since packing. That message is not stored in
the session, so the stored transcript — and the engine's prefix cache over it — stay
valid; each delta is cumulative against the snapshot, so only the latest is ever sent.

The snapshot (content key and text of every walked file at pack time) is saved beside the
session as ``<session id>.pack.json``, so a resumed session computes its deltas against
the same snapshot its system message shows. When the session is compacted the
repository is packed again (agent.context.session_context): the new snapshot goes to
``<session id>.pack-<n>.json`` and the compaction record names it, so a resume loads the
snapshot its (re-packed) system message shows and the delta starts empty again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.context.pack import DEFAULT_BUDGET, PackedContext, delta_for_edits, pack_repository

PACK_SUFFIX = ".pack.json"
DELTA_INTRO = (
    "# Repository changes since the snapshot in the system prompt\n"
    "Files changed during this session, in the snapshot's format; hunks show the current "
    "content with current line numbers. This list is complete and replaces any earlier one.\n"
)


def pack_path(session_path: Path, name: str | None = None) -> Path:
    """``<dir>/<id>.jsonl`` -> ``<dir>/<id>.pack.json`` (or ``<dir>/<name>`` for a re-pack)."""
    return session_path.with_name(name) if name else session_path.with_suffix(PACK_SUFFIX)


@dataclass(slots=True)
class LiveContext:
    repo: Path
    packed: PackedContext
    question: str | None = None  # ranking input, kept so a re-pack ranks the same way

    @classmethod
    def pack(cls, repo: Path, budget: int = DEFAULT_BUDGET, question: str | None = None) -> LiveContext:
        """Pack ``repo`` now (ranked by ``question`` when over ``budget``)."""
        return cls(Path(repo), pack_repository(repo, budget, question), question)

    @property
    def text(self) -> str:
        """The stable prefix to put in the system message."""
        return self.packed.text

    def delta(self) -> str:
        """Every change since packing, rendered ("" when nothing changed)."""
        return delta_for_edits(self.packed, self.repo)

    def delta_message(self) -> dict[str, Any] | None:
        text = self.delta()
        return {"role": "user", "content": DELTA_INTRO + text} if text else None

    def prepare_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The request's messages: the transcript, plus the delta when files changed."""
        extra = self.delta_message()
        return messages if extra is None else [*messages, extra]

    def stats(self) -> dict[str, Any]:
        p = self.packed
        return {"tokens": p.tokens, "budget": p.budget, "files": len(p.files),
                "outlined": len(p.outlined), "omitted": len(p.omitted)}

    # -- persistence beside the session --------------------------------------------------

    def save(self, session_path: Path, name: str | None = None) -> Path:
        p = self.packed
        data = {"repo": p.repo, "files": p.files, "outlined": p.outlined, "omitted": p.omitted,
                "tokens": p.tokens, "budget": p.budget, "keys": p.keys, "contents": p.contents,
                "question": self.question}
        path = pack_path(session_path, name)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, ensure_ascii=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, session_path: Path, repo: Path, text: str = "",
             name: str | None = None) -> LiveContext | None:
        """The snapshot saved for a session, or None (packing was off, or the file is gone).
        ``text`` is the packed prefix as the system message holds it (for completeness);
        ``name`` the file of a re-pack (as recorded by the compaction that made it)."""
        try:
            data = json.loads(pack_path(session_path, name).read_text(encoding="utf-8"))
            packed = PackedContext(data["repo"], text, data["files"], data["outlined"],
                                   data["omitted"], [], data["tokens"], data["budget"],
                                   keys=data["keys"], contents=data["contents"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return cls(Path(repo), packed, data.get("question"))
