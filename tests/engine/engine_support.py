"""Helpers the engine tests import (a module of its own: ``from conftest import`` would pick
up whichever tests/*/conftest.py was imported first when several folders are collected)."""

import torch


def token_ids(n: int, seed: int = 0) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(2, 128000, (n,), generator=gen).tolist()
