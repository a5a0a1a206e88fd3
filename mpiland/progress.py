"""The progress display of a run, shown on rank 0 only.

Modes (``run.progress`` / ``--progress``):

``bar``
    a live :mod:`tqdm` bar: a widget in Jupyter (``tqdm.notebook``, when
    ipywidgets is installed; a text bar otherwise), a redrawn line on a
    terminal;
``lines``
    plain lines for logs and batch jobs, one every ``interval`` seconds (10 by
    default) and a last one when the run ends, e.g.
    ``120/441 points ( 27.2%)  8.10 points/s  elapsed 0:15  ETA 0:40``;
``auto``
    ``bar`` on a terminal or in a Jupyter kernel, ``lines`` otherwise (a SLURM
    output file, a pipe);
``none``
    nothing.

Points a resumed run finds already done count from the start (``already``),
while the rate and the ETA count only the points evaluated by this run.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm.std import tqdm as std_tqdm

MODES = ("auto", "bar", "lines", "none")
"""The values ``mode`` takes."""


def _fmt_seconds(s: float) -> str:
    if s != s or s == float("inf"):
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def in_notebook() -> bool:
    """True inside a Jupyter kernel (notebook, JupyterLab, VS Code), where a bar can be a widget."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    shell = get_ipython() if callable(get_ipython) else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def bar_class(notebook: bool) -> Any:
    """tqdm's widget class in a notebook with ipywidgets, else its text bar.

    (``tqdm.auto`` makes the same choice, but when it is imported, and warns on
    import in a notebook without ipywidgets; the text bar works there too.)
    """
    if notebook:
        try:
            from tqdm import notebook as tqdm_notebook
        except ImportError:  # IPython too old or broken: the text bar will do
            return std_tqdm
        if getattr(tqdm_notebook, "IProgress", None) is not None:
            return tqdm_notebook.tqdm
    return std_tqdm


class Progress:
    """Points done out of ``total``, points/s and ETA, in one of :data:`MODES`.

    ``already``: points done before this run (a resume), counted as done from
    the start. ``stream``: where bars and lines go (default: standard error; a
    Jupyter widget when mode ``bar`` runs in a notebook with the default
    stream). ``interval``: seconds between lines in mode ``lines``. ``label``:
    a prefix naming what is evaluated.
    """

    def __init__(self, total: int, already: int = 0, mode: str = "auto", stream: TextIO | None = None,
                 interval: float = 10.0, label: str = "") -> None:
        if mode not in MODES:
            raise ValueError(f"progress mode {mode!r}: choose one of {', '.join(MODES)}")
        self.stream: TextIO = stream or sys.stderr
        notebook = stream is None and in_notebook()
        if mode == "auto":
            tty = getattr(self.stream, "isatty", lambda: False)()
            mode = "bar" if tty or notebook else "lines"
        self.mode = mode
        self.total = total
        self.already = already
        self.done = 0
        self.interval = interval
        self.label = label
        self.start = time.perf_counter()
        self.last = float("-inf")  # the first update writes a line at once (mode lines)
        self._shown = -1  # points done at the last line written (mode lines)
        self._bar: Any = None
        if mode == "bar":
            bar = bar_class(notebook)
            self._bar = bar(total=total, initial=already, desc=label.strip() or None, unit="point",
                            file=self.stream, dynamic_ncols=True, mininterval=0.2, smoothing=0.1,
                            leave=True, disable=False)

    def update(self, n: int) -> None:
        """Count ``n`` more points done and refresh the display when it is due."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "lines":
            now = time.perf_counter()
            if now - self.last >= self.interval or self.already + self.done >= self.total:
                self.last = now
                self._write_line(now)

    def line(self, now: float | None = None) -> str:
        """The text of one progress line (mode ``lines``): points, percentage, rate, elapsed time, ETA."""
        now = time.perf_counter() if now is None else now
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        remaining = self.total - self.already - self.done
        eta = remaining / rate if rate > 0 else float("nan")
        finished = self.already + self.done
        pct = 100.0 * finished / self.total if self.total else 100.0
        return (f"{self.label}{finished}/{self.total} points ({pct:5.1f}%)  {rate:.2f} points/s  "
                f"elapsed {_fmt_seconds(elapsed)}  ETA {_fmt_seconds(eta)}")

    def _write_line(self, now: float) -> None:
        self.stream.write(self.line(now) + "\n")
        self.stream.flush()
        self._shown = self.done

    def close(self) -> None:
        """End the display: the bar's final state, or (mode ``lines``) a last line when points were
        evaluated since the last one."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "lines" and self.done and self._shown != self.done:
            self._write_line(time.perf_counter())
