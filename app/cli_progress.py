"""A progress bar on stderr for long CLI work: a count, the time so far and an estimate of what is left."""

from __future__ import annotations

import sys
import time


class Bar:
    """`bar(done, total)` after each unit of work. On a terminal one line is redrawn in place; in a log
    (stderr not a terminal) a line is written at every tenth of the work, so logs stay short."""

    def __init__(self, what: str, unit: str, stream=None):
        self.what, self.unit = what, unit
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.perf_counter()
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self._tenth = 0  # the first line comes after a tenth of the work, with an estimate worth reading

    def __call__(self, done: int, total: int) -> None:
        elapsed = time.perf_counter() - self.start
        left = elapsed / done * (total - done) if done else float("nan")
        line = f"attnscope: {self.what} {done}/{total} {self.unit} · {_clock(elapsed)} so far, ~{_clock(left)} left"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if done >= total else ""))
        elif (tenth := 10 * done // max(total, 1)) != self._tenth:
            self._tenth = tenth
            self.stream.write(line + "\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    if seconds != seconds:  # nan: nothing done yet
        return "?"
    m, s = divmod(round(seconds), 60)
    return f"{m}:{s:02d}"
