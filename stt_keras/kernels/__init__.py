"""The native CPU kernels of the STT block, built on first use.

`windowed_attention.cc` is a TensorFlow custom op library with two ops:
`SttWindowedAttention`, the windowed attention of the selected queries only,
with scores kept in registers and cache, and `SttNsmScore`, the NSM score of
every point (docs/models.md, "Two implementations of the sparse kernels"). It is compiled here, the first time it is needed, with the
C++ compiler and the flags of the installed TensorFlow (`tf.sysconfig`), into a
per-user cache (`$STT_KERAS_CACHE`, default `~/.cache/stt_keras`), keyed by the
source, the compiler flags, the TensorFlow version and the machine; a compiled
library is reused.

It is compiled for this machine's CPU (`-march=native`). `STT_KERAS_NATIVE_MARCH`
names another `-march` target, e.g. `x86-64-v3` (AVX2 and FMA, no AVX-512) to run
the code a narrower CPU would run. With `-march=native` on a CPU with AVX512-FP16,
that extension is left out (`-mno-avx512fp16`): the Eigen headers of TensorFlow do
not compile with it under GCC 12, and the kernels compute in float32 only; a
compiler that does not know the flag gets a second try without it.

When the op is used (`use_native()`): on a machine without GPUs, outside XLA
(`jit_compile=True` traces the pure-TF path), and never while exporting (a
SavedModel or TFLite model must not depend on this library: SavedModel saving
and everything under `portable_ops()` take the pure-TF path). Set
`STT_KERAS_NATIVE=0` to never use it. If it cannot be built (no compiler, say),
the pure-TF path runs and `native_status()` says why.

A cached library is only loaded (its code runs in this process) after checks
like ssh's on its keys: the cache folder and the library are owned by the
current user and not writable by group or others, and the library's SHA-256
equals the one recorded next to it (`.so.sha256`) when it was built here. A
library that fails a file check is rebuilt; a cache folder that fails (someone
else's, or group/world-writable) is not used at all. A library that loads but
lacks the two ops falls back to the pure-TF path with a warning.
"""

import contextlib
import hashlib
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import tensorflow as tf

from stt_keras.fileio import sha256_file

_HERE = os.path.dirname(__file__)
# One library from every op's source; the header is listed too, for the cache key.
_SOURCES = tuple(os.path.join(_HERE, name) for name in ("windowed_attention.cc", "nsm_score.cc"))
_HEADERS = (os.path.join(_HERE, "simd.h"),)
_FLAGS = ["-O3", "-fno-math-errno", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math", "-shared",
          "-fPIC", "-w"]
_OPS = ("stt_windowed_attention", "stt_nsm_score")
BUILD_SECONDS = 15  # typical compile time on 2 cores (README, Dependencies)
_lock = threading.Lock()
_state = {"module": None, "status": "not loaded yet"}
_portable = threading.local()


def _cpu_signature():
    """The CPU's feature flags: -march=native code is only reused on the same kind of CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor()


def _march():
    """The -march target: `$STT_KERAS_NATIVE_MARCH` (a name like x86-64-v3), default `native`."""
    march = os.environ.get("STT_KERAS_NATIVE_MARCH", "") or "native"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}", march):
        raise RuntimeError(f"STT_KERAS_NATIVE_MARCH={march!r} is not a -march name (like native or x86-64-v3)")
    return march


def _flag_sets():
    """The compiler flags to try, in order (see the module docstring for the AVX512-FP16 exception)."""
    base = [f"-march={_march()}", *_FLAGS]
    if _march() == "native" and "avx512_fp16" in _cpu_signature().split():
        return [[*base, "-mno-avx512fp16"], base]
    return [base]


def _library_path():
    source = b""
    for name in (*_SOURCES, *_HEADERS):
        with open(name, "rb") as f:
            source += os.path.basename(name).encode() + b"\0" + f.read()
    key = hashlib.sha256(source + " ".join(_flag_sets()[0]).encode() + tf.__version__.encode()
                         + platform.machine().encode() + _cpu_signature().encode()).hexdigest()[:16]
    cache = os.environ.get("STT_KERAS_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "stt_keras"))
    return os.path.join(cache, f"stt_kernels-{key}.so")


def _owner_and_mode_problem(path, what):
    """Why `path` must not be trusted (not ours, group/world-writable, a link), or None."""
    st = os.lstat(path)
    if os.path.islink(path):
        return f"{what} {path} is a symbolic link"
    if st.st_uid != os.getuid():
        return f"{what} {path} is owned by uid {st.st_uid}, not by you (uid {os.getuid()})"
    if st.st_mode & 0o022:
        return f"{what} {path} is writable by group or others (mode {oct(st.st_mode & 0o777)})"
    return None


def _secure_cache(folder):
    """Creates the cache folder (mode 0700) if needed; RuntimeError if it is not safe to load code from."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    problem = _owner_and_mode_problem(folder, "cache folder")
    if problem:
        raise RuntimeError(f"{problem}; not loading or building native code there (fix it, or set STT_KERAS_CACHE)")


def _verify(path):
    """None if the cached library at `path` may be loaded, else why not."""
    if not os.path.lexists(path):
        return "not built yet"
    sidecar = path + ".sha256"
    for candidate, what in ((path, "library"), (sidecar, "checksum file")):
        if not os.path.lexists(candidate):
            return f"{what} {candidate} is missing"
        problem = _owner_and_mode_problem(candidate, what)
        if problem:
            return problem
    with open(sidecar) as f:
        expected = f.read().strip()
    if sha256_file(path) != expected:
        return f"library {path} does not match the SHA-256 recorded when it was built"
    return None


def _build(path):
    """Compiles the op into `path` with the first flag set that builds (`_flag_sets()`)."""
    errors = []
    for flags in _flag_sets():
        try:
            return _build_with(path, flags)
        except RuntimeError as error:
            errors.append(str(error))
    raise RuntimeError("\n".join(errors))


def _build_with(path, flags):
    """Compiles the op into `path` atomically (temporary file, then rename) and records its SHA-256 beside it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    compiler = os.environ.get("CXX", "g++")
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
    os.close(fd)
    fd, tmp_sum = tempfile.mkstemp(suffix=".sha256", dir=os.path.dirname(path))
    os.close(fd)
    command = [compiler, *flags, *_SOURCES, "-o", tmp, *tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags()]
    try:
        try:
            result = subprocess.run(command, capture_output=True, text=True)
        except OSError as error:
            raise RuntimeError(f"cannot run the compiler {compiler}: {error}") from None
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} {' '.join(flags[:2])} failed:\n{result.stderr[-2000:]}")
        os.chmod(tmp, 0o755)  # whatever the umask: never group/world-writable
        with open(tmp_sum, "w") as f:
            f.write(sha256_file(tmp) + "\n")
        os.chmod(tmp_sum, 0o644)
        os.replace(tmp, path)  # the library first: a kill in between leaves a stale checksum, i.e. a rebuild
        os.replace(tmp_sum, path + ".sha256")
    finally:
        for leftover in (tmp, tmp_sum):
            if os.path.exists(leftover):
                os.remove(leftover)


def load():
    """The compiled op module, or None (see `native_status()`)."""
    with _lock:
        if _state["module"] is not None or _state["status"] != "not loaded yet":
            return _state["module"]
        if os.environ.get("STT_KERAS_NATIVE", "1") == "0":
            _state["status"] = "disabled by STT_KERAS_NATIVE=0"
            return None
        try:
            path = _library_path()
            _secure_cache(os.path.dirname(path))
            problem = _verify(path)
            if problem is not None:
                if problem != "not built yet":
                    warnings.warn(f"stt_keras: not loading the cached native library: {problem}; rebuilding it")
                # The first step of a run waits for this: say why (once per machine and TensorFlow version).
                print(f"stt_keras: compiling the native STT kernels (once, ~{BUILD_SECONDS} s) into {os.path.dirname(path)}",
                      file=sys.stderr, flush=True)
                start = time.monotonic()
                _build(path)
                print(f"stt_keras: native STT kernels compiled in {time.monotonic() - start:.0f} s", file=sys.stderr,
                      flush=True)
                problem = _verify(path)
                if problem is not None:
                    raise RuntimeError(f"the rebuilt library failed its check: {problem}")
            module = tf.load_op_library(path)
            missing = [op for op in _OPS if not hasattr(module, op)]
            if missing:
                raise RuntimeError(f"{path} loads but lacks the ops {missing}")
            _state["module"] = module
            _state["status"] = f"loaded from {path} (-march={_march()})"
        except (OSError, RuntimeError, tf.errors.NotFoundError) as e:
            _state["status"] = f"unavailable: {e}"
            # One line: the compiler's full output is in native_status().
            reason = next((line.strip() for line in str(e).splitlines() if "error" in line), str(e).splitlines()[0])
            warnings.warn(f"stt_keras: native windowed attention unavailable, using the pure-TF path ({reason[:300]}; "
                          "stt_keras.kernels.native_status() has the details)")
        return _state["module"]


def native_status():
    """Why the native kernel is or is not in use (a string)."""
    load()
    return _state["status"]


@contextlib.contextmanager
def portable_ops():
    """Within this block, layers trace only standard TF ops (for exported models)."""
    previous = getattr(_portable, "on", False)
    _portable.on = True
    try:
        yield
    finally:
        _portable.on = previous


def _in_xla_or_save_context():
    try:  # private TF APIs; if they move, fall back to the portable path
        from tensorflow.python.framework import ops
        from tensorflow.python.ops import control_flow_util
        from tensorflow.python.saved_model import save_context
    except ImportError:
        return True
    if save_context.in_save_context():
        return True
    return not tf.executing_eagerly() and control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph())


def exporting():
    """Whether the graph being traced is for export (inside `portable_ops()`)."""
    return getattr(_portable, "on", False)


def use_native():
    """Whether the layer being traced (or run eagerly) should call the native op now."""
    if getattr(_portable, "on", False) or _in_xla_or_save_context():
        return False
    if tf.config.list_logical_devices("GPU"):
        return False  # CPU kernel only: on GPU machines the pure-TF path stays on the GPU
    return load() is not None
