"""Stop signals: a flag the run polls, set by SIGTERM/SIGUSR1/SIGUSR2 (SLURM preemption, time limit).

The handler only records the signal and the time (no logging, no I/O: a Python
handler runs between bytecodes of whatever the main thread was doing, logging
included); the run logs the stop when it first sees the flag. A repeat within
:data:`GRACE_S` seconds of the first stop signal is absorbed: SLURM may send
SIGTERM more than once, and Hydra's ``mpiexec`` forwards every SIGTERM it gets.
A stop signal after the grace period ends the process at once (finished points
are already in the file). SIGINT (Ctrl-C) is not a stop signal: it interrupts
at once, as always.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

log = logging.getLogger("mpiland")

STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2")
"""Signals that end a run cleanly: SLURM sends them before preemption or the time limit."""

GRACE_S = 60.0
"""Seconds after the first stop signal during which further stop signals are absorbed.

SLURM's default KillWait (the time between SIGTERM and SIGKILL) is 30 s, so a
clean stop is over by then or SLURM ends it anyway; a person who really means
"now" sends the signal again after the grace period, sends SIGINT, or SIGKILL.
"""


class StopFlag:
    """Installed as a context manager; ``flag()`` is True once a stop signal arrived.

    ``signals``: the signal names that stop the run; ``grace_s``: see :data:`GRACE_S`.
    """

    def __init__(self, signals: tuple[str, ...] = STOP_SIGNALS, grace_s: float = GRACE_S) -> None:
        self.signals = signals
        self.grace_s = grace_s
        self.signal: str | None = None
        self.received_at: float | None = None
        self.repeats = 0
        self._logged = False
        self._old: dict[int, Any] = {}

    def __call__(self) -> bool:
        """True once a stop was requested (logs it, from the caller's loop, the first time it is seen)."""
        if self.signal is None:
            return False
        if not self._logged:
            self._logged = True
            log.warning("received %s: stopping after the points in flight; the run can be resumed", self.signal)
        return True

    def request(self, name: str) -> None:
        """Ask for a stop as if signal ``name`` had arrived (for callers that stop a run from code)."""
        if self.signal is None:
            self.signal = name
            self.received_at = time.monotonic()

    def ignore_further(self) -> None:
        """Ignore the stop signals from now on: for a process exiting after a stop.

        Python restores default handlers while it shuts down, so a repeated signal in
        that window would still kill the process and hide its exit status (3: resume).
        """
        if threading.current_thread() is threading.main_thread():
            for name in self.signals:
                sig = getattr(signal, name, None)
                if sig is not None:
                    signal.signal(sig, signal.SIG_IGN)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        # Only plain assignments here: see the module docstring.
        now = time.monotonic()
        if self.signal is None or self.received_at is None:
            self.signal = signal.Signals(signum).name
            self.received_at = now
            return
        if now - self.received_at <= self.grace_s:
            self.repeats += 1
            return
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for name in self.signals:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
