"""Fixtures for the parallel / offload / planner tests. Distributed workers live in workers.py
(importable by spawned ranks: this folder is put on sys.path, which spawn passes to children)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from model.toy import write_toy_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def toy_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_checkpoint(tmp_path_factory.mktemp("par") / "tiny", seed=0, preset="tiny")


@pytest.fixture(autouse=True)
def one_thread():
    """The CI machine has 2 cores shared by several ranks: one intra-op thread per process."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
