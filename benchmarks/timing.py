"""The one timing helper every benchmark uses: median of repeated runs after warm-up, alone or interleaved."""

import statistics
import time


def timeit(fn, repeats, warmup=1, clock=time.perf_counter):
    """Median seconds of `fn()` over `repeats` runs, after `warmup` untimed runs. `clock`: wall time by default;
    time.process_time counts this process's CPU time (all its threads), which other jobs' load moves less."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def interleaved_rounds(runs, rounds, repeats, clock=time.perf_counter):
    """{name: [`timeit` of the run, one per round]} for {name: zero-argument callable}: the runs take turns in
    every round (each with its own warm-up), so a shared machine's load moves them together and the ratio within a
    round is what to compare."""
    medians = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            medians[name].append(timeit(fn, repeats, clock=clock))
    return medians
