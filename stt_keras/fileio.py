"""File helpers shared by training (checkpoints), export (manifests) and the kernel cache.

Plain Python, no TensorFlow: a checksum of a file, and fsync of a folder so that a rename
into it survives a power cut.
"""

import hashlib
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
