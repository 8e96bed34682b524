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

import fnmatch
import json
import os

from stt_keras.utils.errors import UserError
from stt_keras.utils.fileio import atomic_directory, recover  # noqa: F401  (the folder writer lives in the library)
from stt_keras.utils.fileio import sha256_file  # noqa: F401  (part of this module's interface)

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


