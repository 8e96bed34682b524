"""File helpers shared by training (checkpoints), export (manifests) and the kernel cache.

Plain Python, no TensorFlow: a checksum of a file, fsync of a folder so that a rename
into it survives a power cut, the one way to write a file atomically (`atomic_file`), and
what the commands need to refuse a folder they cannot write to (before any work) and to
name a full disk in one line; and a folder written atomically (`atomic_directory`: an export, a preset).
"""

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import re
import shutil

from stt_keras.utils import faults


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


# ---------------------------------------------------------------- folders
# The folder case of the atomic writes (an export, a preset): a sibling folder swapped in at once.

def _pid_alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(destination):
    """Puts back an export a killed run left at `.NAME.old-PID` and removes dead runs' leftovers.

    Returns a list of what was done (for a message).
    """
    destination = os.path.abspath(destination)
    parent, name = os.path.split(destination)
    if not os.path.isdir(parent):
        return []
    pattern = re.compile(r"^\." + re.escape(name) + r"\.(partial|old)-(\d+)$")
    done = []
    leftovers = []
    for entry in os.listdir(parent):
        m = pattern.match(entry)
        if m and not _pid_alive(int(m.group(2))):
            leftovers.append((m.group(1), entry))
    # An "old" folder with no destination is the previous export of a run killed between its two renames.
    for kind, entry in sorted(leftovers, key=lambda item: item[0] != "old"):
        path = os.path.join(parent, entry)
        if kind == "old" and not os.path.lexists(destination):
            os.rename(path, destination)
            done.append(f"restored {destination} from {entry}")
        else:
            shutil.rmtree(path, ignore_errors=True)
            done.append(f"removed {entry}")
    return done


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a, b):
    """Atomically swaps two paths (Linux renameat2 RENAME_EXCHANGE); False if the system cannot."""
    if os.environ.get("STT_KERAS_NO_RENAME_EXCHANGE"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), b)


@contextlib.contextmanager
def atomic_directory(destination):
    """Yields a temporary sibling folder; on success it replaces `destination` atomically.

    On any exception (or Ctrl-C) the temporary folder is removed and an existing
    `destination` is left untouched. A kill at any point leaves `destination`
    either the old export or the new one (see the module docstring).
    """
    destination = os.path.abspath(destination)
    parent, name = os.path.split(destination)
    os.makedirs(parent, exist_ok=True)
    recover(destination)
    partial = os.path.join(parent, f".{name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    for root, _, files in os.walk(partial):
        for f in files:
            with open(os.path.join(root, f), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(root)  # its entries too: the files are found under their names after a power cut
    faults.point("export_before_swap")
    if os.path.isdir(destination) and not os.path.islink(destination) and _exchange(partial, destination):
        fsync_dir(parent)
        faults.point("export_after_swap")
        shutil.rmtree(partial, ignore_errors=True)  # now the previous export
        return
    if os.path.isdir(destination) and not os.listdir(destination):
        os.rmdir(destination)
    old = os.path.join(parent, f".{name}.old-{os.getpid()}")
    if os.path.lexists(destination):
        os.rename(destination, old)
        faults.point("export_between_renames")
    os.rename(partial, destination)
    fsync_dir(parent)
    shutil.rmtree(old, ignore_errors=True)
