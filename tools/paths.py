"""Confine every path the model names to the repository, and recognise secret files."""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePath

from tools.base import ToolError


def resolve_in_repo(repo: Path, path: str) -> Path:
    """Resolve ``path`` (relative to the repo root, or absolute inside it) to a real path.

    Symlinks are followed, for the file and for every parent directory, so a link that
    points out of the repository is refused just like ``..`` or an absolute outside path.
    The path need not exist yet.
    """
    if not isinstance(path, str):
        raise ToolError(f"path must be a string, got {type(path).__name__}")
    if "\0" in path:
        raise ToolError("path contains a NUL byte")
    root = Path(os.path.realpath(repo))
    text = path.strip() or "."
    candidate = Path(os.path.expanduser(text))
    if not candidate.is_absolute():
        candidate = root / candidate
    resolved = Path(os.path.realpath(candidate))
    if not _is_within(resolved, root):
        if os.path.normpath(candidate) != str(resolved) and _is_within(
                Path(os.path.normpath(candidate)), root):
            raise ToolError(f"path {path!r} goes through a symlink that points outside the "
                            f"repository (to {resolved}); only files inside {root} can be used")
        raise ToolError(f"path {path!r} is outside the repository {root}; "
                        "use a path relative to the repository root")
    return resolved


def _is_within(path: Path, root: Path) -> bool:
    return os.path.normcase(str(path)) == os.path.normcase(str(root)) or os.path.normcase(
        str(path)).startswith(os.path.normcase(str(root)).rstrip(os.sep) + os.sep)


def relative_to_repo(repo: Path, path: Path) -> str:
    """The repo-relative display form of an already resolved path ('.' for the root)."""
    root = Path(os.path.realpath(repo))
    rel = os.path.relpath(path, root)
    return rel.replace(os.sep, "/")


def is_inside_git_dir(repo: Path, resolved: Path) -> bool:
    """True for ``.git`` itself and anything under it (never written by file tools)."""
    rel = PurePath(relative_to_repo(repo, resolved))
    return bool(rel.parts) and rel.parts[0] == ".git"


# ---------------------------------------------------------------- secret files

_SECRET_NAMES = frozenset({
    ".env", ".netrc", "_netrc", ".npmrc", ".pypirc", ".pgpass", ".git-credentials",
    ".dockercfg", ".htpasswd", ".s3cfg", ".boto", ".terraformrc", "credentials",
    "credentials.json", "credentials.yml", "credentials.yaml", "credentials.xml",
    "client_secret.json", "secrets.json", "secrets.yml", "secrets.yaml", "secrets.toml",
    "id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", "id_ecdsa_sk", "id_ed25519_sk",
    ".vault-token", "terraform.tfstate",
})
_SECRET_SUFFIXES = (".pem", ".key", ".p12", ".pfx", ".jks", ".keystore", ".kdbx", ".ppk",
                    ".tfvars", ".ovpn")
# Directories whose whole content is private material.
_SECRET_DIRS = frozenset({".ssh", ".gnupg", ".aws", ".azure", ".kube"})
# Committed templates of .env files hold placeholders, not secrets.
_ENV_TEMPLATE_SUFFIXES = (".example", ".sample", ".template", ".dist", ".defaults", ".tmpl")


def is_secret_path(path: str | os.PathLike[str]) -> bool:
    """True for files that usually hold credentials: .env, private keys, .netrc, …"""
    parts = [p for p in re.split(r"[\\/]+", os.fspath(path)) if p]
    if not parts:
        return False
    name = parts[-1].lower()
    if any(part.lower() in _SECRET_DIRS for part in parts[:-1]):
        return True
    if name in _SECRET_NAMES:
        return True
    if name.startswith(".env.") or (name.endswith(".env") and name != ".env"):
        return not name.endswith(_ENV_TEMPLATE_SUFFIXES)
    return name.endswith(_SECRET_SUFFIXES)
