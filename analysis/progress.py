"""The analyser's one-line progress bar on stderr (drawn only when stderr is a terminal)."""

from __future__ import annotations

import sys
import time


class _Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.started = time.monotonic()

    def files(self, done: int, total: int, name: str) -> None:
        if not self.enabled or total < 2:
            return
        width = 30
        filled = int(width * done / total) if total else width
        sys.stderr.write(f"\rreading captures [{'#' * filled}{'.' * (width - filled)}]"
                         f" {done}/{total} {name[:40]:<40}")
        sys.stderr.flush()

    def stage(self, text: str) -> None:
        if not self.enabled:
            return
        sys.stderr.write(f"\r{text:<90}")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 90 + "\r")
            sys.stderr.flush()
