"""Serving a stream: the SavedModel's float16-state step and the gRPC server/client (export/serve.py)."""

import os
import subprocess
import sys

import cv2
import grpc
import numpy as np
import pytest
import tensorflow as tf

from stt_keras.export import saved_model, serve
from stt_keras.export import step as step_lib
from stt_keras.models import STTSegmenter
from stt_keras.training.data.synthetic import SyntheticVideo
from tolerances import assert_labels_match_logits, model_ops_depth

SIZE = (64, 128)
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tf.keras.utils.set_random_seed(11)
    model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=5, top_ratio=0.5)  # NSM selection in play
    model(np.zeros((1, 4, *SIZE, 3), np.uint8))
    directory = str(tmp_path_factory.mktemp("sm") / "1")
    signatures = saved_model.save(model, directory, *SIZE)
    assert signatures == ["serving_default", "step", "step_float16"]
    frames, _ = SyntheticVideo(1, 7, *SIZE, seed=3).sequence(0)
    return model, directory, frames


def library_logits(model, frames):
    """The library's own streaming loop: logits per frame."""
    state = model.initial_state(1, *SIZE)
    logits = []
    for t, frame in enumerate(frames):
        out, state = model.stream_step(frame[None], state, t == 0)
        logits.append(np.asarray(out[0]))
    return np.stack(logits)


def assert_labels_of(model, labels, logits):
    """The server's labels (SavedModel graph, another process) against the library's eager logits: the
    argmax, or a near tie within float32 rounding (tests/tolerances.py)."""
    assert_labels_match_logits(labels, logits, model_ops_depth(model))


@pytest.fixture(scope="module")
def server(exported):
    _, directory, _ = exported
    srv, port = serve.make_server(directory, "localhost:0", workers=2)
    yield f"localhost:{port}"
    srv.stop(grace=None)


def test_messages_round_trip_binary_tensors():
    rng = np.random.default_rng(0)
    tensors = {"frame": rng.integers(0, 256, (1, 4, 5, 3)).astype(np.uint8),
               "state": rng.normal(size=(1, 2, 3, 8)).astype(np.float16),
               "reset": np.array([1.0], np.float32), "labels": rng.integers(0, 19, (1, 4, 5)).astype(np.int32)}
    data = serve.encode(tensors)
    assert len(data) < sum(t.nbytes for t in tensors.values()) + 200  # raw bytes, not text
    back = serve.decode(data)
    for name, value in tensors.items():
        assert back[name].dtype == value.dtype
        np.testing.assert_array_equal(back[name], value)


def test_float16_state_step_is_the_float32_step_with_a_rounded_state(exported):
    model, directory, frames = exported
    loaded = tf.saved_model.load(directory)
    f32, f16 = loaded.signatures["step"], loaded.signatures["step_float16"]
    assert f16.structured_input_signature[1]["state"].dtype == tf.float16
    s32 = np.zeros(f32.structured_input_signature[1]["state"].shape, np.float32)
    s16 = s32.astype(np.float16)
    for t, frame in enumerate(frames):
        reset = tf.constant([1.0 if t == 0 else 0.0])
        a = f32(frame=tf.constant(frame[None]), state=tf.constant(s32), reset=reset)
        b = f16(frame=tf.constant(frame[None]), state=tf.constant(s16), reset=reset)
        # Given the same (float16-representable) incoming state the two steps agree exactly...
        c = f32(frame=tf.constant(frame[None]), state=tf.constant(s16.astype(np.float32)), reset=reset)
        np.testing.assert_array_equal(b["logits"].numpy(), c["logits"].numpy())
        np.testing.assert_array_equal(b["next_state"].numpy(), c["next_state"].numpy().astype(np.float16))
        # ...and the rounding of the state barely moves the logits of this model.
        np.testing.assert_allclose(b["logits"].numpy(), a["logits"].numpy(), atol=1e-3)
        s32, s16 = a["next_state"].numpy(), b["next_state"].numpy()


def test_grpc_stream_and_step_equal_the_in_process_stream(exported, server):
    model, _, frames = exported
    logits = library_logits(model, frames)
    expected = logits.argmax(-1)
    client = serve.SegmenterClient(server, timeout=120)
    info = client.info()
    assert info["frame_shape"] == [1, *SIZE, 3] and info["num_classes"] == 5 and info["num_key_frames"] == 3
    assert info["state_dtypes"] == ["float16", "float32"]
    streamed = np.stack([labels[0] for labels in client.stream(frames)])
    assert streamed.dtype == np.uint8
    assert_labels_of(model, streamed, logits)
    state = np.zeros(info["state_shape"], np.float32)
    stepped = []
    for t, frame in enumerate(frames):
        labels, state = client.step(frame[None], state, t == 0)
        stepped.append(labels[0])
    assert_labels_of(model, np.stack(stepped), logits)
    half = np.stack([labels[0] for labels in client.stream(frames, "float16")])
    assert (half == expected).mean() > 0.99
    # Bad input is refused with a message, not a crash of the server.
    with pytest.raises(grpc.RpcError) as error:
        client.step(np.zeros((1, 8, 8, 3), np.uint8), state, False)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "frame must be uint8" in error.value.details()
    client.close()


def test_client_cli_streams_a_video(exported, server, tmp_path):
    model, _, frames = exported
    video = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 10, (SIZE[1], SIZE[0]))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    decoded = np.stack(list(serve.read_video(video, *SIZE)))  # what the client sends (after the codec)
    logits = library_logits(model, decoded)
    out = str(tmp_path / "labels.npz")  # the step mode's client call is tested above
    result = subprocess.run([sys.executable, "-m", "stt_keras.export.serve", "client", "--address", server, "--video", video,
                             "--out", out], env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{len(frames)} frames" in result.stdout
    assert_labels_of(model, np.load(out)["labels"], logits)
