"""Progress of long operator jobs (backup, restore, verify), told to a callback.

The store never prints. A job takes `progress(stage, done, total)` (`total` None when not
known in advance) and calls it at a modest rate: for per-account steps each time, for
counted items (blocks, files, events) once every `EVERY` items and at the end of the
stage. The command line turns it into a progress line on a terminal and stays quiet when
its output is not one.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, "int | None"], None]

EVERY = 1000


class Ticker:
    """Counts items per stage and tells `progress` at a modest rate."""

    def __init__(self, progress: Progress | None, every: int = EVERY) -> None:
        self.progress = progress
        self.every = every
        self.counts: dict[str, int] = {}

    def step(self, stage: str, done: int, total: int | None = None) -> None:
        """A step of a stage whose size is known (one account of N): always told."""
        if self.progress is not None:
            self.progress(stage, done, total)

    def tick(self, stage: str, n: int = 1) -> None:
        """`n` more items of a counted stage: told every `every` items."""
        before = self.counts.get(stage, 0)
        after = self.counts[stage] = before + n
        if self.progress is not None and after // self.every != before // self.every:
            self.progress(stage, after, None)

    def end(self, stage: str) -> int:
        """The end of a counted stage: its final count is told (and returned)."""
        done = self.counts.get(stage, 0)
        if self.progress is not None:
            self.progress(stage, done, done)
        return done
