"""Download progress on stderr: a Rich bar (bytes, speed, ETA) on a TTY; off a TTY one line per file."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

from infer.cli import console
from infer.units import human_bytes


class CliReporter:
    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.tty = console.is_tty(sys.stderr) and not quiet

    @contextlib.contextmanager
    def file(self, name: str, size: int, source: str) -> Iterator[Callable[[int], None]]:
        if not self.tty:
            if not self.quiet:
                console.info(f"pulling {name} ({human_bytes(size)}) from {source}")
            yield lambda n: None
            return
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      TimeRemainingColumn(), console=console.err(), transient=False) as bar:
            task = bar.add_task(name, total=size or None)

            def advance(n: int) -> None:
                if n < 0:
                    bar.reset(task)
                else:
                    bar.advance(task, n)

            yield advance

    def notice(self, message: str) -> None:
        if not self.quiet:
            console.warn(message)
