"""Prefill progress in the text logs (`v4coder run`'s stderr, `ask`'s log): a line per tenth of
a prompt read in several chunks, one at the end; nothing for a prompt read at once."""

from __future__ import annotations

import io

from agent.events import PrefillEvent, StepEvent
from app.headless import ProgressPrinter


def _printed(events) -> list[str]:
    out = io.StringIO()
    printer = ProgressPrinter(out)
    for event in events:
        printer(event)
    return [line for line in out.getvalue().splitlines() if line.strip()]


def test_a_long_prompt_gets_a_line_per_tenth_and_one_at_the_end():
    total = 1_000_000
    events = [PrefillEvent(200_000, total, 200_000)]                        # restored: no line
    events += [PrefillEvent(d, total, 200_000) for d in range(202_048, total, 2_048)]
    events += [PrefillEvent(total, total, 200_000)]
    lines = _printed(events)
    assert [line.split(":")[1].split("%")[0].strip() for line in lines] == [
        "20", "30", "40", "50", "60", "70", "80", "90", "100"]
    assert lines[-1].strip() == ("reading the prompt: 100% (1.00M of 1.00M tokens, 200.0k from "
                                 "the prefix cache)")


def test_a_prompt_read_at_once_gets_no_line():
    events = [StepEvent(1), PrefillEvent(0, 900, 0), PrefillEvent(900, 900, 0),
              StepEvent(2), PrefillEvent(900, 1_200, 900), PrefillEvent(1_200, 1_200, 900)]
    assert _printed(events) == ["── step 1", "── step 2"]
