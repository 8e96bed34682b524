"""stt_keras.utils.fileio.atomic_file: the one way files are written atomically (checkpoints, caches, labels, kernels)."""

import errno
import json
import os

import pytest

from stt_keras.utils import fileio


def test_atomic_file_replaces_the_file_only_when_the_writer_succeeds(tmp_path):
    target = tmp_path / "data.json"
    target.write_text("old")
    with fileio.atomic_file(str(target), suffix=".json") as tmp:
        assert os.path.dirname(tmp) == str(tmp_path)  # same folder: the rename is atomic
        assert tmp.endswith(".json") and os.path.basename(tmp) == f".data.json.tmp-{os.getpid()}.json"
        with open(tmp, "w") as f:
            f.write("new")
        assert target.read_text() == "old"  # untouched until the writer is done
    assert target.read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["data.json"]


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_writer_leaves_the_old_file_and_no_temporary(tmp_path, error):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")
    with pytest.raises(type(error)):
        with fileio.atomic_file(str(target)) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise error
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["data.bin"]


def test_a_writer_that_writes_nothing_fails_and_leaves_nothing(tmp_path):
    target = tmp_path / "absent.bin"
    with pytest.raises(FileNotFoundError):
        with fileio.atomic_file(str(target)):
            pass  # nothing to commit is an error, not an empty file
    assert os.listdir(tmp_path) == []


def test_atomic_write_bytes_and_json(tmp_path):
    fileio.atomic_write_bytes(str(tmp_path / "b"), b"\x00\x01")
    assert (tmp_path / "b").read_bytes() == b"\x00\x01"
    fileio.atomic_write_json(str(tmp_path / "j.json"), {"a": [1, 2.5]})
    assert json.loads((tmp_path / "j.json").read_text()) == {"a": [1, 2.5]}
    with pytest.raises(ValueError):  # NaN is not JSON: refused before anything is written
        fileio.atomic_write_json(str(tmp_path / "j.json"), {"a": float("nan")})
    assert json.loads((tmp_path / "j.json").read_text()) == {"a": [1, 2.5]}
    assert sorted(os.listdir(tmp_path)) == ["b", "j.json"]


def test_the_training_callbacks_names_are_the_library_writers():
    from stt_keras.training import callbacks

    assert callbacks.atomic_write_bytes is fileio.atomic_write_bytes
    assert callbacks.atomic_write_json is fileio.atomic_write_json
    assert callbacks._TMP.match(f".chunk-000001.weights.h5.tmp-{os.getpid()}.weights.h5")


def test_one_checksum_rule_for_the_edge_demo_and_the_exporter(tmp_path):
    import hashlib

    from stt_edge_demo import runners
    from stt_keras.export import parity

    model = tmp_path / "m.tflite"
    model.write_bytes(b"model bytes")
    good = hashlib.sha256(b"model bytes").hexdigest()
    assert parity.ChecksumError is runners.ChecksumError and issubclass(parity.ChecksumError, (ValueError, runners.ModelError))
    assert parity.verify_checksum is runners.verify_checksum  # one file check, one signature
    assert parity.verify_checksum(str(model), good.upper()) == b"model bytes"  # the bytes that were hashed
    assert parity.verify_checksum(str(model), None) == b"model bytes"  # nothing recorded: nothing to check
    assert runners.read_verified(str(model), {"sha256": good}) == b"model bytes"
    with pytest.warns(DeprecationWarning, match="read_verified"):  # the older (path, metadata) call still answers
        assert runners.verify_checksum(str(model), {"sha256": good.upper()}) == b"model bytes"
    with pytest.raises(runners.ModelError, match="records no sha256"), pytest.warns(DeprecationWarning):
        runners.verify_checksum(str(model), {}, False)
    model.write_bytes(b"model bytez")  # damaged after export
    with pytest.raises(parity.ChecksumError) as exporter:
        parity.verify_checksum(str(model), good)
    with pytest.raises(runners.ChecksumError) as demo:
        runners.read_verified(str(model), {"sha256": good})
    for error in (exporter.value, demo.value):
        assert f"model {model} does not match the SHA-256" in str(error)
        assert str(error).endswith("the file was modified or damaged after export; re-export it.")
    assert "m.json" in str(demo.value) and "recorded at export" in str(exporter.value)
    with pytest.raises(parity.ChecksumError, match=r"model \(TFLite bytes\) does not match"):
        parity.TFLiteStep(b"model bytez", expected_sha256=good)
