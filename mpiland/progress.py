"""One progress display on rank 0: a live line on a terminal, periodic plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _fmt_seconds(s: float) -> str:
    if s != s or s == float("inf"):
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class Progress:
    """Points done, points/s and ETA. ``mode``: auto|bar|lines|none."""

    def __init__(self, total: int, already: int = 0, mode: str = "auto", stream: TextIO | None = None,
                 interval: float = 10.0, label: str = "") -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode = mode
        self.total = total
        self.already = already
        self.done = 0
        self.interval = interval if mode == "lines" else 0.2
        self.label = label
        self.start = time.perf_counter()
        self.last = 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.interval or self.already + self.done >= self.total:
            self.last = now
            self._show(now)

    def line(self, now: float | None = None) -> str:
        now = time.perf_counter() if now is None else now
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        remaining = self.total - self.already - self.done
        eta = remaining / rate if rate > 0 else float("nan")
        finished = self.already + self.done
        pct = 100.0 * finished / self.total if self.total else 100.0
        return (f"{self.label}{finished}/{self.total} points ({pct:5.1f}%)  {rate:.2f} points/s  "
                f"elapsed {_fmt_seconds(elapsed)}  ETA {_fmt_seconds(eta)}")

    def _show(self, now: float) -> None:
        if self.mode == "none":
            return
        if self.mode == "bar":
            self.stream.write("\r" + self.line(now) + "\033[K")
        else:
            self.stream.write(self.line(now) + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.mode == "bar":
            self._show(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()
