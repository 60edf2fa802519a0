"""A tiny progress bar for long operations, written to stderr.

On a terminal it redraws one line in place (at most ~10 times a second). When stderr
is not a terminal (a pipe, a log file, CI) it prints at most two lines: one when the
operation starts and one when it ends, so logs stay short.

    with Progress(total, "loading") as bar:
        for chunk in chunks:
            ...
            bar.update(len(chunk))
"""
import sys
import time

__all__ = ["Progress"]

_BAR_WIDTH = 30
_REDRAW_INTERVAL = 0.1  # seconds between two redraws on a terminal


def _is_tty(stream):
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):  # closed or detached stream
        return False


def _count(n):
    """Format a count compactly: 950, 12.3k, 4.56M."""
    if n < 1000:
        return "%d" % n
    if n < 1_000_000:
        return "%.1fk" % (n / 1e3)
    if n < 1_000_000_000:
        return "%.2fM" % (n / 1e6)
    return "%.2fG" % (n / 1e9)


def _duration(seconds):
    if seconds < 60:
        return "%.1fs" % seconds
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return "%dm%02ds" % (minutes, seconds)
    hours, minutes = divmod(minutes, 60)
    return "%dh%02dm" % (hours, minutes)


class Progress:
    """Progress(total, label="", *, unit="", stream=None, enabled=None)

    Show progress of an operation with ``total`` steps (``None`` or 0 when unknown).
    ``stream`` defaults to ``sys.stderr``; ``enabled=False`` silences it completely,
    ``enabled=None`` means "draw when the stream is a terminal, else two plain lines".
    """

    def __init__(self, total, label="", *, unit="", stream=None, enabled=None):
        self.total = int(total) if total else 0
        self.label = label
        self.unit = unit
        self.stream = sys.stderr if stream is None else stream
        self.silent = enabled is False
        self.tty = False if self.silent else _is_tty(self.stream)
        self.done = 0
        self.started = None
        self.finished = False
        self._last_draw = 0.0
        self._last_width = 0

    # -- context manager ---------------------------------------------------------
    def __enter__(self):
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(failed=exc_type is not None)
        return False

    # -- public ------------------------------------------------------------------
    def start(self):
        """Start the clock and announce the operation (idempotent)."""
        if self.started is not None:
            return
        self.started = time.perf_counter()
        if self.silent:
            return
        if self.tty:
            self._draw(force=True)
        else:
            what = " (%s%s)" % (_count(self.total), " " + self.unit if self.unit else "") \
                if self.total else ""
            self._write("%s: started%s\n" % (self.label or "progress", what))

    def update(self, n=1):
        """Record ``n`` more steps done."""
        if self.started is None:
            self.start()
        self.done += n
        if self.tty:
            self._draw()

    def close(self, failed=False):
        """Finish: draw the final state and a newline (idempotent)."""
        if self.finished:
            return
        if self.started is None:
            self.start()
        self.finished = True
        if self.silent:
            return
        elapsed = self.elapsed
        status = "failed" if failed else "done"
        if self.tty:
            self._draw(force=True)
            self._write("\n")
        else:
            rate = self.done / elapsed if elapsed > 0 else 0.0
            self._write("%s: %s, %s%s in %s (%s/s)\n" % (
                self.label or "progress", status, _count(self.done),
                " " + self.unit if self.unit else "", _duration(elapsed), _count(rate)))

    @property
    def elapsed(self):
        """Seconds since start() (0.0 before it)."""
        if self.started is None:
            return 0.0
        return time.perf_counter() - self.started

    # -- drawing -----------------------------------------------------------------
    def _draw(self, force=False):
        now = time.perf_counter()
        if not force and now - self._last_draw < _REDRAW_INTERVAL:
            return
        self._last_draw = now
        elapsed = self.elapsed
        rate = self.done / elapsed if elapsed > 0 else 0.0
        unit = " " + self.unit if self.unit else ""
        if self.total:
            fraction = min(1.0, self.done / self.total)
            filled = int(fraction * _BAR_WIDTH)
            bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
            eta = ""
            if 0 < self.done < self.total and rate > 0:
                eta = " eta " + _duration((self.total - self.done) / rate)
            line = "%s [%s] %3d%% %s/%s%s %s/s%s" % (
                self.label, bar, int(fraction * 100), _count(self.done),
                _count(self.total), unit, _count(rate), eta)
        else:
            line = "%s %s%s %s/s %s" % (self.label, _count(self.done), unit,
                                        _count(rate), _duration(elapsed))
        line = line.strip()
        pad = " " * max(0, self._last_width - len(line))  # erase a longer previous line
        self._last_width = len(line)
        self._write("\r" + line + pad)

    def _write(self, text):
        try:
            if self.stream is not sys.stdout and sys.stdout is not None:
                sys.stdout.flush()  # keep our lines in order with the program's output
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            # A closed or broken stderr must not break the operation being measured.
            self.silent = True
            self.tty = False
