"""Quiet runs: the native libraries' own log lines are dropped from the command's stderr and stdout.

TensorFlow, absl, oneDNN, LiteRT and ONNX Runtime write from C++ straight to
file descriptors 1 and 2, before and outside anything Python's logging
controls: "WARNING: All log messages before absl::InitializeLog() ...", the
`I0000 ... port.cc] oneDNN custom operations are on` lines, LiteRT's
accelerator registration and "INFO: Failed to load OpenCL library" (on stdout).
`filter_native_logs()` points both descriptors at pipes read by a forked filter
process that passes every line through except those of `NOISE`, and writes
them to the original destinations. The filter is a separate process so that
nothing is lost when the command dies (a crash message still gets through),
and it reads the pipes until every writer, child processes included, is gone
(the native libraries write until the very end of the process).

Lines pass unchanged and in order per stream; a progress bar that redraws one
line with carriage returns passes as it is. `--tf-logs` turns the filter off.
"""

import atexit
import os
import re
import signal
import sys

# Whole lines written by native libraries that tell a user nothing about their run.
NOISE = re.compile("|".join([
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"[IW]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] .*",  # absl INFO / WARNING lines (oneDNN, cudart stub, XLA, ...)
    r"E\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] failed call to cuInit.*",  # GPU probe without a driver
    r"E\d{4} [\d:.]+ +\d+ node_def_util\.cc:\d+\] NodeDef mentions attribute .* will be ignored\..*",  # converters
    r"INFO: .*",  # TFLite / LiteRT runtime notes (XNNPACK delegate, OpenCL library, accelerators)
    r"WARNING: \[\w+\.cc:\d+\] .*",  # LiteRT's own warnings ("NPU accelerator could not be loaded ...")
    r"(\x1b\[[0-9;]*m)?\d{4}-\d\d-\d\d [\d:.]+ \[[WI]:onnxruntime:.*",  # ONNX Runtime warnings and notes
    r"\[LiteRT\] .*|LiteRT: .*|.*\b(Registered|Registering|Loaded) (the )?(accelerator|delegate|dispatch).*",
    r"VERBOSE: .*|WARNING: Attempting to use a delegate that only supports static-sized tensors.*",
    r"WARNING:absl:.*",
    r"fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, output_inference_type: \w+",  # converter
    r"\[[\w,]+ @ 0x[0-9a-f]+\] .*",  # FFmpeg inside OpenCV ("[mov,mp4,... @ 0x55...] moov atom not found")
]))

_state = {}


def is_noise(line):
    """True for a line (without its end) that one of the native libraries logs on its own."""
    return NOISE.fullmatch(line.rstrip("\r\n")) is not None


def _filter(read_fd, write_fd):
    pending = b""
    while True:
        try:
            chunk = os.read(read_fd, 65536)
        except InterruptedError:
            continue
        except OSError:  # a pseudo-terminal whose last writer closed it (EIO)
            chunk = b""
        if not chunk:
            break
        pending += chunk
        lines = pending.split(b"\n")
        pending = lines.pop()
        out = [line + b"\n" for line in lines if not is_noise(line.decode("utf-8", "replace"))]
        if out:
            _write_all(write_fd, b"".join(out))
    if pending and not is_noise(pending.decode("utf-8", "replace")):
        _write_all(write_fd, pending)


def _write_all(fd, data):
    while data:
        try:
            data = data[os.write(fd, data):]
        except InterruptedError:
            continue
        except OSError:  # the reader went away (a closed pipe): nothing more to do
            return


def filter_native_logs():
    """Drops the native libraries' log lines from fds 1 and 2 for the rest of the process (idempotent).

    Call before TensorFlow is imported. Python's own sys.stdout/sys.stderr keep
    their buffering; both are flushed when the process ends.
    """
    if _state or not hasattr(os, "fork"):
        return
    sys.stdout.flush(), sys.stderr.flush()
    for fd in (1, 2):
        try:
            os.fstat(fd)
        except OSError:
            return
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    pipes = {fd: _channel(fd) for fd in (1, 2)}
    # A terminal's Ctrl-C goes to the whole process group: the filter ignores it (and SIGTERM) and passes on
    # what the command prints about it; it ends when the command's last writer is gone. The two signals are
    # blocked across the fork, so that one arriving before the filter ignores them cannot kill it.
    stop = {signal.SIGINT, signal.SIGTERM}
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    pid = os.fork()
    if pid == 0:  # the filter: one reader per stream (two threads), then exit
        try:
            import threading

            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

            for fd in (1, 2):
                os.close(pipes[fd][1])
            threads = [threading.Thread(target=_filter, args=(pipes[fd][0], saved[fd])) for fd in (1, 2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            os._exit(0)
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # a Ctrl-C that came meanwhile reaches the command now
    for fd in (1, 2):
        os.close(pipes[fd][0])
        os.dup2(pipes[fd][1], fd)
        os.close(pipes[fd][1])
    for original in saved.values():
        os.close(original)  # the filter holds its own copies
    _state.update(pid=pid)
    atexit.register(_finish)


def _channel(fd):
    """(read end, write end): a pseudo-terminal in raw mode when `fd` is a terminal (isatty stays true, so
    progress bars keep redrawing their line), else a pipe."""
    if os.isatty(fd):
        try:
            import tty

            master, slave = os.openpty()
            tty.setraw(slave)  # no newline translation, no echo
            return master, slave
        except (OSError, ImportError):
            pass
    return os.pipe()


def _finish():
    """Flushes Python's streams into the filter at exit.

    The descriptors stay on the pipes: the native libraries still write while the
    process ends (LiteRT's accelerator teardown runs after Python's exit handlers).
    The filter process ends when the last writer closes them, right after this one.
    """
    try:
        sys.stdout.flush(), sys.stderr.flush()
    except (OSError, ValueError):
        pass
