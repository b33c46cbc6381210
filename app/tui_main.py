"""``v4coder`` with no subcommand: the interactive terminal UI (app/tui/)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def tui_main(args: argparse.Namespace) -> int:
    from agent.backends.factory import make_backend

    repo = (args.repo or Path.cwd()).resolve()
    spec = args.backend or os.environ.get("V4CODER_BACKEND") or "openai"
    backend = None
    if not spec.startswith("embedded"):
        # Cheap to build and a bad spec should fail before the screen opens (BackendError ->
        # one line from the CLI). The embedded model loads inside the app, with a progress bar.
        backend = make_backend(spec, model=args.model)
    from app.tui.app import CoderApp
    from app.tui.host import DEFAULT_CONTEXT_BUDGET
    budget = getattr(args, "context_budget", None)   # top-level --context-budget, when present
    app = CoderApp(repo=repo, backend_spec=spec, backend=backend, mode=args.mode,
                   resume=args.resume, model=args.model,
                   context_budget=DEFAULT_CONTEXT_BUDGET if budget is None else max(0, budget))
    app.run()
    return 0
