"""Progress bars for long CLI work: tqdm on a terminal when installed, else a plain line on stderr.

tqdm is optional (``pip install "fmq-loader[progress]"``) and used only when stderr is a
terminal (its carriage returns would garble a log file). Otherwise ``Progress``
rewrites one ``desc: done/total (pct%)`` line in place on a terminal (at most five times
a second), and on a pipe or a CI log prints a full line at most every ``every_s`` seconds
plus one at the end, so logs stay short. ``enabled=False`` prints nothing at all.
"""

from __future__ import annotations

import sys
import time

__all__ = ["Progress", "have_tqdm"]


def have_tqdm() -> bool:
    """True when the optional tqdm package can be imported."""
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


class Progress:
    """A counter shown on stderr while long work runs.

    Args:
        total: the count at which the work is done (None when unknown).
        enabled: False shows nothing (``--no-progress``).
        desc: what is being counted, e.g. ``"make-dataset data/demo"``.
        unit: tqdm's unit label ("img", "batch", "step").
        fallback: without tqdm, show the plain line (False: show nothing, for work that
            already logs its own progress lines).
        every_s: seconds between plain lines when stderr is not a terminal.
    """

    def __init__(self, total: int | None, enabled: bool = True, desc: str = "",
                 unit: str = "it", fallback: bool = True, every_s: float = 5.0):
        self.total, self.desc, self.unit = total, desc, unit
        self.done = 0
        self._bar = None
        self._tqdm = None  # the bar is made at the first update(), so work that fails
        self._plain = False  # before doing anything leaves no empty bar behind
        self._tty = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self._every_s = 0.2 if self._tty else every_s
        self._last = time.monotonic()
        if not enabled:
            return
        if not self._tty:  # a log file: tqdm's carriage returns would garble it
            self._plain = fallback
            return
        try:
            from tqdm import tqdm
        except ImportError:
            self._plain = fallback
        else:
            self._tqdm = tqdm

    @property
    def uses_tqdm(self) -> bool:
        return self._tqdm is not None

    def _open_bar(self):
        if self._bar is None and self._tqdm is not None:
            self._bar = self._tqdm(total=self.total, desc=self.desc, unit=self.unit,
                                   file=sys.stderr, dynamic_ncols=True, leave=True)
        return self._bar

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._open_bar() is not None:
            self._bar.update(n)
        elif self._plain:
            now = time.monotonic()
            if now - self._last >= self._every_s or self.done == self.total:
                self._last = now
                self._line()

    def _line(self) -> None:
        if self.total:
            text = f"{self.desc}: {self.done}/{self.total} ({100.0 * self.done / self.total:3.0f}%)"
        else:
            text = f"{self.desc}: {self.done} {self.unit}"
        sys.stderr.write(f"\r{text}" if self._tty else f"{text}\n")
        sys.stderr.flush()

    def write(self, line: str) -> None:
        """Print a log line to stdout without breaking the bar."""
        if self._open_bar() is not None:
            self._bar.write(line, file=sys.stdout)
        else:
            print(line, flush=self._plain)

    def close(self) -> None:
        self._tqdm = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._plain:
            if self.done != self.total and self.done:
                self._line()  # the last count, when update() did not just print it
            if self._tty:
                sys.stderr.write("\n")
            sys.stderr.flush()
            self._plain = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
