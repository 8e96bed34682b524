"""Exports appear at their destination complete or not at all."""

import contextlib
import os
import shutil


@contextlib.contextmanager
def atomic_directory(destination):
    """Yields a temporary sibling folder; on success it replaces `destination` in two renames.

    On any exception (or Ctrl-C) the temporary folder is removed and an existing
    `destination` is left untouched.
    """
    destination = os.path.abspath(destination)
    parent, name = os.path.split(destination)
    os.makedirs(parent, exist_ok=True)
    partial = os.path.join(parent, f".{name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    old = os.path.join(parent, f".{name}.old-{os.getpid()}")
    if os.path.exists(destination):
        os.rename(destination, old)
    os.rename(partial, destination)
    shutil.rmtree(old, ignore_errors=True)
