"""The CLI's progress bar: counts and an estimate, redrawn in place on a terminal, a line per tenth in a log."""

from __future__ import annotations

import io

from app.cli_progress import Bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_one_line_per_tenth_with_count_and_estimate():
    log = io.StringIO()
    bar = Bar("sweep", "points", stream=log)
    for done in range(1, 31):
        bar(done, 30)
    lines = log.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[0].startswith("attnscope: sweep 3/30 points · 0:00 so far, ~0:00 left")
    assert lines[-1].startswith("attnscope: sweep 30/30 points")


def test_a_terminal_redraws_one_line_and_ends_it():
    term = Terminal()
    bar = Bar("trace", "layers", stream=term)
    for done in range(1, 5):
        bar(done, 4)
    text = term.getvalue()
    assert text.count("\r") == 4 and text.endswith("left\n") and text.count("\n") == 1
