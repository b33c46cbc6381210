"""The ``v4coder`` command. Bad input of any kind: one clear line on stderr, non-zero exit."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from agent.backends.base import BackendError

APPROVAL_MODES = ("read-only", "ask", "auto-edit", "full-auto")
DELEGATED = ("model", "pack", "ask", "bench", "serve", "plan")  # subcommands with their own parsers


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"v4coder: {message} (see `{self.prog} --help`)\n")


def _repo(value: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"repository {value} is not a directory")
    return path.resolve()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="v4coder", description="A self-hosted coding agent on DeepSeek-V4-Flash.")
    parser.add_argument("--repo", type=_repo, default=None, help="repository (default: current directory)")
    parser.add_argument("--backend", default=None, help="replay:FILE | openai[:URL] | embedded:DIR")
    parser.add_argument("--model", default=None, help="model name for the openai backend")
    parser.add_argument("--resume", action="store_true", help="resume the latest session (TUI)")
    parser.add_argument("--mode", choices=APPROVAL_MODES, default="ask", help="approval mode (TUI)")
    parser.add_argument("--context-budget", type=int, default=None, metavar="N",
                        help="tokens of packed repository in a new TUI session (default 900000; 0 = none)")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    run = sub.add_parser("run", help="headless issue-to-patch")
    run.add_argument("--repo", type=_repo, default=None, dest="run_repo")
    src = run.add_mutually_exclusive_group(required=True)
    src.add_argument("--issue", help="issue file or text")
    src.add_argument("--instance", type=Path, help="SWE-bench instance JSON (repo already checked out)")
    src.add_argument("--resume", type=Path, dest="run_resume", metavar="SESSION",
                     help="continue a session file (.git/v4coder/sessions/*.jsonl), or 'latest'")
    run.add_argument("--backend", required=True, dest="run_backend")
    run.add_argument("--model", default=None, dest="run_model")
    run.add_argument("--events", type=Path, help="write the event stream as JSONL")
    run.add_argument("--patch", type=Path, help="write the final diff")
    run.add_argument("--predictions", type=Path, help="append a SWE-bench prediction line")
    run.add_argument("--max-steps", type=int, default=100)
    run.add_argument("--max-seconds", type=float, default=3600.0)
    run.add_argument("--branch", default=None, help="branch to work on (default v4coder/run-<time>)")
    run.add_argument("--mode", choices=APPROVAL_MODES, default="full-auto", dest="run_mode")
    run.add_argument("--thinking", action="store_true", help="thinking mode (reasoning before answers)")
    run.add_argument("--context-budget", type=int, default=900_000, metavar="N",
                     help="tokens of packed repository in the prompt (default 900000; 0 = none)")
    run.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    run.add_argument("--seed", type=int, default=None, help="sampling seed")
    run.add_argument("--max-tokens", type=int, default=8192, help="most tokens per model reply")
    run.add_argument("--test-command", default=None, help="what run_tests runs when the model names none")
    run.add_argument("--allow-secrets", action="store_true",
                     help="let the model read .env files, private keys and other secrets")
    run.add_argument("--quiet", action="store_true")

    undo = sub.add_parser("undo", help="restore the working tree to the previous checkpoint")
    undo.add_argument("--repo", type=_repo, default=None, dest="undo_repo")

    demo = sub.add_parser("demo", help="run a bundled example end to end in a temp copy")
    demo.add_argument("name", nargs="?", default=None)
    demo.add_argument("--keep", action="store_true", help="keep the temp repository")

    helps = {"model": "the runtime: init-toy, score, generate", "pack": "pack a repository, print stats",
             "ask": "repository-wide Q&A with checked path:line citations",
             "bench": "measurements as JSON: pack, tui, kernels, engine, offload, model",
             "serve": "OpenAI-compatible server on the embedded engine",
             "plan": "placement plan (TP/EP/offload) for a machine"}
    for name in DELEGATED:
        p = sub.add_parser(name, add_help=False, help=helps.get(name, name))
        p.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def _delegate(command: str, rest: list[str]) -> int:
    if command == "model":
        from model.cli import main as model_main
        return model_main(rest)
    if command == "pack":
        from agent.context.cli import pack_main
        return pack_main(rest)
    if command == "ask":
        from app.ask import ask_main
        return ask_main(rest)
    if command == "bench":
        from app.bench import bench_main
        return bench_main(rest)
    if command == "plan":
        from model.planner import main as plan_main
        return plan_main(rest)
    if command == "serve":
        from app.serve import serve_main
        return serve_main(rest)
    raise AssertionError(command)


def _run(args: argparse.Namespace) -> int:
    from agent.backends.base import Sampling
    from agent.backends.factory import make_backend
    from app.headless import (
        RunOptions,
        UsageError,
        check_outputs,
        read_instance,
        read_issue,
        run_headless,
    )

    repo = args.run_repo or args.repo or Path.cwd().resolve()
    for flag, value in (("--max-steps", args.max_steps), ("--max-tokens", args.max_tokens)):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1")
    if args.temperature < 0:
        raise UsageError("--temperature must be 0 or more")
    if args.context_budget < 0:
        raise SystemExit("v4coder: --context-budget must be 0 (no packing) or a number of tokens")
    instance = read_instance(args.instance) if args.instance else None
    resume = args.run_resume
    if resume is not None and str(resume) == "latest":
        from agent.session import sessions_dir
        files = sorted(sessions_dir(repo).glob("*.jsonl"))
        if not files:
            raise UsageError(f"no sessions to resume in {repo}")
        resume = files[-1]
    issue = instance["problem_statement"] if instance else (read_issue(args.issue) if args.issue else "")
    opts = RunOptions(
        repo=repo, resume=resume,
        issue=issue,
        instance_id=instance["instance_id"] if instance else None,
        base_commit=instance["base_commit"] if instance else None,
        branch=args.branch, events=args.events, patch=args.patch, predictions=args.predictions,
        max_steps=args.max_steps, wall_seconds=args.max_seconds, mode=args.run_mode,
        thinking=args.thinking, quiet=args.quiet, context_budget=args.context_budget,
        sampling=Sampling(temperature=args.temperature, seed=args.seed, max_tokens=args.max_tokens),
        test_command=args.test_command, allow_secrets=args.allow_secrets)
    check_outputs(opts)
    backend = make_backend(args.run_backend, model=args.run_model)
    return run_headless(opts, backend, model_name=getattr(backend, "model", args.run_backend))


def dispatch(argv: list[str]) -> int:
    if argv and argv[0] in DELEGATED:  # argparse's REMAINDER would reject a leading --option
        return _delegate(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    if args.command in DELEGATED:
        return _delegate(args.command, args.rest)
    if args.command == "run":
        return _run(args)
    if args.command == "undo":
        from app.undo import undo_main
        return undo_main(args.undo_repo or args.repo or Path.cwd().resolve())
    if args.command == "demo":
        from app.demo import demo_main
        return demo_main(args.name, keep=args.keep)
    from app.tui_main import tui_main
    return tui_main(args)


def main(argv: list[str] | None = None) -> int:
    from app.headless import UsageError
    from tools.base import ToolError
    try:
        return dispatch(sys.argv[1:] if argv is None else argv)
    except (UsageError, BackendError, ToolError) as exc:  # bad input, server or repository
        print(f"v4coder: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("v4coder: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # never a traceback for the user, unless asked
        if os.environ.get("V4CODER_DEBUG"):
            traceback.print_exc()
        print(f"v4coder: internal error: {type(exc).__name__}: {exc} "
              "(set V4CODER_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
