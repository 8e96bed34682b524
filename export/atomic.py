"""Exports appear at their destination complete or not at all, and replace only earlier exports.

Rules (`check_destination`, called before anything is written):
  * `--out` may be missing, an empty folder, or a folder an earlier stt-export
    wrote: it holds `export_manifest.json` and nothing the manifest does not
    list (or, for exports older than the manifest, only export file names and
    an `export_report.json`). Anything else is refused, never deleted.
  * never the current folder or one of its parents, never a folder holding the
    input model.

Replacement (`atomic_directory`): the new export is written into a hidden
sibling `.NAME.partial-PID`, then swapped with `--out` in one atomic
`renameat2(RENAME_EXCHANGE)` (Linux); the old export then sits at the partial
path and is removed. Where the exchange is not available, two renames are used
with `.NAME.old-PID` in between; a kill between them leaves the old export at
that path and the next run puts it back (`recover`). Leftover `.NAME.partial-PID`
/ `.NAME.old-PID` folders of processes that no longer run are cleaned up by the
next export to the same destination.
"""

import contextlib
import ctypes
import ctypes.util
import errno
import fnmatch
import json
import os
import re
import shutil

from stt_keras import faults
from stt_keras.errors import UserError
from stt_keras.fileio import fsync_dir as _fsync_dir
from stt_keras.fileio import sha256_file  # noqa: F401  (part of this module's interface)

MANIFEST = "export_manifest.json"
MANIFEST_FORMAT = "stt-keras-export/1"
# What exports written before the manifest existed contain.
LEGACY_PATTERNS = ("saved_model", "stt_*.tflite", "stt_*.json", "stt_*.onnx", "export_report.json", "export_report.md")


def write_manifest(folder, extra=None):
    """Writes `export_manifest.json`: the SHA-256 of every file under `folder` (relative paths)."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in sorted(names):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if rel == MANIFEST:
                continue
            files[rel.replace(os.sep, "/")] = {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}
    manifest = {"format": MANIFEST_FORMAT, "files": dict(sorted(files.items())), **(extra or {})}
    with open(os.path.join(folder, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2)
    return manifest


def verify_manifest(folder):
    """[problems] of an export folder against its manifest (empty: every file is as exported)."""
    with open(os.path.join(folder, MANIFEST)) as f:
        manifest = json.load(f)
    problems = []
    for rel, entry in manifest["files"].items():
        path = os.path.join(folder, *rel.split("/"))
        if not os.path.isfile(path):
            problems.append(f"{rel} is missing")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{rel} does not match its SHA-256")
    return problems


def _is_within(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _top_level_of_manifest(manifest):
    return {rel.split("/")[0] for rel in manifest.get("files", {})} | {MANIFEST}


def check_destination(destination, protected=()):
    """Raises UserError unless `destination` may be replaced by a new export (see the module docstring).

    `protected`: paths (the input model) that must not be inside `destination`.
    """
    real = os.path.realpath(destination)
    if _is_within(os.getcwd(), real):
        raise UserError(f"--out {destination} is the current folder or one of its parents; "
                        "an export replaces its --out folder, so give a folder of its own (e.g. exports/NAME).")
    for path in protected:
        if path and _is_within(path, real):
            raise UserError(f"--out {destination} contains the input model {path}; "
                            "an export replaces its --out folder, so give a folder of its own (e.g. exports/NAME).")
    if not os.path.lexists(real):
        return
    if not os.path.isdir(real) or os.path.islink(destination):
        raise UserError(f"--out {destination} exists and is not a folder; refusing to replace it.")
    entries = sorted(os.listdir(real))
    if not entries:
        return
    manifest_path = os.path.join(real, MANIFEST)
    if os.path.isfile(manifest_path):
        try:
            with open(manifest_path) as f:
                manifest = json.load(f)
            known = _top_level_of_manifest(manifest) if manifest.get("format") == MANIFEST_FORMAT else None
        except (OSError, ValueError, AttributeError):
            known = None
        if known is None:
            raise UserError(f"--out {destination}: {MANIFEST} is not an stt-export manifest; refusing to replace the folder.")
        foreign = [e for e in entries if e not in known]
        if foreign:
            raise UserError(f"--out {destination} is an earlier export but also holds {foreign[:3]} that stt-export did "
                            "not write; move them out (or choose another --out): the export would delete them.")
        return
    foreign = [e for e in entries if not any(fnmatch.fnmatch(e, p) for p in LEGACY_PATTERNS)]
    if foreign or "export_report.json" not in entries:
        shown = foreign[:3] if foreign else entries[:3]
        raise UserError(f"--out {destination} is not empty and not an earlier stt-export folder (it holds {shown}); "
                        "refusing to replace it. Choose a new or empty folder.")


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
        _fsync_dir(root)  # its entries too: the files are found under their names after a power cut
    faults.point("export_before_swap")
    if os.path.isdir(destination) and not os.path.islink(destination) and _exchange(partial, destination):
        _fsync_dir(parent)
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
    _fsync_dir(parent)
    shutil.rmtree(old, ignore_errors=True)
