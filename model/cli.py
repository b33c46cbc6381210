"""``v4coder model …`` commands: init-toy, score, generate. Bad input → one line on stderr and a
non-zero exit code, never a traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from model.checkpoint import CheckpointError
from model.config import ConfigError
from model.toy import PRESETS


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="v4coder model", description="DeepSeek-V4 model runtime commands")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    toy = sub.add_parser("init-toy", help="write a random checkpoint in the official format")
    toy.add_argument("--out", required=True, type=Path)
    toy.add_argument("--seed", type=int, default=0)
    toy.add_argument("--preset", choices=tuple(PRESETS), default="tiny")
    score = sub.add_parser("score", help="write logits for every position of a token list")
    score.add_argument("--checkpoint", required=True, type=Path)
    score.add_argument("--ids-file", required=True, type=Path)
    score.add_argument("--out", required=True, type=Path)
    score.add_argument("--mode", choices=("prefill", "decode"), default="prefill")
    score.add_argument("--numerics", choices=("dequant", "native"), default="dequant")
    score.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    score.add_argument("--ep", type=int, default=1, help="expert-parallel ranks per TP rank")
    score.add_argument("--tp", type=int, default=1, help="attention tensor-parallel ranks")
    score.add_argument("--offload", type=int, default=0, metavar="BYTES",
                       help="device bytes for routed experts; the rest stay in host memory")
    gen = sub.add_parser("generate", help="stream a continuation of a text prompt")
    gen.add_argument("--checkpoint", required=True, type=Path)
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-new-tokens", type=int, default=32)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    return p


def _read_ids(path: Path, vocab_size: int) -> list[int]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UsageError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: not a JSON list of token ids ({exc})") from exc
    if isinstance(data, dict):
        data = data.get("ids", data.get("input_ids"))
    if (not isinstance(data, list) or not data
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in data)):
        raise UsageError(f"{path}: expected a non-empty JSON list of integer token ids")
    bad = [i for i in data if not 0 <= i < vocab_size]
    if bad:
        raise UsageError(f"{path}: token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})")
    return data


def cmd_init_toy(args: argparse.Namespace) -> int:
    from model.toy import write_toy_checkpoint

    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise UsageError(f"{args.out}: exists and is not an empty directory")
    out = write_toy_checkpoint(args.out, seed=args.seed, preset=args.preset)
    print(f"wrote a random '{args.preset}' checkpoint (seed {args.seed}) to {out} "
          "- toy weights produce noise, not text")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import save_file

    from model.generate import load_model

    if args.ep * args.tp > 1 or args.offload:
        return _score_distributed(args)
    lm = load_model(args.checkpoint, dtype=args.dtype, numerics=args.numerics)
    ids = _read_ids(args.ids_file, lm.config.vocab_size)
    if args.mode == "prefill":
        logits = lm.logits(ids)
    else:
        cache = lm.new_cache()
        logits = torch.stack([lm.logits([i], cache)[0] for i in ids])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({"logits": logits.float().contiguous()}, str(args.out),
              metadata={"mode": args.mode, "numerics": args.numerics})
    print(f"wrote logits [{logits.shape[0]}, {logits.shape[1]}] to {args.out}")
    return 0


def _score_distributed(args: argparse.Namespace) -> int:
    from model.checkpoint import Checkpoint
    from model.launch import ScoreJob, run_score
    from model.parallel import ParallelLayout

    cfg = Checkpoint.open(args.checkpoint).config
    ids = _read_ids(args.ids_file, cfg.vocab_size)
    layout = ParallelLayout(tp=args.tp, ep=args.ep)
    layout.check(cfg.n_heads, cfg.o_groups, cfg.n_routed_experts)
    job = ScoreJob(args.checkpoint, tuple(ids), args.out, args.mode, args.dtype, args.numerics,
                   args.offload)
    run_score(job, layout)
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank runs this command
            print(f"wrote logits [{len(ids)}, {cfg.vocab_size}] to {args.out} "
              f"(tp={args.tp} ep={args.ep} offload={args.offload})")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from tokenizers import Tokenizer

    from model.generate import load_model

    tok_path = args.checkpoint / "tokenizer.json"
    if not tok_path.is_file():
        raise UsageError(f"{tok_path}: missing (the checkpoint ships its tokenizer)")
    lm = load_model(args.checkpoint, dtype=args.dtype)
    tokenizer = Tokenizer.from_file(str(tok_path))
    prompt = [lm.config.bos_token_id] + tokenizer.encode(args.prompt, add_special_tokens=False).ids
    produced: list[int] = []
    shown = ""
    for token in lm.generate(prompt, args.max_new_tokens, stop_ids=[lm.config.eos_token_id],
                             temperature=args.temperature, seed=args.seed):
        produced.append(token)
        text = tokenizer.decode(produced, skip_special_tokens=False)
        sys.stdout.write(text[len(shown):])
        sys.stdout.flush()
        shown = text
    sys.stdout.write("\n")
    return 0


COMMANDS = {"init-toy": cmd_init_toy, "score": cmd_score, "generate": cmd_generate}


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (CheckpointError, ConfigError, ValueError, FileExistsError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except SystemExit as exc:  # --help
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
