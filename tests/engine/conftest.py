"""Engine fixtures: one tiny toy checkpoint (and its fp32 model) per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.engine import Engine, EngineConfig, load_tokenizer
from model.generate import LoadedModel, load_model
from model.sampling import generation_defaults
from model.toy import write_toy_checkpoint


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """The toy's ops are tiny: one intra-op thread avoids spin-wait overhead (10× on a busy
    2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def toy_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_checkpoint(tmp_path_factory.mktemp("engine") / "tiny", seed=0, preset="tiny")


@pytest.fixture(scope="session")
def toy_lm(toy_ckpt: Path) -> LoadedModel:
    torch.manual_seed(0)
    return load_model(toy_ckpt, dtype="float32", progress=False)


@pytest.fixture(scope="session")
def toy_tokenizer(toy_ckpt: Path) -> object:
    return load_tokenizer(toy_ckpt)


@pytest.fixture
def make_engine(toy_lm: LoadedModel, toy_ckpt: Path, toy_tokenizer: object):
    def make(**config: object) -> Engine:
        return Engine(toy_lm, EngineConfig(**config), toy_tokenizer,  # type: ignore[arg-type]
                      generation_defaults(toy_ckpt))
    return make
