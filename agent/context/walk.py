"""Walk a repository: which files go into the context, and which are skipped and why.

Inside a git work tree the file list is ``git ls-files --cached --others
--exclude-standard -z`` (tracked files plus untracked ones that .gitignore allows).
Elsewhere a plain directory walk applies the .gitignore files itself (agent.context.ignore).
A ``.v4coderignore`` at the root (gitignore syntax) applies in both cases. Binaries, huge
files, lock / vendored / generated files and secrets are never packed; each becomes a
:class:`Skipped` with a reason.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from agent.context.ignore import IgnoreRules

MAX_FILE_BYTES = 1_000_000
V4CODERIGNORE = ".v4coderignore"
V4CODER_DIR = ".v4coder"  # sessions of a non-git repository (agent.session.sessions_dir)

LOCK_FILES = frozenset(
    "package-lock.json yarn.lock pnpm-lock.yaml npm-shrinkwrap.json Cargo.lock poetry.lock "
    "Pipfile.lock composer.lock Gemfile.lock go.sum uv.lock bun.lockb flake.lock "
    "packages.lock.json pdm.lock mix.lock pubspec.lock Podfile.lock".split()
)
VENDORED_DIRS = frozenset(
    "node_modules vendor bower_components .venv venv site-packages __pycache__ .tox .nox "
    ".mypy_cache .pytest_cache .ruff_cache .git .hg .svn .idea .eggs".split()
)
GENERATED_DIRS = frozenset("dist build out target .next .nuxt coverage .gradle .terraform".split())
GENERATED_SUFFIXES = (
    ".min.js", ".min.css", ".min.mjs", ".js.map", ".css.map", ".map", "_pb2.py", "_pb2_grpc.py",
    ".pb.go", ".pyc", ".pyo", ".lock",
)
BINARY_SUFFIXES = frozenset(
    ".png .jpg .jpeg .gif .bmp .ico .webp .tiff .psd .pdf .zip .gz .tgz .bz2 .xz .zst .7z .rar "
    ".tar .jar .war .whl .egg .so .dylib .dll .exe .o .a .lib .class .bin .dat .db .sqlite "
    ".wasm .ttf .otf .woff .woff2 .eot .mp3 .mp4 .wav .ogg .flac .mov .avi .mkv .npy .npz "
    ".pt .pth .safetensors .onnx .pkl .pickle .parquet .h5 .xlsx .docx .pptx".split()
)
SECRET_NAMES = frozenset(
    "id_rsa id_dsa id_ecdsa id_ed25519 .netrc .pgpass .npmrc .pypirc .htpasswd "
    "credentials.json service-account.json secrets.yaml secrets.yml .git-credentials".split()
)
SECRET_SUFFIXES = (".pem", ".key", ".p12", ".pfx", ".jks", ".keystore", ".kdbx", ".asc", ".gpg")
_SECRET_CONTENT = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----|\bAKIA[0-9A-Z]{16}\b")


@dataclass(slots=True, frozen=True)
class Skipped:
    path: str
    reason: str
    files: int = 1  # a vendored directory is one entry covering many files


@dataclass(slots=True)
class WalkedFile:
    path: str  # POSIX, relative to the repository root
    data: bytes
    text: str
    mtime_ns: int
    size: int


@dataclass(slots=True)
class WalkResult:
    files: list[WalkedFile]
    skipped: list[Skipped]
    git: bool


def reason_by_name(rel: str) -> str | None:
    """Skip reason decided from the path alone, or None."""
    parts = rel.split("/")
    name = parts[-1]
    low = name.lower()
    for d in parts[:-1]:
        if d in VENDORED_DIRS:
            return "vendored"
        if d in GENERATED_DIRS:
            return "generated"
    if name in SECRET_NAMES or low.startswith(".env") or low.endswith(SECRET_SUFFIXES):
        return "secret"
    if name in LOCK_FILES:
        return "lock file"
    if low.endswith(GENERATED_SUFFIXES):
        return "generated"
    dot = low.rfind(".")
    if dot > 0 and low[dot:] in BINARY_SUFFIXES:
        return "binary"
    return None


def reason_by_content(data: bytes, text: str | None) -> str | None:
    if text is None:
        return "binary"
    if ("PRIVATE KEY-----" in text or "AKIA" in text) and _SECRET_CONTENT.search(text):
        return "secret"
    if len(data) > 20_000 and len(data) / (data.count(b"\n") + 1) > 400:
        return "generated"  # minified: very long lines
    return None


def _collapse_dir(rel: str) -> str | None:
    """The vendored/generated directory prefix of ``rel`` ("node_modules/"), if any."""
    parts = rel.split("/")
    for k, d in enumerate(parts[:-1]):
        if d in VENDORED_DIRS or d in GENERATED_DIRS:
            return "/".join(parts[: k + 1]) + "/"
    return None


def git_list(root: Path) -> list[str] | None:
    """Paths git would show (tracked + untracked-not-ignored), or None if not a git tree."""
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), "ls-files", "--cached", "--others", "--exclude-standard",
             "-z"], capture_output=True, check=False)
    except OSError:
        return None
    if proc.returncode != 0:
        return None
    names = proc.stdout.decode("utf-8", "surrogateescape").split("\0")
    return sorted({n for n in names if n})


def plain_list(root: Path, pruned: list[Skipped] | None = None) -> list[str]:
    """Directory walk honouring nested .gitignore files (for non-git directories).

    Vendored and generated directories are not entered; they go to ``pruned`` (file
    count 0: not counted).
    """
    rules = IgnoreRules()
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        base = "" if rel_dir == "." else rel_dir + "/"
        if ".gitignore" in filenames:
            rules.add_file(Path(dirpath) / ".gitignore", base)
        keep = []
        for d in sorted(dirnames):
            if d in (".git", V4CODER_DIR) or rules.is_ignored(base + d, is_dir=True):
                continue
            if d in VENDORED_DIRS or d in GENERATED_DIRS:
                if pruned is not None:
                    kind = "vendored" if d in VENDORED_DIRS else "generated"
                    pruned.append(Skipped(base + d + "/", kind + " directory", 0))
                continue
            keep.append(d)
        dirnames[:] = keep
        out.extend(base + f for f in filenames if not rules.is_ignored(base + f))
    return sorted(out)


def walk_repository(root: str | Path, max_file_bytes: int = MAX_FILE_BYTES) -> WalkResult:
    """Read every packable file of ``root``; list the rest as skipped with a reason."""
    root = Path(root)
    names = git_list(root)
    is_git = bool(names)  # an empty listing: not a work tree, or a directory git ignores
    skipped: list[Skipped] = []
    if not names:
        names = plain_list(root, skipped)
    extra = IgnoreRules()
    extra.add_file(root / V4CODERIGNORE)
    real_root = root.resolve()
    files: list[WalkedFile] = []
    collapsed: dict[tuple[str, str], int] = {}
    for rel in names:
        if rel.startswith(V4CODER_DIR + "/") or f"/{V4CODER_DIR}/" in rel:
            continue  # our own session files: never context, not even a skip entry
        if extra.rules and extra.is_ignored(rel):
            skipped.append(Skipped(rel, "v4coderignore"))
            continue
        reason = reason_by_name(rel)
        if reason in ("vendored", "generated"):
            prefix = _collapse_dir(rel)
            if prefix is not None:
                collapsed[(prefix, reason)] = collapsed.get((prefix, reason), 0) + 1
                continue
        if reason is not None:
            skipped.append(Skipped(rel, reason))
            continue
        full = root / rel
        try:
            st = full.stat()
        except OSError:
            continue  # deleted in the work tree but still in the index
        if not full.is_file():
            continue  # submodule or special file
        if full.is_symlink() and not full.resolve().is_relative_to(real_root):
            skipped.append(Skipped(rel, "symlink outside repository"))
            continue
        if st.st_size > max_file_bytes:
            skipped.append(Skipped(rel, "too large"))
            continue
        try:
            data = full.read_bytes()
        except OSError:
            skipped.append(Skipped(rel, "unreadable"))
            continue
        text: str | None = None
        if b"\0" not in data:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = None
        reason = reason_by_content(data, text)
        if reason is not None or text is None:
            skipped.append(Skipped(rel, reason or "binary"))
            continue
        files.append(WalkedFile(rel, data, text, st.st_mtime_ns, st.st_size))
    for (prefix, reason), n in collapsed.items():
        skipped.append(Skipped(prefix, reason + " directory", n))
    skipped.sort(key=lambda s: s.path)
    return WalkResult(files, skipped, is_git)
