"""The native CPU kernels of the STT block: loading them, and when they may be used.

Two TensorFlow custom ops, one source file each, compiled together into one
library: `SttWindowedAttention` (`windowed_attention.cc`), the windowed
attention of the selected queries only, with scores kept in registers and cache,
and `SttNsmScore` (`nsm_score.cc`), the NSM score of every point; `simd.h` holds
the SIMD helpers both use and `op_common.h` the rest they share, such as the
argument checks (docs/models.md, "Two implementations of the sparse kernels").
`build.py` compiles the library the first time it is needed into a per-user
cache and checks a cached library before it is loaded (its owner, modes and
recorded SHA-256).

When the ops are used (`use_native()`): on a machine without GPUs, outside XLA
(`jit_compile=True` traces the pure-TF path), and never while exporting (a
SavedModel or TFLite model must not depend on this library: SavedModel saving
and everything under `portable_ops()` take the pure-TF path). Set
`STT_KERAS_NATIVE=0` to never use them. If the library cannot be built (no
compiler, say), the pure-TF path runs and `native_status()` says why. A library
that fails a file check is rebuilt; a cache folder that fails (someone else's,
or group/world-writable) is not used at all. A library that loads but lacks the
two ops falls back to the pure-TF path with a warning.
"""

import contextlib
import os
import sys
import threading
import time
import warnings

import tensorflow as tf

from stt_keras.kernels import build
from stt_keras.kernels.build import BUILD_SECONDS

_OPS = ("stt_windowed_attention", "stt_nsm_score")
_lock = threading.Lock()
_state = {"module": None, "status": "not loaded yet"}
_portable = threading.local()

# Private aliases of the builder's names, which tests and scripts use.
_FLAGS = build.FLAGS
_flag_sets = build.flag_sets
_library_path = build.library_path
_verify = build.verify


# `load` and `use_native` are called while a layer's call is traced: plain Python that decides which ops to trace and
# may touch files (the cache folder's os.makedirs, the compiler). AutoGraph must run them as they are, not convert
# them and what they call (it cannot, and says so: "AutoGraph could not transform <function makedirs>").
@tf.autograph.experimental.do_not_convert
def load():
    """The compiled op module, or None (see `native_status()`)."""
    with _lock:
        if _state["module"] is not None or _state["status"] != "not loaded yet":
            return _state["module"]
        if os.environ.get("STT_KERAS_NATIVE", "1") == "0":
            _state["status"] = "disabled by STT_KERAS_NATIVE=0"
            return None
        try:
            path = build.library_path()
            build.secure_cache(os.path.dirname(path))
            problem = build.verify(path)
            if problem is not None:
                if problem != "not built yet":
                    warnings.warn(f"stt_keras: not loading the cached native library: {problem}; rebuilding it")
                # The first step of a run waits for this: say why (once per machine and TensorFlow version).
                print(f"stt_keras: compiling the native STT kernels (once, ~{BUILD_SECONDS} s) into {os.path.dirname(path)}",
                      file=sys.stderr, flush=True)
                start = time.monotonic()
                build.build(path)
                print(f"stt_keras: native STT kernels compiled in {time.monotonic() - start:.0f} s", file=sys.stderr,
                      flush=True)
                problem = build.verify(path)
                if problem is not None:
                    raise RuntimeError(f"the rebuilt library failed its check: {problem}")
            module = tf.load_op_library(path)
            missing = [op for op in _OPS if not hasattr(module, op)]
            if missing:
                raise RuntimeError(f"{path} loads but lacks the ops {missing}")
            _state["module"] = module
            _state["status"] = f"loaded from {path} (-march={build.march()})"
        except (OSError, RuntimeError, tf.errors.NotFoundError) as e:
            _state["status"] = f"unavailable: {e}"
            # One line: the compiler's full output is in native_status().
            reason = next((line.strip() for line in str(e).splitlines() if "error" in line), str(e).splitlines()[0])
            warnings.warn(f"stt_keras: native STT kernels unavailable, using the pure-TF path ({reason[:300]}; "
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


@tf.autograph.experimental.do_not_convert
def use_native():
    """Whether the layer being traced (or run eagerly) should call the native op now."""
    if getattr(_portable, "on", False) or _in_xla_or_save_context():
        return False
    if tf.config.list_logical_devices("GPU"):
        return False  # CPU kernel only: on GPU machines the pure-TF path stays on the GPU
    return load() is not None
