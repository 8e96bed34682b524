"""One call for the common cases: model.segment (an image, a video), StreamingSegmenter.step(return_labels=True)
and .segment, STTSegmenter.presets."""

import numpy as np
import pytest
import tensorflow as tf

from stt_keras import StreamingSegmenter
from stt_keras.models import STTSegmenter, list_presets


@pytest.fixture(scope="module")
def models():
    tf.keras.utils.set_random_seed(11)
    stt = STTSegmenter.from_preset("stt_psp_tiny", num_classes=5)
    frame = STTSegmenter.from_preset("psp_tiny", num_classes=5)
    return stt, frame


def _frames(n=4, h=40, w=72):
    return np.random.default_rng(2).integers(0, 256, (n, h, w, 3)).astype(np.uint8)


def test_presets_lists_every_built_in_recipe():
    assert sorted(STTSegmenter.presets) == sorted(list_presets())
    assert "description" in STTSegmenter.presets["stt_psp_tiny"]
    with pytest.raises(TypeError):
        STTSegmenter.presets["mine"] = {}  # read-only: from_preset reads the registry


def test_segment_an_image_is_the_clip_of_its_copies(models):
    stt, frame_model = models
    image = _frames(1)[0]
    clip = np.repeat(image[None, None], stt.num_key_frames + 1, axis=1)
    np.testing.assert_array_equal(stt.segment(image), np.argmax(stt(clip).numpy()[0], -1))
    np.testing.assert_array_equal(frame_model.segment(image), np.argmax(frame_model(image[None]).numpy()[0], -1))
    assert stt.segment(image).dtype == np.int32


def test_segment_a_video_streams_it(models):
    stt, frame_model = models
    frames = _frames()
    stream = StreamingSegmenter(stt)
    expected = np.stack([np.argmax(stream.step(f).numpy(), -1) for f in frames])
    np.testing.assert_array_equal(stt.segment(frames), expected)
    np.testing.assert_array_equal(stt.segment(list(frames)), expected)  # any iterable of frames
    np.testing.assert_array_equal(StreamingSegmenter(stt).segment(iter(frames)), expected)
    per_frame = np.stack([np.argmax(frame_model(f[None]).numpy()[0], -1) for f in frames])
    np.testing.assert_array_equal(frame_model.segment(frames), per_frame)


def test_step_returns_labels(models):
    stt, _ = models
    frames = _frames(3)
    a, b = StreamingSegmenter(stt), StreamingSegmenter(stt)
    for f in frames:
        logits = a.step(f)
        labels = b.step(f, return_labels=True)
        assert labels.dtype == tf.int32 and labels.shape == f.shape[:2]
        np.testing.assert_array_equal(labels.numpy(), np.argmax(logits.numpy(), -1))


def test_segment_refuses_bad_shapes(models):
    stt, _ = models
    with pytest.raises(ValueError, match="image"):
        stt.segment(np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="no frames"):
        stt.segment([])


def test_summary_is_one_row_per_part_with_per_frame_shapes(models):
    stt, frame_model = models
    lines = []
    stt.summary(print_fn=lines.append, size=(96, 160))
    assert len(lines) == 6
    assert lines[2].split()[:2] == ["encoder", "PSPNetEncoder"] and "[12, 20, 128]" in lines[2]
    assert lines[3].split()[:2] == ["stt", "SparseTemporalTransformer"] and "3 key frames" in lines[3]
    assert lines[4].split()[:2] == ["decoder", "PSPNetDecoder"] and "[96, 160, 5]" in lines[4]
    counts = [int(line.split()[-1].replace(",", "")) for line in lines[2:5]]
    assert counts == [stt.encoder.count_params(), stt.stt.count_params(), stt.decoder.count_params()]
    assert f"{stt.count_params():,}" in lines[5]
    lines = []
    frame_model.summary(print_fn=lines.append)
    assert len(lines) == 5 and "per frame" in lines[0]
    lines = []
    stt.summary(print_fn=lines.append, expand_nested=True)  # Keras's own table on request
    assert any("PSPNetEncoder" in line for line in lines)
