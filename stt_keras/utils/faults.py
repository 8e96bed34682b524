"""Deterministic fault injection for the crash-safety tests.

`point("after_weights")` does nothing unless the environment variable
STT_KERAS_FAULT names that point; then the process dies on the spot with
`os._exit(137)` (what a SIGKILL looks like to the parent: no `finally`, no
`atexit`, no flushing). Several points may be given, comma-separated;
`STT_KERAS_FAULT=name@N` dies the N-th time the point is reached (1-based).

Tests kill a run at a named point this way instead of relying on timing.
"""

import os

_counts = {}


def point(name):
    spec = os.environ.get("STT_KERAS_FAULT")
    if not spec:
        return
    for item in spec.split(","):
        target, _, nth = item.strip().partition("@")
        if target != name:
            continue
        _counts[name] = _counts.get(name, 0) + 1
        if _counts[name] == int(nth or 1):
            os._exit(137)
