"""Progress while a suite runs: bars on a terminal, plain lines elsewhere (a notebook, a CI log, a pipe).

The runner calls ``start(cells, batches)``, ``cell(cell)`` as a cell starts, ``cell_done()`` as its row lands,
``batch(n)`` as attack batches finish, and ``stop()``. :func:`for_console` picks the kind that shows where the
output goes: rich's live bars need a terminal; a notebook (or anything else) gets a line per finished cell, and
a line at most every ``every`` seconds while one long cell works through its batches.
"""

from __future__ import annotations

import sys
import time
from typing import IO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class RichProgress:
    """Two bars: cells, and attack batches (the slow part)."""

    def __init__(self, console: Console):
        self._p = Progress(
            TextColumn("[bold]{task.description:<8}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[detail]}"),
            console=console,
            transient=False,
        )

    def start(self, cells: int, batches: int) -> None:
        self._cells = self._p.add_task("cells", total=cells, detail="")
        self._batches = self._p.add_task("batches", total=batches, detail="")
        self._p.start()

    def cell(self, cell) -> None:
        self._p.update(self._cells, detail=cell.cell_id)

    def cell_done(self) -> None:
        self._p.advance(self._cells)

    def batch(self, n: int) -> None:
        self._p.advance(self._batches, n)

    def stop(self) -> None:
        self._p.update(self._cells, detail="")
        self._p.stop()


class LineProgress:
    """Plain lines: one per finished cell, and one at most every ``every`` seconds of batches in between."""

    def __init__(self, stream: IO[str] | None = None, every: float = 30.0):
        self.stream, self.every = stream, every
        self.cells = self.batches = self.done_cells = self.done_batches = 0
        self.current = ""

    def _say(self, text: str) -> None:
        stream = self.stream or sys.stdout  # looked up when written: a notebook swaps sys.stdout per cell
        elapsed = time.monotonic() - self.t0
        print(f"[bench {int(elapsed // 60)}:{int(elapsed % 60):02d}] {text}", file=stream, flush=True)
        self.last = time.monotonic()

    def start(self, cells: int, batches: int) -> None:
        self.cells, self.batches, self.t0 = cells, batches, time.monotonic()
        self._say(f"{cells} cell(s), {batches} attack batch(es) to run")

    def cell(self, cell) -> None:
        self.current = cell.cell_id

    def cell_done(self) -> None:
        self.done_cells += 1
        self._say(f"cells {self.done_cells}/{self.cells} · batches {self.done_batches}/{self.batches} · done {self.current}")

    def batch(self, n: int) -> None:
        self.done_batches += n
        if time.monotonic() - self.last >= self.every:
            self._say(f"batches {self.done_batches}/{self.batches} · working on {self.current}")

    def stop(self) -> None:
        pass


def for_console(console: Console, stream: IO[str] | None = None) -> RichProgress | LineProgress:
    """Bars where they render (a terminal), lines everywhere else (a notebook: rich's live display needs a widget
    toolkit there and shows nothing for minutes without one)."""
    if console.is_terminal and not console.is_jupyter:
        return RichProgress(console)
    return LineProgress(stream)
