"""Progress of a long loop on stderr: done/total, rate and ETA.

On a terminal the line is redrawn in place (at most 5 times a second); anywhere else (a
log file, CI, a pipe) a plain line every `every` seconds, so logs stay readable; nothing
with quiet. Only stderr: stdout stays the command's output.

    progress = Progress("caption", total=len(paths), unit="images", quiet=args.quiet)
    for ...:
        progress.add()
    progress.close()
"""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


def eta_text(seconds: float) -> str:
    """12s, 3m05s, 2h07m."""
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def progress_line(prog: str, done: int, total: int | None, unit: str, elapsed: float) -> str:
    """'caption: 12/40 images (30%), 2.4 images/s, ETA 12s'; without a total: done and rate."""
    rate = done / elapsed if elapsed > 0 else 0.0
    if total:
        line = f"{prog}: {done}/{total} {unit} ({100 * done / total:.0f}%), {rate:.2f} {unit}/s"
        if 0 < done < total and rate > 0:
            line += f", ETA {eta_text((total - done) / rate)}"
        return line
    return f"{prog}: {done} {unit}, {rate:.2f} {unit}/s"


class Progress:
    def __init__(self, prog: str, *, total: int | None = None, unit: str = "images", quiet: bool = False,
                 stream: TextIO | None = None, every: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.prog, self.total, self.unit, self.quiet = prog, total, unit, quiet
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = 0.2 if self.tty else every
        self.clock = clock
        self.start = self.last = clock()
        self.done = 0
        self.drawn = False  # a terminal line is open (to be ended by close)

    def add(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if not self.quiet and now - self.last >= self.every:
            self.last = now
            self._show()

    def _show(self) -> None:
        line = progress_line(self.prog, self.done, self.total, self.unit, self.clock() - self.start)
        if self.tty:
            self.stream.write("\r" + line + "\033[K")  # \033[K: clear the rest of a longer earlier line
            self.drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """The final line on a terminal (ends the redrawn one); in logs, the periodic lines suffice."""
        if self.quiet:
            return
        if self.tty:
            self._show()
            self.stream.write("\n")
            self.stream.flush()
