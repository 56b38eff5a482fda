"""Progress of a long step (synthesis, feature extraction) that suits where it goes: tqdm's bar on
a terminal; elsewhere (a log file, a pipe, CI) one plain line at each tenth of the work.

Written here, not taken from tqdm, because tqdm has no line-per-fraction mode: off a terminal it
still redraws its bar with carriage returns (``make demo > log`` kept every frame, megabytes of
bars), and ``mininterval`` only thins the frames by time, not by progress.
"""
from __future__ import annotations

import sys
import time


def progress_bar(total: int, desc: str, unit: str = "it", enabled: bool = True, file=None):
    """A bar with ``update(n)`` and ``close()`` (also a context manager) writing to ``file``
    (default: standard error at call time)."""
    from tqdm import tqdm

    out = file if file is not None else sys.stderr
    if not enabled:
        return tqdm(total=total, disable=True)
    isatty = getattr(out, "isatty", None)
    if callable(isatty) and isatty():
        return tqdm(total=total, desc=desc, unit=unit, file=out)
    return TenthLines(total, desc, unit, out)


class TenthLines:
    """``desc: 30% (45/150 utt, 12 s)``: a line when the work crosses each tenth, and one at the
    end unless the last line showed the final count (a step cut short says how far it got)."""

    def __init__(self, total: int, desc: str, unit: str, file):
        self.total, self.desc, self.unit, self.file = max(0, int(total)), desc, unit, file
        self.n, self.shown, self.t0, self.closed = 0, 0, time.monotonic(), False
        self.last_n = -1  # the count the last line showed

    def _line(self) -> None:
        self.last_n = self.n
        pct = 100 * self.n // self.total if self.total else 100
        print(f"{self.desc}: {pct}% ({self.n}/{self.total} {self.unit}, {time.monotonic() - self.t0:.0f} s)",
              file=self.file, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        tenth = 10 * self.n // self.total if self.total else 10
        if tenth > self.shown:
            self.shown = min(tenth, 10)
            self._line()

    def close(self) -> None:
        if not self.closed and self.n != self.last_n:
            self._line()
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
