"""Progress lines for long commands (stt-eval, stt-export's calibration and parity runs): done, rate, ETA.

    progress = Progress("stt-eval", total=15000, unit="frames")
    for frame in frames:
        ...
        progress.update()
    progress.close()

prints to stderr, at most once every `interval` seconds (default 10; the
environment variable STT_KERAS_PROGRESS_SECONDS overrides it, 0 prints every
update) and once at the end:

    stt-eval: 1200/15000 frames (8%), 3.1 frames/s, ETA 1 h 14 min

The rate is measured from the first update on (the first item includes tracing
and warm-up, so it is not counted in the rate); without a total there is no ETA.
"""

import os
import sys
import time

DEFAULT_INTERVAL = 10.0


def _interval(interval):
    if interval is not None:
        return float(interval)
    text = os.environ.get("STT_KERAS_PROGRESS_SECONDS")
    if text:
        try:
            return max(0.0, float(text))
        except ValueError:
            pass
    return DEFAULT_INTERVAL


def format_seconds(seconds):
    """'42 s', '3 min 05 s', '1 h 14 min'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Counts items of a long loop and prints `what: done/total unit (pct), rate, ETA` to `stream` now and then.

    Args:
        what: the prefix, e.g. "stt-eval" or "stt-export: int8 calibration".
        total: items expected (None: unknown, no percentage or ETA).
        unit: name of the items ("frames").
        interval: seconds between lines (default: STT_KERAS_PROGRESS_SECONDS or 10).
        stream: where to print (default sys.stderr, looked up when printing).
        clock: time source (tests).
    """

    def __init__(self, what, total=None, unit="frames", interval=None, stream=None, clock=time.monotonic):
        self.what, self.total, self.unit = what, total, unit
        self.interval = _interval(interval)
        self.stream = stream
        self.clock = clock
        self.done = 0
        self.lines = 0
        self._first = None  # (time, count) after the first update: the rate's origin
        self._last_print = None
        self.closed = False

    def rate(self):
        """Items per second since the first update (None before two updates)."""
        if self._first is None:
            return None
        seconds = self.clock() - self._first[0]
        items = self.done - self._first[1]
        return items / seconds if seconds > 0 and items > 0 else None

    def text(self):
        parts = [f"{self.done}/{self.total} {self.unit}" if self.total else f"{self.done} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.0f}%)"
        rate = self.rate()
        if rate:
            parts.append(f"{rate:.3g} {self.unit}/s")
            if self.total and self.done < self.total:
                parts.append(f"ETA {format_seconds((self.total - self.done) / rate)}")
        return f"{self.what}: " + ", ".join(parts)

    def _print(self):
        print(self.text(), file=self.stream or sys.stderr, flush=True)
        self.lines += 1
        self._last_print = self.clock()

    def update(self, count=1):
        """`count` more items are done; prints when `interval` seconds passed since the last line."""
        self.done += count
        now = self.clock()
        if self._first is None:
            self._first = (now, self.done)
            self._last_print = now  # the first line comes one interval in (short loops stay quiet)
            if self.interval == 0:
                self._print()
            return
        if now - self._last_print >= self.interval:
            self._print()

    def close(self):
        """Prints the final line (if anything was printed before, or the loop took over one interval)."""
        if self.closed:
            return
        self.closed = True
        if self.lines or (self._first is not None and self.clock() - self._first[0] >= self.interval):
            self._print()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()
        return False


class CountingStep:
    """Wraps a step callable (Keras step function, TFLiteStep, ...) to count every call on a Progress."""

    def __init__(self, step, progress):
        self.step, self.progress = step, progress

    def __call__(self, **inputs):
        out = self.step(**inputs)
        self.progress.update()
        return out
