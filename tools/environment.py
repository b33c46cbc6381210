"""Which of our environment variables a child process (shell command, git) may see.

Children get an allow-list of ordinary variables (PATH, HOME, locale, toolchain homes, git
identity/config) and never anything that looks like a credential, so our API keys and
the user's tokens stay out of commands the model runs and out of repository hooks.
"""

from __future__ import annotations

import os
import re

ALLOWED_NAMES = frozenset({
    "PATH", "HOME", "LANG", "LANGUAGE", "TERM", "USER", "LOGNAME", "SHELL", "TMPDIR", "TEMP",
    "TMP", "TZ", "PYTHONPATH", "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "JAVA_HOME",
    "GOPATH", "GOROOT", "GOCACHE", "GOMODCACHE", "GOFLAGS", "CARGO_HOME", "RUSTUP_HOME",
    "NVM_DIR", "NODE_PATH", "PNPM_HOME", "SSL_CERT_FILE", "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE", "CUDA_HOME", "CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH",
    "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR",
    "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL",
    "GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM", "GIT_CONFIG_NOSYSTEM", "GIT_CONFIG_COUNT",
})
ALLOWED_PREFIXES = ("LC_", "GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_")
# Only git itself (commit signing) may also reach the user's agents.
GIT_ONLY_NAMES = frozenset({"SSH_AUTH_SOCK", "GNUPGHOME", "GPG_TTY"})

_SECRET_NAME = re.compile(
    r"(^|_)(API_?KEY|KEYS?|TOKENS?|SECRETS?|PASS|PWD|AUTH|CREDENTIALS?)$"
    r"|PASSWORD|PASSWD|SECRET|CREDENTIAL|PRIVATE_KEY|ACCESS_KEY"
    r"|^(OPENAI|ANTHROPIC|DEEPSEEK)_|^V4CODER_API", re.IGNORECASE)


def looks_like_secret_env(name: str) -> bool:
    return _SECRET_NAME.search(name) is not None


def inherited_env(extra_names: frozenset[str] = frozenset()) -> dict[str, str]:
    """The allow-listed, non-secret part of os.environ."""
    return {k: v for k, v in os.environ.items()
            if (k in ALLOWED_NAMES or k in extra_names or k.startswith(ALLOWED_PREFIXES))
            and not looks_like_secret_env(k)}
