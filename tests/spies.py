"""Spies on our own functions that pass the real answers through (no mocks): which path a
wrapper took."""

from __future__ import annotations


def answers(monkeypatch, module, name: str) -> list:
    """Record each answer of ``module.name`` (the real function, called and passed through)."""
    taken, real = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a: taken.append(real(*a)) or taken[-1])
    return taken
