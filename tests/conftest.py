"""Test-wide setup. TRITON_INTERPRET must be set before any @triton.jit runs."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("GIT_AUTHOR_NAME", "v4coder tests")
os.environ.setdefault("GIT_AUTHOR_EMAIL", "tests@v4coder.invalid")
os.environ.setdefault("GIT_COMMITTER_NAME", "v4coder tests")
os.environ.setdefault("GIT_COMMITTER_EMAIL", "tests@v4coder.invalid")
