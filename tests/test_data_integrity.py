"""Readers that never return wrong results: truncated images, missing frame folders, .PNG labels, numbering gaps.

Every case writes a few tiny files in tmp_path; the pre-flight scan's own cases are in test_data_scan.py.
"""

import os
import time

import cv2
import numpy as np
import pytest

from stt_keras.utils.errors import UserError

from stt_keras.data.files import read_frame, read_raw_label
from stt_keras.data.images import jpeg_problem, png_problem, read_image
from stt_keras.data.readers import camvid_samples, folder_samples, folder_sequences
from stt_keras.data.video import read_video_labels
from image_files import random_rgb, write


def noise(h=48, w=64, seed=0):
    return random_rgb(h, w, seed)


def truncate(path, keep):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:int(len(data) * keep)] if isinstance(keep, float) else data[:keep])
    return data


@pytest.mark.parametrize("keep", [0.5, 0.9, -2])
def test_truncated_jpeg_is_an_error_naming_the_file(tmp_path, keep):
    path = write(tmp_path / "frames" / "a" / "img_000.jpg", noise())
    whole = read_frame(path)
    data = truncate(path, keep if keep != -2 else len(open(path, "rb").read()) - 2)  # -2: only the EOI marker cut
    # OpenCV alone decodes it, grey-filled, without an error: the reason for the structure check.
    assert cv2.imread(path) is not None
    with pytest.raises(ValueError, match=r"img_000\.jpg: truncated JPEG"):
        read_frame(path)
    with open(path, "wb") as f:  # bytes after the end-of-image marker (camera trailers) are fine
        f.write(data + b"trailer after EOI")
    np.testing.assert_array_equal(read_frame(path), whole)


def test_jpeg_structure_walk_on_progressive_and_restart_markers(tmp_path):
    image = noise(40, 56)
    for params in ([cv2.IMWRITE_JPEG_PROGRESSIVE, 1], [cv2.IMWRITE_JPEG_RST_INTERVAL, 1], []):
        ok, encoded = cv2.imencode(".jpg", image, params)
        data = encoded.tobytes()
        assert jpeg_problem(data) is None
        for cut in (len(data) // 3, len(data) - 1):
            assert jpeg_problem(data[:cut]).startswith("truncated JPEG")


def test_truncated_and_damaged_png(tmp_path):
    path = write(tmp_path / "l.png", np.arange(48 * 64, dtype=np.uint32).reshape(48, 64).astype(np.uint8))
    data = open(path, "rb").read()
    assert png_problem(data) is None
    assert png_problem(data[:-12]).startswith("truncated PNG: the file ends")  # only IEND cut
    assert "runs past the end" in png_problem(data[:len(data) // 2])
    damaged = bytearray(data)
    damaged[60] ^= 0xFF  # inside IDAT
    assert "wrong CRC" in png_problem(bytes(damaged))
    truncate(path, -12 + len(data))
    with pytest.raises(ValueError, match=r"label .*l\.png: truncated PNG"):
        read_raw_label(path)


def test_empty_missing_and_foreign_files_are_named(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.png: the file is empty"):
        read_frame(str(empty))
    with pytest.raises(ValueError, match="nothere.png"):
        read_frame(str(tmp_path / "nothere.png"))
    text = tmp_path / "notes.jpg"
    text.write_bytes(b"hello, not an image")
    with pytest.raises(ValueError, match="notes.jpg: not an image OpenCV can decode"):
        read_image(str(text), cv2.IMREAD_COLOR, "frame")


def test_16_bit_and_colour_labels_are_refused_with_their_format(tmp_path):
    path = write(tmp_path / "l16.png", np.full((8, 8), 3, np.uint16))
    with pytest.raises(ValueError, match="l16.png is a 1-channel 16-bit image; labels must be single-channel 8-bit"):
        read_raw_label(path)
    path = write(tmp_path / "rgb.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="rgb.png is a 3-channel 8-bit image"):
        read_raw_label(path)


def folder_tree(root, sequences=("a",), frames=4, labelled=(3,), ext=".png", label_ext=".png"):
    for seq in sequences:
        for i in range(frames):
            write(os.path.join(root, "frames", seq, f"img_{i:03d}{ext}"), noise(16, 16, i))
        for i in labelled:
            write(os.path.join(root, "labels", seq, f"img_{i:03d}{label_ext}"), np.ones((16, 16), np.uint8))


def test_label_folder_without_its_frame_folder_is_named(tmp_path):
    root = str(tmp_path)
    folder_tree(root, ("a",))
    write(os.path.join(root, "labels", "b", "img_001.png"), np.ones((16, 16), np.uint8))  # frames/b missing (a typo)
    for lister in (lambda: folder_samples(root, 1), lambda: folder_sequences(root)):
        with pytest.raises(FileNotFoundError, match=r"labels/b has no frame folder .*frames/b"):
            lister()
    os.makedirs(os.path.join(root, "frames", "b"))  # there but empty
    with pytest.raises(FileNotFoundError, match=r"labels/b have no frames: .*frames/b holds no"):
        folder_sequences(root)


def test_upper_case_png_labels_are_read(tmp_path):
    """Labels saved as .PNG are labels: folder, CamVid and video label folders read them like .png."""
    root = str(tmp_path)
    folder_tree(root, ("a",), label_ext=".PNG")
    samples = folder_samples(root, 1)
    assert [os.path.basename(label) for _, label in samples] == ["img_003.PNG"]
    assert folder_sequences(root)[0][2] == {3: os.path.join(root, "labels", "a", "img_003.PNG")}
    write(os.path.join(root, "labels", "a", "img_003.png"), np.ones((16, 16), np.uint8))
    with pytest.raises(ValueError, match=r"Two labels for one frame: .*img_003\.PNG and .*img_003\.png"):
        folder_samples(root, 1)
    camvid = tmp_path / "camvid"
    for f in range(5):
        write(camvid / "frames" / "S" / f"S_{f:06d}.png", noise(16, 16, f))
    write(camvid / "labels" / "train" / "S_000004.PNG", np.ones((16, 16), np.uint8))
    assert len(camvid_samples(str(camvid), "train", 2)) == 1
    write(tmp_path / "video_labels" / "000002.PNG", np.ones((16, 16), np.uint8))
    assert list(read_video_labels(str(tmp_path / "video_labels"), 10, 3)) == [2]


def test_a_gap_in_a_huge_numbering_is_found_in_time_of_the_files(tmp_path):
    """img_0, img_1, img_5000000: the gap is reported at once, not after listing five million paths."""
    folder = tmp_path / "frames" / "s"
    for n in (0, 1, 5_000_000):
        write(folder / f"img_{n}.png", noise(8, 8, n % 7))
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=r"img_2\.png does not exist \(4999998 frames missing between "
                                                r"img_1\.png and img_5000000\.png, 4999998 in all"):
        folder_sequences(str(tmp_path))
    assert time.perf_counter() - start < 1.0
    os.remove(folder / "img_5000000.png")
    assert [os.path.basename(p) for p in folder_sequences(str(tmp_path))[0][1]] == ["img_0.png", "img_1.png"]


@pytest.mark.parametrize("command, argv", [
    ("train", ["--crop", "8x8"]), ("train", ["--synthetic-size", "8x64"]), ("eval", ["--synthetic-size", "8x8"]),
    ("export", ["--size", "8x8"]), ("export", ["--size", "15x256"]),
])
def test_frame_sizes_below_16_are_one_line_before_any_work(tmp_path, capsys, command, argv):
    """--size 8x8 was a traceback from stt-export's synthetic calibration frames after the model had loaded."""
    model = tmp_path / "m.keras"
    model.write_bytes(b"never read: the size is refused first")
    out = str(tmp_path / "out")
    if command == "train":
        from stt_keras.training import train as lib

        call = lambda: lib.main([*argv, "--out", out])  # noqa: E731
    elif command == "eval":
        from stt_keras.training import evaluate as lib

        call = lambda: lib.main(["--model", str(model), "--out", out, *argv])  # noqa: E731
    else:
        from stt_keras.export import cli as lib

        call = lambda: lib.main(["--model", str(model), "--out", out, *argv])  # noqa: E731
    with pytest.raises(SystemExit) as error:
        call()
    assert error.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "must be at least 16x16" in err[-1] and err[-1].startswith(f"stt-{command}: error: ")  # after argparse usage
    assert not any("Traceback" in line for line in err)
    assert not os.path.exists(out)


def test_train_function_refuses_a_crop_below_16(tmp_path):
    from stt_keras.training import train as train_lib

    with pytest.raises(UserError, match="--crop must be at least 16x16"):
        train_lib.train("stt_psp_tiny", out=str(tmp_path / "run"), crop=(8, 8))
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("bits", [8, 4, 2, 1])
def test_palette_labels_are_read_as_their_indices(tmp_path, bits):
    """A palette PNG (PIL's mode "P", Pascal VOC's and VSPW's masks) is a label of indices; OpenCV alone gives colours."""
    Image = pytest.importorskip("PIL.Image")  # Pillow comes with tensorboard; the readers do not use it

    from stt_keras.data import scan

    classes = 2 ** bits if bits < 8 else 125
    indices = (np.arange(24 * 40).reshape(24, 40) * 7 % classes).astype(np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette(list(np.random.default_rng(bits).integers(0, 256, 3 * 256, dtype=np.uint8)))
    path = str(tmp_path / "mask.png")
    image.save(path, bits=bits, transparency=0)  # a tRNS chunk too
    assert cv2.imread(path, cv2.IMREAD_UNCHANGED).ndim == 3  # what OpenCV makes of it
    np.testing.assert_array_equal(read_raw_label(path), indices)
    np.testing.assert_array_equal(read_raw_label(path), np.asarray(Image.open(path)))
    facts = scan.file_facts(path, "label")
    assert facts["size"] == [24, 40] and scan.values_of(int(facts["values"], 16)) == sorted(set(indices.ravel()))


def test_a_zero_frame_calibration_video_is_one_line(tmp_path):
    """A video that opens but declares 0 frames was accepted as calibration data, then failed in the TFLite calibrator."""
    from stt_keras.export import calibration

    path = str(tmp_path / "zero.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 32))
    writer.release()  # a valid container with no frame
    assert cv2.VideoCapture(path).isOpened()
    with pytest.raises(ValueError, match=r"zero\.avi has no decodable frame"):
        calibration.UserData(path, 32, 64, 3)
