"""The native kernel cache loads only what this user built there (issue 14: a planted .so ran its code)."""

import hashlib
import os
import subprocess
import sys

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}

PLANTED_C = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
    const char *marker = getenv("PLANTED_MARKER");
    if (marker) { FILE *f = fopen(marker, "a"); if (f) { fputs("ran\n", f); fclose(f); } }
}
int not_an_op(void) { return 0; }
"""

SCRIPT = r"""
import hashlib, os, shutil, sys, warnings
import numpy as np
from stt_keras import kernels
from stt_keras.layers import SparseTemporalTransformer

planted, root = sys.argv[1], sys.argv[2]

def plant(cache, sidecar=True, mode=0o644, dir_mode=0o700, marker=True):
    os.environ["STT_KERAS_CACHE"] = cache
    os.environ["PLANTED_MARKER"] = os.path.join(root, "marker") if marker else ""
    os.makedirs(cache, exist_ok=True)
    os.chmod(cache, dir_mode)
    path = kernels._library_path()
    shutil.copy(planted, path)
    os.chmod(path, mode)
    if sidecar:
        open(path + ".sha256", "w").write(hashlib.sha256(open(path, "rb").read()).hexdigest())
        os.chmod(path + ".sha256", 0o644)

for case in ("no-checksum", "group-writable", "world-writable-folder", "wrong-checksum", "lacks-ops"):
    kernels._state.update(module=None, status="not loaded yet")
    cache = os.path.join(root, case)
    if case == "no-checksum":
        plant(cache, sidecar=False)
    elif case == "group-writable":
        plant(cache, mode=0o664)
    elif case == "world-writable-folder":
        plant(cache, dir_mode=0o777)
    elif case == "wrong-checksum":
        plant(cache)
        open(kernels._library_path() + ".sha256", "w").write("0" * 64)
    else:  # a library with a valid record that is simply not ours: loads, has no ops
        plant(cache, marker=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        use = kernels.use_native()
    print(case, "USE_NATIVE", use, "|", kernels.native_status().replace("\n", " "), "|",
          " / ".join(str(w.message) for w in caught).replace("\n", " "))
layer = SparseTemporalTransformer(num_key_frames=1, num_heads=2, neighborhood_radius=1)
out = layer(np.ones((1, 4, 4, 16), np.float32), np.ones((1, 1, 4, 4, 16), np.float32))
print("FINITE", bool(np.isfinite(out.numpy()).all()))
"""


def test_planted_or_unverifiable_libraries_are_never_loaded(tmp_path):
    source = tmp_path / "planted.c"
    source.write_text(PLANTED_C)
    planted = tmp_path / "planted.so"
    subprocess.run(["gcc", "-shared", "-fPIC", str(source), "-o", str(planted)], check=True)
    env = {**ENV, "CXX": str(tmp_path / "no-such-compiler")}  # a rebuild cannot succeed: nothing else can be loaded
    env.pop("STT_KERAS_NATIVE", None)  # the loader's checks are tested even where the suite runs without the kernels
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(planted), str(tmp_path)], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = {line.split(" ")[0]: line for line in result.stdout.splitlines()}
    assert not (tmp_path / "marker").exists(), "the planted library's code ran"
    assert "checksum file" in lines["no-checksum"] and "is missing" in lines["no-checksum"]
    assert "writable by group or others" in lines["group-writable"]
    assert "cache folder" in lines["world-writable-folder"] and "writable by group or others" in lines["world-writable-folder"]
    assert "does not match the SHA-256" in lines["wrong-checksum"]
    assert "lacks the ops" in lines["lacks-ops"] and "pure-TF path" in lines["lacks-ops"]
    for case in ("no-checksum", "group-writable", "world-writable-folder", "wrong-checksum", "lacks-ops"):
        assert "USE_NATIVE False" in lines[case], lines[case]
    assert "FINITE True" in result.stdout


def test_a_build_records_its_checksum_with_safe_modes(tmp_path):
    """What the cache holds after a real build (uses the compiled library of this machine's cache if present)."""
    from stt_keras import kernels

    path = kernels._library_path()
    if kernels.load() is None:
        import pytest

        pytest.skip(f"native library unavailable here: {kernels.native_status()}")
    assert kernels._verify(path) is None
    assert open(path + ".sha256").read().strip() == hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert not os.stat(path).st_mode & 0o022 and os.stat(path).st_uid == os.getuid()


def test_the_march_switch_names_the_target_and_keys_the_cache(monkeypatch):
    """STT_KERAS_NATIVE_MARCH compiles for another CPU profile: its own cache entry; a bad name is refused."""
    from stt_keras import kernels

    monkeypatch.delenv("STT_KERAS_NATIVE_MARCH", raising=False)
    native = kernels._library_path()
    assert kernels._flag_sets()[0][0] == "-march=native"
    monkeypatch.setenv("STT_KERAS_NATIVE_MARCH", "x86-64-v3")
    assert kernels._flag_sets() == [["-march=x86-64-v3", *kernels._FLAGS]]
    assert kernels._library_path() != native
    monkeypatch.setenv("STT_KERAS_NATIVE_MARCH", "native -o /tmp/x")
    import pytest

    with pytest.raises(RuntimeError, match="not a -march name"):
        kernels._library_path()


def test_the_cache_key_covers_every_source_and_header(tmp_path, monkeypatch):
    """Editing any file the library is built from gives it a new cache entry (no stale library is reused); every
    source and header of the kernels folder is built from and installed with the package."""
    import configparser
    import fnmatch
    import shutil

    from stt_keras.kernels import build

    folder = os.path.dirname(build.SOURCES[0])
    on_disk = {name for name in os.listdir(folder) if name.endswith((".cc", ".h"))}
    assert on_disk == {os.path.basename(name) for name in (*build.SOURCES, *build.HEADERS)}
    config = configparser.ConfigParser()
    config.read(os.path.join(os.path.dirname(__file__), "..", "setup.cfg"))
    patterns = [p.strip() for p in config["options.package_data"]["stt_keras.kernels"].split(",")]
    assert all(any(fnmatch.fnmatch(name, p) for p in patterns) for name in on_disk), patterns

    copies = {}
    for name in (*build.SOURCES, *build.HEADERS):
        copies[name] = str(tmp_path / os.path.basename(name))
        shutil.copy(name, copies[name])
    monkeypatch.setattr(build, "SOURCES", tuple(copies[name] for name in build.SOURCES))
    monkeypatch.setattr(build, "HEADERS", tuple(copies[name] for name in build.HEADERS))
    seen = {build.library_path()}
    for copy in copies.values():
        with open(copy, "a") as f:
            f.write("\n// edited\n")
        seen.add(build.library_path())
    assert len(seen) == 1 + len(copies)
