"""A real full or read-only file system for a test's commands: a tmpfs in a mount namespace of their own.

Used instead of injecting ENOSPC/EROFS where the point is what the real writers
(h5py, zipfile, TensorFlow's SavedModel, TensorBoard) raise when the disk is full.
"""

import functools
import os
import shutil
import subprocess


@functools.lru_cache(maxsize=None)
def can_mount_tmpfs():
    """A private mount namespace where a tmpfs can be mounted (root, or unprivileged user namespaces)."""
    if not shutil.which("unshare"):
        return False
    flags = ["-m"] if os.geteuid() == 0 else ["-r", "-m"]
    probe = subprocess.run(["unshare", *flags, "sh", "-c", "mount -t tmpfs -o size=1m tmpfs \"$(mktemp -d)\""], capture_output=True)
    return probe.returncode == 0


def on_tmpfs(env, folder, options, script):
    """Runs the shell `script` with a tmpfs (mount `options`) at `folder`, in a mount namespace of its own: a real full
    or read-only file system for the commands it runs, gone when it ends. Returns the CompletedProcess."""
    flags = ["-m"] if os.geteuid() == 0 else ["-r", "-m"]
    return subprocess.run(["unshare", *flags, "sh", "-c", f'mount -t tmpfs -o {options} tmpfs "{folder}" && {script}'],
                          env=env, capture_output=True, text=True)
