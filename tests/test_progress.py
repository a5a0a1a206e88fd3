"""Tests of mpiland.progress: what each display mode writes, and points already done at the start."""

from __future__ import annotations

import io
import re

import pytest

from mpiland.progress import MODES, Progress


class FakeTTY(io.StringIO):
    """A text stream that says it is a terminal (the bar's condition in mode auto)."""

    def isatty(self) -> bool:
        return True


def run(progress: Progress, steps: list[int]) -> None:
    for n in steps:
        progress.update(n)
    progress.close()


def test_lines_end_with_a_line_of_the_totals():
    out = io.StringIO()
    run(Progress(12, mode="lines", stream=out, interval=3600.0), [5, 4, 3])
    lines = out.getvalue().splitlines()
    # the first update is due at once, then nothing until the end (interval 1 h): the last line has the totals
    assert len(lines) == 2
    assert lines[0].startswith("5/12 points ( 41.7%)")
    assert lines[-1].startswith("12/12 points (100.0%)")
    assert "points/s" in lines[-1] and "elapsed" in lines[-1] and "ETA 0:00" in lines[-1]


def test_lines_every_interval():
    out = io.StringIO()
    run(Progress(4, mode="lines", stream=out, interval=0.0, label="(with curvature) "), [1, 1, 1, 1])
    lines = out.getvalue().splitlines()
    assert [int(re.match(r"\(with curvature\) (\d+)/4 points", l).group(1)) for l in lines] == [1, 2, 3, 4]


def test_an_interrupted_run_still_gets_a_last_line():
    out = io.StringIO()
    run(Progress(100, mode="lines", stream=out, interval=3600.0), [10, 10, 10])
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("10/100 points") and lines[-1].startswith("30/100 points ( 30.0%)")
    assert len(lines) == 2


def test_already_done_points_count_from_the_start():
    out = io.StringIO()
    run(Progress(10, already=6, mode="lines", stream=out, interval=3600.0), [1, 3])
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("7/10 points ( 70.0%)")
    assert lines[-1].startswith("10/10 points (100.0%)")


def test_nothing_evaluated_writes_nothing():
    """A resume of a finished file has nothing to report."""
    out = io.StringIO()
    run(Progress(10, already=10, mode="lines", stream=out), [])
    assert out.getvalue() == ""


def test_none_writes_nothing():
    out = FakeTTY()
    run(Progress(10, already=2, mode="none", stream=out, interval=0.0), [3, 5])
    assert out.getvalue() == ""


def test_bar_starts_at_already_and_ends_at_the_total():
    out = io.StringIO()
    run(Progress(10, already=4, mode="bar", stream=out, label="(x) "), [2, 2, 2])
    text = out.getvalue()
    frames = [f for f in text.split("\r") if f.strip()]
    assert re.search(r"\b4/10\b", frames[0]) and "40%" in frames[0]
    assert re.search(r"\b10/10\b", frames[-1]) and "100%" in frames[-1]
    assert frames[-1].startswith("(x): ") and "point/s" in frames[-1]
    assert text.endswith("\n")  # the finished bar stays on its own line


def test_auto_is_a_bar_on_a_terminal_and_lines_elsewhere():
    tty, plain = FakeTTY(), io.StringIO()
    bar, lines = Progress(3, mode="auto", stream=tty), Progress(3, mode="auto", stream=plain)
    assert (bar.mode, lines.mode) == ("bar", "lines")
    run(bar, [3])
    run(lines, [3])
    assert "\r" in tty.getvalue() and "3/3" in tty.getvalue()
    assert plain.getvalue().startswith("3/3 points (100.0%)") and "\r" not in plain.getvalue()


def test_modes_are_checked():
    assert MODES == ("auto", "bar", "lines", "none")
    with pytest.raises(ValueError, match="choose one of auto, bar, lines, none"):
        Progress(3, mode="bars")
