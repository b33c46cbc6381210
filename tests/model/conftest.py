"""Shared fixtures: toy checkpoints are written once per session into temp dirs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # model_helpers, hf_oracle (test-only)

from model.generate import LoadedModel, load_model  # noqa: E402
from model.toy import write_toy_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", seed=0, preset="tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_ckpt: Path) -> LoadedModel:
    torch.manual_seed(0)
    return load_model(tiny_ckpt, dtype="float32", progress=False)
