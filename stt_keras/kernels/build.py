"""Building the native kernel library: compiler flags, the cache folder and its checks.

Every op's source (`SOURCES`, one op per file) is compiled with the shared headers
(`HEADERS`) into one TensorFlow custom-op library, with the C++ compiler (`$CXX`,
default `g++`) and the flags of the installed TensorFlow (`tf.sysconfig`; its
headers are system headers, `-isystem`, so that `-Wall -Wextra` speaks of our
sources only), into a per-user cache (`$STT_KERAS_CACHE`, default
`~/.cache/stt_keras`). The library's name is keyed by every source and header,
the compiler flags, the TensorFlow version and the machine: a compiled library
is reused, and an edit to any file builds a new one. The sources compile in
parallel, one compiler each, then link.

It is compiled for this machine's CPU (`-march=native`). `STT_KERAS_NATIVE_MARCH`
names another `-march` target, e.g. `x86-64-v3` (AVX2 and FMA, no AVX-512) to run
the code a narrower CPU would run. With `-march=native` on a CPU with AVX512-FP16,
that extension is left out (`-mno-avx512fp16`): the Eigen headers of TensorFlow do
not compile with it under GCC 12, and the kernels compute in float32 only; a
compiler that does not know the flag gets a second try without it.

A cached library may only be loaded (its code runs in the process) after checks
like ssh's on its keys (`verify`): the cache folder and the library are owned by
the current user and not writable by group or others, and the library's SHA-256
equals the one recorded next to it (`.so.sha256`) when it was built here.
"""

import hashlib
import os
import platform
import re
import subprocess

import tensorflow as tf

from stt_keras.utils.fileio import atomic_file, sha256_file

_HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = tuple(os.path.join(_HERE, name) for name in ("windowed_attention.cc", "nsm_score.cc"))
HEADERS = tuple(os.path.join(_HERE, name) for name in ("simd.h", "op_common.h"))
# -Wno-psabi: below AVX-512 (e.g. x86-64-v3), GCC says at each helper of simd.h that takes or returns a 16-float
# vector that its ABI differs from AVX-512 code's. Those vectors never cross the library's boundary, and all
# of its sources are compiled with the same flags. (A pragma in the header cannot silence GCC's note.)
FLAGS = ["-O3", "-fno-math-errno", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math", "-shared",
         "-fPIC", "-Wall", "-Wextra", "-Wno-psabi"]
BUILD_SECONDS = 15  # typical compile time on 2 cores (README, Dependencies)


def cpu_signature():
    """The CPU's feature flags: -march=native code is only reused on the same kind of CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor()


def march():
    """The -march target: `$STT_KERAS_NATIVE_MARCH` (a name like x86-64-v3), default `native`."""
    target = os.environ.get("STT_KERAS_NATIVE_MARCH", "") or "native"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}", target):
        raise RuntimeError(f"STT_KERAS_NATIVE_MARCH={target!r} is not a -march name (like native or x86-64-v3)")
    return target


def flag_sets():
    """The compiler flags to try, in order (see the module docstring for the AVX512-FP16 exception)."""
    base = [f"-march={march()}", *FLAGS]
    if march() == "native" and "avx512_fp16" in cpu_signature().split():
        return [[*base, "-mno-avx512fp16"], base]
    return [base]


def library_path():
    """Where the library for these sources, flags, TensorFlow and CPU is cached."""
    source = b""
    for name in (*SOURCES, *HEADERS):
        with open(name, "rb") as f:
            source += os.path.basename(name).encode() + b"\0" + f.read()
    key = hashlib.sha256(source + " ".join(flag_sets()[0]).encode() + tf.__version__.encode()
                         + platform.machine().encode() + cpu_signature().encode()).hexdigest()[:16]
    cache = os.environ.get("STT_KERAS_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "stt_keras"))
    return os.path.join(cache, f"stt_kernels-{key}.so")


def owner_and_mode_problem(path, what):
    """Why `path` must not be trusted (not ours, group/world-writable, a link), or None."""
    st = os.lstat(path)
    if os.path.islink(path):
        return f"{what} {path} is a symbolic link"
    if st.st_uid != os.getuid():
        return f"{what} {path} is owned by uid {st.st_uid}, not by you (uid {os.getuid()})"
    if st.st_mode & 0o022:
        return f"{what} {path} is writable by group or others (mode {oct(st.st_mode & 0o777)})"
    return None


def secure_cache(folder):
    """Creates the cache folder (mode 0700) if needed; RuntimeError if it is not safe to load code from."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    problem = owner_and_mode_problem(folder, "cache folder")
    if problem:
        raise RuntimeError(f"{problem}; not loading or building native code there (fix it, or set STT_KERAS_CACHE)")


def verify(path):
    """None if the cached library at `path` may be loaded, else why not."""
    if not os.path.lexists(path):
        return "not built yet"
    sidecar = path + ".sha256"
    for candidate, what in ((path, "library"), (sidecar, "checksum file")):
        if not os.path.lexists(candidate):
            return f"{what} {candidate} is missing"
        problem = owner_and_mode_problem(candidate, what)
        if problem:
            return problem
    with open(sidecar) as f:
        expected = f.read().strip()
    if sha256_file(path) != expected:
        return f"library {path} does not match the SHA-256 recorded when it was built"
    return None


def tensorflow_compile_flags():
    """TensorFlow's compile flags, its include folders as system headers (`-isystem`): warnings are about our code."""
    flags = []
    for flag in tf.sysconfig.get_compile_flags():
        flags += ["-isystem", flag[2:]] if flag.startswith("-I") else [flag]
    return flags


def build(path):
    """Compiles the library into `path` with the first flag set that builds (`flag_sets()`); the compiler's
    messages (warnings, on success)."""
    errors = []
    for flags in flag_sets():
        try:
            return _build_with(path, flags)
        except RuntimeError as error:
            errors.append(str(error))
    raise RuntimeError("\n".join(errors))


def _build_with(path, flags):
    """Compiles the library into `path` atomically (temporary file, then rename) and records its SHA-256 beside it.

    One compiler per source, all at once (each spends most of its time in TensorFlow's headers), then one link.
    """
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    compiler = os.environ.get("CXX", "g++")
    # The library is renamed into place first, its checksum second: a kill in between leaves a stale
    # checksum, i.e. a rebuild, never a library that loads unchecked.
    with atomic_file(path + ".sha256") as tmp_sum:
        with atomic_file(path, suffix=".so") as tmp:
            objects = [f"{tmp}.{i}.o" for i in range(len(SOURCES))]
            try:
                messages = _run_together(compiler, flags, [[*flags, "-c", source, "-o", obj, *tensorflow_compile_flags()]
                                                           for source, obj in zip(SOURCES, objects)])
                messages += _run_together(compiler, flags,
                                          [[*flags, *objects, "-o", tmp, *tf.sysconfig.get_link_flags()]])
            finally:
                for obj in objects:
                    if os.path.exists(obj):
                        os.remove(obj)
            os.chmod(tmp, 0o755)  # whatever the umask: never group/world-writable
            digest = sha256_file(tmp)
        with open(tmp_sum, "w") as f:
            f.write(digest + "\n")
        os.chmod(tmp_sum, 0o644)
    return messages


def _run_together(compiler, flags, commands):
    """Runs `compiler` once per argument list, all at the same time: their messages, or RuntimeError."""
    processes = []
    try:
        for arguments in commands:
            processes.append(subprocess.Popen([compiler, *arguments], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                              text=True))
    except OSError as error:
        for process in processes:
            process.kill()
            process.wait()
        raise RuntimeError(f"cannot run the compiler {compiler}: {error}") from None
    results = [(process.communicate()[1], process.returncode) for process in processes]
    failed = [stderr for stderr, code in results if code != 0]
    if failed:
        raise RuntimeError(f"{compiler} {' '.join(flags[:2])} failed:\n{failed[0][-2000:]}")
    return "".join(stderr for stderr, _ in results)
