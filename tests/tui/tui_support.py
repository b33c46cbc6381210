"""Constants and helpers the TUI tests import (a module of its own: ``from conftest import``
resolves to whichever conftest was imported first when tests/tui runs with other folders)."""

from __future__ import annotations

import time
from collections.abc import Callable

SIZE = (120, 35)
HELLO = "def greet(name):\n    return 'hi ' + name\n\n\nprint(greet('world'))\n"


async def wait_until(pilot, condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the app")
        await pilot.pause(0.02)
