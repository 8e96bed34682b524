"""File helpers shared by training (checkpoints), export (manifests) and the kernel cache.

Plain Python, no TensorFlow: a checksum of a file, fsync of a folder so that a rename
into it survives a power cut, the one way to write a file atomically (`atomic_file`), and
what the commands need to refuse a folder they cannot write to (before any work) and to
name a full disk in one line. A folder written atomically: `stt_keras.export.atomic`.
"""

import contextlib
import errno
import hashlib
import json
import os


def sha256_file(path, chunk=1 << 20):
    """Hex SHA-256 of the file at `path`, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(path):
    """fsync a folder (its entries: a rename into it is durable); best effort where not supported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path, suffix=""):
    """Yields a temporary path beside `path` to write; on success it is fsynced and renamed over `path`.

    The file at `path` is either the old one or the complete new one, also after a kill or a
    power cut. On any failure (a full disk, an exception of the writer, Ctrl-C) the temporary
    file is removed and `path` is left untouched. The temporary name is `.NAME.tmp-PID` plus
    `suffix` (for writers that want an extension: ".keras", ".weights.h5", ".npz"); one writer
    of a given path at a time per process.
    """
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}{suffix}")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(folder)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def atomic_write_bytes(path, data):
    """Writes `data` (bytes) to `path` through `atomic_file`."""
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_json(path, data, indent=2):
    """Writes `data` as JSON (no NaN or infinity: they are not JSON) to `path` through `atomic_file`."""
    atomic_write_bytes(path, json.dumps(data, indent=indent, allow_nan=False).encode())


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def disk_full(error):
    """True if `error` reports a full disk (or quota, or file-size limit), whoever raised it.

    OSError from Python's own writes carries the errno; h5py (Keras weights) and
    TensorFlow (SavedModel, `tf.io`) raise their own types with the system's text.
    """
    if isinstance(error, OSError) and error.errno in _FULL:
        return True
    text = str(error)
    return any(s in text for s in ("No space left on device", "Disk quota exceeded", "File too large", "errno = 28"))


def read_only(error):
    """True if `error` is a write refused by a read-only file system or the folder's permissions."""
    if isinstance(error, OSError) and error.errno in _READ_ONLY:
        return True
    text = str(error)
    return any(s in text for s in ("Read-only file system", "Permission denied", "errno = 30", "errno = 13"))


def unwritable_reason(folder):
    """Why files cannot be created in `folder` (or, when it does not exist yet, in the nearest folder above it
    that does), as a short text; None when they can.

    Probes with a real temporary file, so a read-only mount, permissions and a full
    disk are all seen, also for root (whom permission bits do not stop).
    """
    import tempfile

    probe = os.path.abspath(folder)
    while not os.path.isdir(probe):
        if os.path.lexists(probe):
            return f"{probe} exists and is not a folder"
        probe = os.path.dirname(probe)
    try:
        fd, path = tempfile.mkstemp(prefix=".write-probe-", dir=probe)
    except OSError as error:
        return f"{probe}: {error.strerror or error}"
    try:
        os.write(fd, b"x")
    except OSError as error:
        return f"{probe}: {error.strerror or error}"
    finally:
        os.close(fd)
        os.remove(path)
    return None


def write_error_reason(error):
    """A short reason for a failed write: the system's own words ("No space left on device"), not a library's trace."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error)
    for phrase in ("No space left on device", "Disk quota exceeded", "File too large", "Read-only file system",
                   "Permission denied"):
        if phrase in text:
            return phrase
    return text.strip().splitlines()[0][:160] if text.strip() else type(error).__name__


def concerns(error, folder):
    """True if `error` names a path inside `folder` (its OSError filename, or the path in a library's message)."""
    folder = os.path.abspath(folder)
    names = [getattr(error, "filename", None), getattr(error, "filename2", None)]
    if any(isinstance(n, str) and (os.path.abspath(n) + os.sep).startswith(folder + os.sep) for n in names):
        return True
    return folder + os.sep in str(error) or str(error).rstrip().endswith(folder)
