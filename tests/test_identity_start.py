"""An STT model initialised from a per-frame model (--init-from) computes that model's logits at step 0."""

import numpy as np
import pytest
import tensorflow as tf

from stt_keras import StreamingSegmenter
from stt_keras.models import STTSegmenter
from stt_keras.data import SyntheticVideo
from stt_keras.training.train import TrainConfig, check_config, init_from
from tolerances import assert_float32_close, model_ops_depth


@pytest.fixture(scope="module")
def per_frame(tmp_path_factory):
    """A per-frame psp_tiny with non-trivial weights and BatchNorm statistics, saved as stt-train saves it."""
    keras_seed = 3
    tf.keras.utils.set_random_seed(keras_seed)
    model = STTSegmenter.from_preset("psp_tiny", num_classes=7)
    model(np.zeros((1, 64, 64, 3), np.uint8))
    rng = np.random.default_rng(0)
    for w in model.weights:  # moving statistics away from 0/1, so that inference is not a trivial path
        if "moving_mean" in w.path:
            w.assign(rng.normal(0, 0.1, w.shape).astype("float32"))
        elif "moving_variance" in w.path:
            w.assign(rng.uniform(0.5, 1.5, w.shape).astype("float32"))
    path = str(tmp_path_factory.mktemp("base") / "base.keras")
    model.save(path)
    return model, path


def _stt_from(path, **overrides):
    model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=7, **overrides)
    model(np.zeros((1, model.num_key_frames + 1, 64, 64, 3), np.uint8))
    init_from(model, path)
    return model


def _video(frames=5):
    frames_, _ = SyntheticVideo(1, frames, 64, 96, seed=4).sequence(0)
    return frames_


def test_init_from_selects_the_identity_block_unless_told_otherwise(per_frame):
    _, path = per_frame
    config = check_config(TrainConfig("stt_psp_tiny", out="unused", init_from=path))
    assert config.stt_overrides == {"norm_first": True}
    paper = check_config(TrainConfig("stt_psp_tiny", out="unused", init_from=path, stt_overrides={"norm_first": False}))
    assert paper.stt_overrides == {"norm_first": False}
    assert check_config(TrainConfig("stt_psp_tiny", out="unused")).stt_overrides == {}  # from scratch: the preset's
    assert check_config(TrainConfig("psp_tiny", out="unused", init_from=path)).stt_overrides == {}
    gated = {"norm_first": True, "residual_gate": True}  # the gated identity start passes through as given
    assert check_config(TrainConfig("stt_psp_tiny", out="unused", init_from=path, stt_overrides=gated)).stt_overrides == gated
    assert check_config(TrainConfig("stt_psp_tiny", out="unused", init_from=path,
                                    stt_overrides={"residual_gate": True})).stt_overrides == gated


SLOW = pytest.mark.slow


@pytest.mark.parametrize("overrides", [{"top_ratio": 0.5}, {"top_ratio": 0.5, "residual_gate": True},
                                       pytest.param({}, marks=SLOW),
                                       pytest.param({"top_ratio": 0.5, "key_selection": "all"}, marks=SLOW),
                                       pytest.param({"top_ratio": 0.5, "change_weight": 1.0}, marks=SLOW)])
def test_clips_give_the_per_frame_logits_exactly(per_frame, overrides):
    base, path = per_frame
    stt = _stt_from(path, norm_first=True, **overrides)
    frames = _video()
    t = stt.num_key_frames
    clips = np.stack([frames[i - t: i + 1] for i in range(t, len(frames))])  # [B, T+1, H, W, 3]
    expected = base(clips[:, -1], training=False).numpy()
    for i in range(len(clips)):  # frame by frame: one clip at a time against one frame at a time
        got = stt(clips[i: i + 1], training=False).numpy()
        # The block adds exact zeros, but the clip's encoder runs T+1 frames as one batch: oneDNN may pick
        # other convolution code for another batch size (it does when restricted to AVX2), so float32 rounding.
        assert_float32_close(got, base(clips[i: i + 1, -1], training=False).numpy(), model_ops_depth(base))
    np.testing.assert_allclose(stt(clips, training=False).numpy(), expected, rtol=0, atol=1e-5)  # batched convs


@pytest.mark.parametrize("implementation", ["sparse", "dense_masked"])
@pytest.mark.parametrize("top_ratio", [0.5, pytest.param(1.0, marks=SLOW)])
@pytest.mark.parametrize("residual_gate", [False, True], ids=["zero_outputs", "zero_gates"])
def test_streaming_gives_the_per_frame_logits_exactly(per_frame, implementation, top_ratio, residual_gate):
    base, path = per_frame
    stt = _stt_from(path, norm_first=True, top_ratio=top_ratio, residual_gate=residual_gate)
    assert stt.stt.residual_gate == residual_gate
    frames = _video()
    state = stt.initial_state(1, 64, 96, packed=implementation == "dense_masked")
    for t, frame in enumerate(frames):  # eagerly, as the per-frame model runs here
        logits, state = stt.stream_step(frame[None], state, tf.constant(t == 0), implementation=implementation)
        np.testing.assert_array_equal(logits.numpy(), base(frame[None], training=False).numpy(), err_msg=f"frame {t}")


def test_the_streaming_segmenter_gives_the_per_frame_predictions(per_frame):
    # As stt-eval runs them: the stream step and the per-frame model each compiled (tf.function). The two graphs
    # are not the same graph, so the logits may differ in the last bits; the predictions may not.
    base, path = per_frame
    stream = StreamingSegmenter(_stt_from(path, norm_first=True))
    per_frame_step = tf.function(lambda frame: base(frame, training=False))
    for frame in _video(6):
        got, expected = stream.step(frame).numpy(), per_frame_step(frame[None]).numpy()[0]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))


def test_the_papers_post_norm_block_does_not_start_as_the_identity(per_frame):
    base, path = per_frame
    stt = _stt_from(path, norm_first=False)
    clip = _video(4)[None]
    assert np.abs(stt(clip, training=False).numpy() - base(clip[:, -1], training=False).numpy()).max() > 1e-2


@SLOW
def test_the_identity_block_can_learn(per_frame):
    # Zero output weights are not a dead end: the loss has a gradient on them, so fine-tuning moves them.
    _, path = per_frame
    stt = _stt_from(path, norm_first=True)
    frames, labels = SyntheticVideo(1, 6, 64, 96, seed=4).sequence(0)
    clip, label = frames[None, 2:6], labels[None, 5].astype("int32")
    with tf.GradientTape() as tape:
        logits = stt(clip, training=False)
        loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(label, logits, from_logits=True))
    grads = tape.gradient(loss, [stt.stt.output_kernel, stt.stt.ffn2_kernel])
    assert float(tf.reduce_max(tf.abs(grads[0]))) > 0
