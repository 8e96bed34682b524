"""The shared progress helper: rate-limited lines with done/total, rate and ETA."""

import io

from stt_keras.utils.progress import CountingStep, Progress, format_seconds


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_lines_rate_and_eta_at_the_interval():
    clock, out = Clock(), io.StringIO()
    progress = Progress("stt-eval", total=100, unit="frames", interval=10, stream=out, clock=clock)
    progress.update()  # the first frame (tracing): the rate's origin, no line
    for _ in range(20):  # 20 frames in 8 s: no line yet (interval 10 s)
        clock.now += 0.4
        progress.update()
    assert out.getvalue() == ""
    for _ in range(5):  # 2 more seconds -> one line at 10 s
        clock.now += 0.4
        progress.update()
    lines = out.getvalue().splitlines()
    assert lines == ["stt-eval: 26/100 frames (26%), 2.5 frames/s, ETA 30 s"]  # 25 frames / 10 s; 74 / 2.5
    for _ in range(74):
        clock.now += 0.4
        progress.update()
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines[-1] == "stt-eval: 100/100 frames (100%), 2.5 frames/s"  # done: no ETA
    assert len(lines) == 1 + 29 // 10 + 1  # a line every 25 frames, then the final one


def test_short_loops_stay_quiet_and_zero_interval_prints_every_update(monkeypatch):
    clock, out = Clock(), io.StringIO()
    with Progress("x", total=3, stream=out, clock=clock) as progress:
        for _ in range(3):
            clock.now += 0.1
            progress.update()
    assert out.getvalue() == ""
    monkeypatch.setenv("STT_KERAS_PROGRESS_SECONDS", "0")
    progress = Progress("stt-export: parity", unit="steps", stream=out, clock=clock)
    step = CountingStep(lambda **inputs: {"sum": sum(inputs.values())}, progress)
    assert step(a=1, b=2) == {"sum": 3}
    clock.now += 2
    step(a=1)
    progress.close()
    assert out.getvalue().splitlines() == ["stt-export: parity: 1 steps", "stt-export: parity: 2 steps, 0.5 steps/s",
                                           "stt-export: parity: 2 steps, 0.5 steps/s"]


def test_format_seconds():
    assert [format_seconds(s) for s in (4.4, 65, 3600 * 2 + 60 * 5 + 7)] == ["4 s", "1 min 05 s", "2 h 05 min"]
