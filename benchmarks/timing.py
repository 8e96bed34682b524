"""The one timing helper every benchmark uses: median of repeated runs after warm-up."""

import statistics
import time


def timeit(fn, repeats, warmup=1):
    """Median seconds of `fn()` over `repeats` runs, after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
