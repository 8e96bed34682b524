"""Serving a stream: the SavedModel's float16-state step and the gRPC server/client (export/serve.py)."""

import json
import os
import subprocess
import sys

import cv2
import grpc
import numpy as np
import pytest
import tensorflow as tf

from stt_keras.export import saved_model, serve
from stt_keras.models import STTSegmenter
from stt_keras.data.synthetic import SyntheticVideo
from tolerances import assert_labels_match_logits, model_ops_depth

SIZE = (64, 128)
CLASSES = ["road", "car", "tree lawn", "sky", "person"]
PALETTE = [[128, 64, 128], [0, 0, 142], [107, 142, 35], [70, 130, 180], [220, 20, 60]]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tf.keras.utils.set_random_seed(11)
    model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=5, top_ratio=0.5)  # NSM selection in play
    model(np.zeros((1, 4, *SIZE, 3), np.uint8))
    directory = str(tmp_path_factory.mktemp("sm") / "1")
    labels_json = tmp_path_factory.mktemp("labels") / "labels.json"  # what stt-export puts in the assets
    labels_json.write_text(json.dumps({"classes": CLASSES, "palette": PALETTE}))
    signatures = saved_model.save(model, directory, *SIZE, assets=[str(labels_json)])
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
    assert info["classes"] == CLASSES and info["palette"] == PALETTE  # from the SavedModel's assets/labels.json
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
    with pytest.raises(serve.ServerError) as error:
        client.step(np.zeros((1, 8, 8, 3), np.float32), state, False)  # any size is letterboxed; not a float
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT and "frame must be uint8" in str(error.value)
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


def test_client_letterboxes_as_the_edge_demo_and_answers_at_the_frames_size(exported, server, tmp_path):
    """Frames of another aspect ratio: each is letterboxed by the edge demo's own function, and the labels come
    back at the frame's size: exactly the edge demo's unletterbox of the model-size labels (never stretched)."""
    from stt_edge_demo import overlay

    model, _, frames = exported
    assert serve.letterbox is overlay.letterbox and serve.unletterbox is overlay.unletterbox  # one function
    rng = np.random.default_rng(5)
    odd = [cv2.resize(f, (97, 61), interpolation=cv2.INTER_AREA) for f in frames]  # 61 x 97: taller than 1:2
    odd += [rng.integers(0, 256, (45, 170, 3), np.uint8)]  # and one wider, in the same stream
    boxes = [overlay.letterbox(f, *SIZE) for f in odd]
    assert boxes[0][1] == (0, 13, 64, 102) and boxes[-1][1] == (15, 0, 34, 128)  # the bars
    client = serve.SegmenterClient(server, timeout=120)
    boxed = [labels[0] for labels in client.stream([b for b, _ in boxes])]  # model-size frames: sent as they are
    assert_labels_of(model, np.stack(boxed), library_logits(model, [b for b, _ in boxes]))
    expected = [overlay.unletterbox(labels, box, *f.shape[:2]) for labels, (_, box), f in zip(boxed, boxes, odd)]
    streamed = [labels[0] for labels in client.stream(odd)]
    assert [s.shape for s in streamed] == [f.shape[:2] for f in odd] and streamed[0].dtype == np.uint8
    for got, want in zip(streamed, expected):
        np.testing.assert_array_equal(got, want)
    stretched = cv2.resize(boxed[0], (97, 61), interpolation=cv2.INTER_NEAREST)
    assert (stretched != expected[0]).mean() > 0.01  # the test can tell a stretch from the letterbox
    state = np.zeros(client.info()["state_shape"], np.float32)
    for t, (frame, want) in enumerate(zip(odd, expected)):
        labels, state = client.step(frame, state, t == 0)
        np.testing.assert_array_equal(labels[0], want)
    client.close()

    video = str(tmp_path / "odd.avi")  # the client CLI: labels at the video's size
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 10, (98, 62))  # MJPG: even sizes
    for frame in frames:
        writer.write(cv2.cvtColor(cv2.resize(frame, (98, 62), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2BGR))
    writer.release()
    decoded = list(serve.read_video(video, None, None))
    assert decoded[0].shape == (62, 98, 3)
    with serve.SegmenterClient(server, timeout=120) as again:
        want = np.stack([labels[0] for labels in again.stream(decoded)])
    out = str(tmp_path / "labels.npz")
    result = subprocess.run([sys.executable, "-m", "stt_keras.export.serve", "client", "--address", server,
                             "--video", video, "--out", out], env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "letterboxed to the model's 64x128); labels at the video's 62x98" in result.stdout
    np.testing.assert_array_equal(np.load(out)["labels"], want)


# ------------------------------------------------------------ a server that trusts nothing (issue 23)
def struct_message(build):
    """Bytes of a StructuredValue built by `build(message)` (requests no well-behaved client sends)."""
    from tensorflow.core.protobuf import struct_pb2

    message = struct_pb2.StructuredValue()
    message.dict_value.SetInParent()
    build(message)
    return message.SerializeToString()


def declared_tensor(name, dtype, shape, content=b""):
    from tensorflow.core.framework import types_pb2

    def build(message):
        tensor = message.dict_value.fields[name].tensor_value
        tensor.dtype = getattr(types_pb2, dtype)
        for size in shape:
            tensor.tensor_shape.dim.add().size = size
        if content:
            tensor.tensor_content = content
    return build


def with_field(data, build):
    from tensorflow.core.protobuf import struct_pb2

    message = struct_pb2.StructuredValue.FromString(data)
    build(message)
    return message.SerializeToString()


def bad_step_requests(frame, state):
    """(case, request bytes, expected code, text the details must hold)."""
    good = {"frame": frame, "state": state, "reset": np.array([1.0], np.float32)}
    without = lambda name: serve.encode({k: v for k, v in good.items() if k != name})  # noqa: E731
    short_values = struct_message(lambda m: (declared_tensor("frame", "DT_UINT8", frame.shape)(m),
                                             m.dict_value.fields["frame"].tensor_value.int_val.append(7),
                                             m.dict_value.fields["state"].tensor_value.CopyFrom(tf.make_tensor_proto(state))))
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    return [
        ("garbage bytes", b"\xff\x01garbage", invalid, "not a StructuredValue"),
        ("empty message", b"", invalid, "dict of named tensors"),
        ("a list, not a dict", struct_message(lambda m: m.list_value.SetInParent()), invalid, "dict of named tensors"),
        # 32 bytes declaring a 3 GiB uint8 frame: refused by its shape, nothing allocated.
        ("3 GiB declared frame", struct_message(declared_tensor("frame", "DT_UINT8", [3 * 2 ** 30])), invalid,
         "frame must be uint8 [1, 64, 128, 3], got uint8 [3221225472]"),
        ("no frame", without("frame"), invalid, "has no 'frame' tensor"),
        ("no state", without("state"), invalid, "has no 'state' tensor"),
        ("reset=[]", serve.encode({**good, "reset": np.zeros([0], np.float32)}), invalid, "reset must be"),
        ("reset=2", serve.encode({**good, "reset": np.array([2.0], np.float32)}), invalid, "reset must be 0 or 1"),
        ("uint16 frame", serve.encode({**good, "frame": frame.astype(np.uint16)}), invalid, "frame must be uint8"),
        ("frame without batch axis", serve.encode({**good, "frame": frame[0]}), invalid, "got uint8 [64, 128, 3]"),
        ("float64 state", serve.encode({**good, "state": state[..., :96].astype(np.float64)}), invalid,
         "state must be float16/float32"),
        ("unknown tensor", serve.encode({**good, "extra": np.zeros([1], np.float32)}), invalid, "unexpected tensor"),
        ("a string, not a tensor", with_field(serve.encode(good), lambda m: m.dict_value.fields["state"].__setattr__(
            "string_value", "x")), invalid, "'state' must be a tensor"),
        ("content shorter than declared", with_field(serve.encode(good), lambda m: setattr(
            m.dict_value.fields["frame"].tensor_value, "tensor_content", b"\x00" * 10)), invalid, "10 bytes of content"),
        ("one value for a whole frame", short_values, invalid, "1 values for uint8"),
        ("larger than the model's largest message", serve.encode({**good, "frame": np.zeros([1, 64, 128, 3 * 40], np.uint8)}),
         grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
    ]


def test_step_refuses_every_bad_request_with_a_status_and_keeps_serving(exported, server):
    import time

    client = serve.SegmenterClient(server, timeout=60)
    info = client.info()
    frame = np.zeros(info["frame_shape"], np.uint8)
    state = np.zeros(info["state_shape"], np.float32)
    channel = grpc.insecure_channel(server, options=[("grpc.max_send_message_length", 64 * 2 ** 20)])
    step = channel.unary_unary(f"/{serve.SERVICE}/Step")
    cases = bad_step_requests(frame, state)
    assert len(cases) == 16
    for case, data, code, text in cases:
        start = time.perf_counter()
        with pytest.raises(grpc.RpcError) as error:
            step(data, timeout=30)
        assert error.value.code() == code, (case, error.value.code(), error.value.details())
        assert text in error.value.details(), (case, error.value.details())
        assert "Traceback" not in error.value.details() and "Exception" not in error.value.details(), case
        assert time.perf_counter() - start < 10, case  # refused at once, nothing allocated
    labels, _ = client.step(frame, state, True)  # the server still serves
    assert labels.shape == (1, *SIZE)
    channel.close()
    client.close()


def test_stream_refuses_bad_messages_and_unknown_state_dtypes(server):
    channel = grpc.insecure_channel(server)
    stream = channel.stream_stream(f"/{serve.SERVICE}/Stream")
    frame = np.zeros([1, *SIZE, 3], np.uint8)
    for messages, metadata, text in (
            ([b"\x00garbage"], (), "not a StructuredValue"),
            ([serve.encode({"frame": frame}), serve.encode({"frame": frame[0]})], (), "frame must be uint8"),
            ([serve.encode({"frame": frame, "reset": np.zeros([0])})], (), "reset must be"),
            ([serve.encode({"frame": frame})], (("state-dtype", "int8"),), "state-dtype 'int8' not offered")):
        answers = []
        with pytest.raises(grpc.RpcError) as error:
            for answer in stream(iter(messages), metadata=metadata, timeout=60):
                answers.append(answer)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and text in error.value.details()
        assert len(answers) == len(messages) - 1  # the good frames before the bad one were answered
    channel.close()


def test_parse_checks_before_decoding_and_takes_typed_value_fields():
    specs = {"x": serve.Spec(("float32", "float16"), ([2, 3],)), "r": serve.Spec(("float32",), ([1], []), required=False)}
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    proto = tf.make_tensor_proto(values)
    proto.ClearField("tensor_content")
    proto.float_val.extend(values.reshape(-1).tolist())  # what a client using the typed fields sends
    data = with_field(serve.encode({}), lambda m: m.dict_value.fields["x"].tensor_value.CopyFrom(proto))
    np.testing.assert_array_equal(serve.parse(data, specs)["x"], values)
    half = values.astype(np.float16)
    proto = tf.make_tensor_proto(half)
    proto.ClearField("tensor_content")
    proto.half_val.extend(half.view(np.uint16).reshape(-1).tolist())
    data = with_field(serve.encode({}), lambda m: m.dict_value.fields["x"].tensor_value.CopyFrom(proto))
    np.testing.assert_array_equal(serve.parse(data, specs)["x"], half)
    assert "r" not in serve.parse(serve.encode({"x": values}), specs)
    with pytest.raises(serve.RequestError, match="unknown rank"):
        serve.parse(struct_message(lambda m: m.dict_value.fields["x"].tensor_value.__setattr__("dtype", 1) or
                                   m.dict_value.fields["x"].tensor_value.tensor_shape.__setattr__("unknown_rank", True)),
                    specs)
    # The caps: the largest message in (a Step request) and out (a Step answer), with 64 KiB of headroom.
    assert serve.message_limits([1, 64, 128, 3], [1, 8, 16, 192]) == (
        64 * 128 * 3 + 4 * 8 * 16 * 192 + 65536, 4 * 64 * 128 + 4 * 8 * 16 * 192 + 65536)


def test_reset_ignores_a_nan_state_over_step(exported, server):
    """A NaN/inf state sent with reset=1 is ignored by the server's step too (the SavedModel's select)."""
    _, _, frames = exported
    client = serve.SegmenterClient(server, timeout=60)
    shape = client.info()["state_shape"]
    for dtype in (np.float32, np.float16):
        nan = np.full(shape, np.nan, dtype)
        nan.reshape(-1)[::2] = np.inf
        labels, next_state = client.step(frames[0][None], nan, True)
        expected, expected_state = client.step(frames[0][None], np.zeros(shape, dtype), True)
        np.testing.assert_array_equal(labels, expected)
        np.testing.assert_array_equal(next_state, expected_state)
        assert np.isfinite(next_state).all()
    client.close()


@pytest.fixture(scope="module")
def limited(exported):
    """A server with small limits: 2 workers, 2 streams, 4 s idle timeout."""
    _, directory, _ = exported
    srv, _ = serve.make_server(directory, "127.0.0.1:0", workers=2, max_streams=2, idle_timeout=4)
    yield srv
    srv.stop(grace=None)


class BlockedRequests:
    """A request iterator that sends `messages`, then nothing until `release()`."""

    def __init__(self, messages=()):
        import threading

        self.messages, self.event = list(messages), threading.Event()

    def __iter__(self):
        yield from self.messages
        self.event.wait(60)

    def release(self):
        self.event.set()


def test_streams_are_capped_idle_calls_time_out_and_info_always_answers(exported, limited):
    import time

    _, _, frames = exported
    channel = grpc.insecure_channel(limited.address)
    stream = channel.stream_stream(f"/{serve.SERVICE}/Stream")
    info = channel.unary_unary(f"/{serve.SERVICE}/Info")
    blocked = [BlockedRequests([serve.encode({"frame": frames[0][None]})]) for _ in range(2)]
    start = time.perf_counter()
    calls = [stream(iter(b)) for b in blocked]  # two idle streams: the limit
    for call in calls:  # each got its frame answered (so the server holds it), then idles
        assert serve.decode(next(call))["labels"].shape == (1, *SIZE)
    with pytest.raises(grpc.RpcError) as error:
        next(stream(iter([serve.encode({"frame": frames[0][None]})]), timeout=30))
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-streams 2" in error.value.details()
    # Info and Step answer while every stream slot is held by an idle client.
    assert serve.decode(info(b"", timeout=5))["num_classes"] == 5
    client = serve.SegmenterClient(limited.address, timeout=30)
    labels, _ = client.step(frames[0][None], np.zeros(client.info()["state_shape"], np.float32), True)
    assert labels.shape == (1, *SIZE)
    # A unary call whose request never arrives is closed like an idle stream.
    never = BlockedRequests()
    unsent = channel.stream_unary(f"/{serve.SERVICE}/Step")
    with pytest.raises(grpc.RpcError) as error:
        unsent(iter(never), timeout=30)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "no request" in error.value.details()
    for call in calls:
        with pytest.raises(grpc.RpcError) as error:
            list(call)
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error.value.details()
        assert "idle timeout" in error.value.details()
    assert time.perf_counter() - start < 40
    for b in [*blocked, never]:
        b.release()
    # The slots are free again.
    answers = list(stream(iter([serve.encode({"frame": f[None]}) for f in frames[:2]]), timeout=60))
    assert len(answers) == 2
    client.close()
    channel.close()


def test_cancelled_calls_never_pile_up_work_on_the_server(exported, limited, monkeypatch):
    """Step calls cancelled by their client as soon as sent, while every worker is busy: their model jobs
    still count until they leave the pool, so the jobs queued on the server stay within the Step limit
    (2 x workers), the queued ones skip the model, and new calls are served afterwards."""
    import threading
    import time

    _, _, frames = exported
    release, started, ran = threading.Event(), threading.Semaphore(0), []
    model_step = limited.service.step

    def slow_step(data):  # holds its worker until released, so cancelled calls must queue
        ran.append(1)
        started.release()
        release.wait(60)
        return model_step(data)

    monkeypatch.setattr(limited.service, "step", slow_step)
    channel = grpc.insecure_channel(limited.address)
    step = channel.unary_unary(f"/{serve.SERVICE}/Step")
    data = serve.encode({"frame": frames[0][None], "state": np.zeros(limited.service.state_shape, np.float32),
                         "reset": np.ones([1], np.float32)})
    busy = [step.future(data, timeout=60) for _ in range(limited.limits.workers)]
    for _ in busy:
        assert started.acquire(timeout=60)
    most = 0
    for _ in range(30):
        before = limited.handlers.jobs["step"]
        call = step.future(data)
        deadline = time.monotonic() + 30
        while not call.done() and limited.handlers.jobs["step"] == before:  # queued on the pool, or refused
            assert time.monotonic() < deadline, "the call was neither queued nor refused"
            time.sleep(0.005)
        call.cancel()
        time.sleep(0.05)  # the cancellation reaches the server
        most = max(most, limited._pool._work_queue.qsize(), limited.handlers.jobs["step"] - limited.limits.workers)
    assert most <= limited.limits.max_steps - limited.limits.workers
    release.set()
    for call in busy:
        assert serve.decode(call.result())["labels"].shape == (1, *SIZE)
    monkeypatch.setattr(limited.service, "step", model_step)
    deadline = time.monotonic() + 60
    while limited.handlers.jobs["step"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert limited.handlers.jobs == {"step": 0, "stream": 0}
    assert len(ran) == len(busy)  # the cancelled calls' jobs never ran the model
    labels = serve.decode(step(data, timeout=60))["labels"]
    assert labels.shape == (1, *SIZE)
    channel.close()


def test_client_timeout_and_a_dead_server_are_one_clear_error(exported):
    _, directory, frames = exported
    srv, port = serve.make_server(directory, "127.0.0.1:0", workers=1, max_streams=1, idle_timeout=30)
    address = srv.address
    client = serve.SegmenterClient(address, timeout=30)
    client.info()
    srv.stop(grace=None)  # the server is gone
    with pytest.raises(serve.ServerError, match="UNAVAILABLE"):
        client.step(frames[0][None], np.zeros(client.info()["state_shape"], np.float32), True)
    client.close()
    assert serve.SegmenterClient(address).timeout == serve.DEFAULT_CLIENT_TIMEOUT  # a default timeout
    with pytest.raises(serve.ServerError, match="no answer from"):
        serve.SegmenterClient(address, timeout=5).info()
    with pytest.raises(ValueError, match="timeout"):
        serve.SegmenterClient(address, timeout=0)


def test_second_server_on_the_same_address_is_refused(exported, server):
    _, directory, _ = exported
    port = server.rpartition(":")[2]
    with pytest.raises(OSError, match="cannot listen on 127.0.0.1:"):
        serve.make_server(directory, f"127.0.0.1:{port}")


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        serve.main(argv)
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("args, text", [
    (["--address", "127.0.0.1:99999"], "the port must be a number from 0 to 65535, got '99999'"),
    (["--address", "127.0.0.1:-1"], "got '-1'"),
    (["--address", "::1:8500"], "put an IPv6 host in brackets"),
    (["--address", "8500"], "must be HOST:PORT"),
    (["--workers", "0"], "--workers: must be an integer >= 1, got '0'"),
    (["--max-streams", "-2"], "--max-streams: must be an integer >= 1"),
    (["--idle-timeout", "nan"], "--idle-timeout: must be a number of seconds > 0"),
    (["--cert", "nope.pem", "--key", "nope.key"], "--cert nope.pem: no such file"),
    (["--cert", "nope.pem"], "TLS needs both --cert and --key"),
    (["--saved-model", "no/such/folder"], "--saved-model no/such/folder: no such folder"),
])
def test_server_cli_refuses_bad_arguments_in_one_line(exported, args, text, capsys):
    _, directory, _ = exported
    argv = ["server", "--saved-model", directory, *args] if "--saved-model" not in args else ["server", *args]
    code, line = run_main(argv, capsys)
    assert code == 2 and text in line and line.startswith("python -m stt_keras.export.serve server: error:"), line


def test_server_cli_refuses_a_folder_that_is_no_saved_model_or_a_busy_address(exported, server, tmp_path, capsys):
    _, directory, _ = exported
    code, line = run_main(["server", "--saved-model", str(tmp_path)], capsys)
    assert code == 2 and "not a SavedModel folder" in line
    code, line = run_main(["server", "--saved-model", directory, "--address", server.replace("localhost", "127.0.0.1")],
                          capsys)
    assert code == 2 and "cannot listen on" in line and "in use" in line


def test_default_address_is_this_machine_only_and_all_interfaces_are_named():
    args = serve.build_parser().parse_args(["server", "--saved-model", "x"])
    assert args.address == "127.0.0.1:8500"
    assert serve.is_all_interfaces(serve.split_address("0.0.0.0:8500")[0])
    assert serve.is_all_interfaces(serve.split_address("[::]:8500")[0])
    assert not serve.is_all_interfaces(serve.split_address("127.0.0.1:8500")[0])
    assert serve.split_address("[::1]:0") == ("[::1]", 0)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def test_tls_server_and_client(exported, certificate, tmp_path):
    _, directory, frames = exported
    cert, key = certificate
    srv, port = serve.make_server(directory, "127.0.0.1:0", workers=1, tls=serve.load_tls(cert, key))
    try:
        with serve.SegmenterClient(f"localhost:{port}", timeout=60, root_certificates=open(cert, "rb").read()) as client:
            assert [labels.shape for labels in client.stream(frames[:2])] == [(1, *SIZE)] * 2
        with pytest.raises(serve.ServerError, match="pass --ca or --tls"):  # plaintext to a TLS server
            serve.SegmenterClient(f"localhost:{port}", timeout=10).info()
        with pytest.raises(serve.ServerError, match="UNAVAILABLE"):  # the system's roots do not know this CA
            serve.SegmenterClient(f"localhost:{port}", timeout=10, tls=True).info()
    finally:
        srv.stop(grace=None)
    (tmp_path / "garbage.pem").write_text("not a certificate")
    with pytest.raises(ValueError, match="garbage.pem"):
        serve.load_tls(str(tmp_path / "garbage.pem"), key)


def write_video(path, frames, keep=1.0):
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (SIZE[1], SIZE[0]))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    if keep < 1.0:
        data = open(path, "rb").read()
        open(path, "wb").write(data[:int(len(data) * keep)])
    return path


def test_client_cli_refuses_bad_inputs_in_one_line(server, tmp_path, capsys):
    video = write_video(str(tmp_path / "clip.avi"), np.zeros((2, *SIZE, 3), np.uint8))
    (tmp_path / "garbage.mp4").write_bytes(b"\x00" * 1000)
    base = ["client", "--address", server]
    for argv, text in (
            ([*base, "--video", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "a.npz")], "missing.mp4: no such file"),
            ([*base, "--video", str(tmp_path / "garbage.mp4"), "--out", str(tmp_path / "a.npz")], f"cannot open video {tmp_path / 'garbage.mp4'}"),
            ([*base, "--video", video, "--out", video], "is the input video"),
            ([*base, "--video", video, "--out", str(tmp_path / "no" / "a.npz")], "does not exist"),
            ([*base, "--video", video, "--out", str(tmp_path)], "is a folder"),
            ([*base, "--video", video, "--out", str(tmp_path / "a.npz"), "--max-frames", "-1"], "--max-frames: must be"),
            ([*base, "--video", video, "--out", str(tmp_path / "a.npz"), "--timeout", "0"], "--timeout: must be"),
            ([*base, "--video", video, "--out", str(tmp_path / "a.npz"), "--ca", "nope.pem"], "--ca nope.pem: no such file")):
        code, line = run_main(argv, capsys)
        assert code == 2 and text in line, (argv, line)
    assert os.path.getsize(video) > 1000 and not os.path.exists(tmp_path / "a.npz")  # nothing written or overwritten


def test_client_cli_truncated_video_exits_3_with_what_was_segmented(exported, server, tmp_path):
    _, _, frames = exported
    frames = np.concatenate([frames] * 4)  # 28 frames
    video = write_video(str(tmp_path / "clip.avi"), frames, keep=0.5)
    capture = cv2.VideoCapture(video)
    declared = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    decoded = len(list(serve.read_video(video, *SIZE)))
    assert declared == len(frames) and 0 < decoded < declared
    out = str(tmp_path / "labels.npz")
    result = subprocess.run([sys.executable, "-m", "stt_keras.export.serve", "client", "--address", server, "--video", video,
                             "--out", out], env=ENV, capture_output=True, text=True)
    assert result.returncode == 3, result.stderr[-2000:]
    assert f"ended early, at frame {decoded} of the {declared}" in result.stderr
    assert np.load(out)["labels"].shape == (decoded, *SIZE)


def test_client_cli_survives_a_server_killed_mid_stream(exported, tmp_path):
    """The server process dies (os._exit, as SIGKILL) before answering frame 5: the client exits 1, not SIGABRT,
    says how far it got and writes the 4 frames' labels."""
    import select
    import time

    _, directory, frames = exported
    video = write_video(str(tmp_path / "clip.avi"), np.concatenate([frames] * 3))
    server = subprocess.Popen([sys.executable, "-m", "stt_keras.export.serve", "server", "--saved-model", directory,
                               "--address", "127.0.0.1:0", "--workers", "1"],
                              env={**ENV, "STT_KERAS_FAULT": "serve_stream_frame@5"}, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        line, deadline = "", time.monotonic() + 120
        while "serving" not in line and time.monotonic() < deadline:
            if select.select([server.stdout], [], [], 1)[0]:
                line = server.stdout.readline()
        assert "serving" in line and " at 127.0.0.1:" in line, line  # the address actually bound
        address = line.split(" at ")[1].split(" ")[0]
        assert not address.endswith(":0")
        out = str(tmp_path / "labels.npz")
        result = subprocess.run([sys.executable, "-m", "stt_keras.export.serve", "client", "--address", address,
                                 "--video", video, "--out", out], env=ENV, capture_output=True, text=True, timeout=120)
        assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
        assert "4 of 21 frames segmented" in result.stderr and out in result.stderr, result.stderr[-2000:]
        assert np.load(out)["labels"].shape == (4, *SIZE)
        assert server.wait(30) == 137
    finally:
        server.kill()
        server.wait()


# ------------------------------------------------------------ bounded load test (127.0.0.1 only)
def proc_status(pid):
    """(RSS in MB, thread count) of a process, from /proc."""
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["Threads"])


def start_server_process(directory, *args):
    """A server subprocess on 127.0.0.1:0; returns (Popen, bound address)."""
    import select
    import time

    process = subprocess.Popen([sys.executable, "-m", "stt_keras.export.serve", "server", "--saved-model", directory,
                                "--address", "127.0.0.1:0", *args], env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    line, deadline = "", time.monotonic() + 180
    while "serving" not in line and time.monotonic() < deadline and process.poll() is None:
        if select.select([process.stdout], [], [], 1)[0]:
            line = process.stdout.readline()
    assert "serving" in line, f"server did not start: {line!r}"
    return process, line.split(" at ")[1].split(" ")[0]


LOAD = {  # name: (seconds, Step clients, idle streams, idle sockets, server arguments)
    "fast": (8, 3, 3, 20, ["--workers", "2", "--max-streams", "4", "--idle-timeout", "2"]),
    "slow": (60, 6, 6, 100, ["--workers", "4", "--max-streams", "8", "--idle-timeout", "5"]),
}
RSS_BOUND_MB = 40  # growth of the server's RSS from after the warm-up to the end of the load
THREAD_BOUND = 2  # threads the server may have beyond those it had after the warm-up


@pytest.mark.parametrize("load", [
    "fast", pytest.param("slow", marks=pytest.mark.slow)])
def test_load_concurrent_clients_idle_streams_and_idle_sockets(exported, load):
    """N clients call Info and Step in a loop and one streams frames, while M idle streams hold stream slots
    (closed by the idle timeout, then reopened) and K raw TCP sockets that never speak HTTP/2 are held open
    (closed by the handshake timeout, then reopened). Every well-formed call is answered OK, and the
    server's RSS and thread count stay flat within RSS_BOUND_MB and THREAD_BOUND."""
    import socket
    import threading
    import time

    seconds, clients, idle_streams, idle_sockets, server_args = LOAD[load]
    _, directory, frames = exported
    process, address = start_server_process(directory, *server_args)
    host, port = address.rsplit(":", 1)
    stop, lock = threading.Event(), threading.Lock()
    counts = {"info": 0, "step": 0, "stream frames": 0, "idle stream timeouts": 0, "sockets closed by server": 0}
    errors = []

    def count(key, n=1):
        with lock:
            counts[key] += n

    try:
        def warm_up():  # as many calls at once as the load makes, so every worker thread exists before we measure
            with serve.SegmenterClient(address, timeout=60) as warm:
                state = np.zeros(warm.info()["state_shape"], np.float32)
                for t in range(3):
                    warm.step(frames[t][None], state, t == 0)
                list(warm.stream(frames[:3]))

        warmers = [threading.Thread(target=warm_up) for _ in range(clients + 1)]
        for thread in warmers:
            thread.start()
        for thread in warmers:
            thread.join(180)
        time.sleep(0.5)
        rss0, threads0 = proc_status(process.pid)

        def stepper():
            with serve.SegmenterClient(address, timeout=60) as client:
                s, t = np.zeros(client.info()["state_shape"], np.float32), 0
                info = client.channel.unary_unary(f"/{serve.SERVICE}/Info")
                while not stop.is_set():
                    try:
                        assert serve.decode(info(b"", timeout=60))["num_classes"] == 5
                        count("info")
                        _, s = client.step(frames[t % len(frames)][None], s, t == 0)
                        count("step")
                        t += 1
                    except Exception as error:  # noqa: BLE001
                        errors.append(f"stepper: {error}")
                        return

        def streamer():
            def frames_until_stop():
                t = 0
                while not stop.is_set():
                    yield frames[t % len(frames)]
                    t += 1
            with serve.SegmenterClient(address, timeout=60) as client:
                try:
                    for _ in client.stream(frames_until_stop()):
                        count("stream frames")
                except Exception as error:  # noqa: BLE001
                    errors.append(f"streamer: {error}")

        def idle_stream():
            channel = grpc.insecure_channel(address)
            call = channel.stream_stream(f"/{serve.SERVICE}/Stream")
            while not stop.is_set():
                blocked = BlockedRequests()
                try:
                    list(call(iter(blocked)))
                    errors.append("idle stream ended without a status")
                except grpc.RpcError as error:
                    if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                        count("idle stream timeouts")
                    elif not stop.is_set():
                        errors.append(f"idle stream: {error.code()} {error.details()}")
                finally:
                    blocked.release()
            channel.close()

        def idle_sockets_holder():
            held = []
            while not stop.is_set():
                while len(held) < idle_sockets:
                    held.append(socket.create_connection((host, int(port)), timeout=5))
                for sock in list(held):  # a closed socket reads b"" at once; an open one times out
                    sock.settimeout(0.01)
                    try:
                        if sock.recv(65536) == b"":  # (the server first sends its HTTP/2 settings)
                            held.remove(sock)
                            sock.close()
                            count("sockets closed by server")
                    except (socket.timeout, BlockingIOError):
                        pass
                    except OSError:
                        held.remove(sock)
                        sock.close()
                        count("sockets closed by server")
                stop.wait(0.2)
            for sock in held:
                sock.close()

        samples = []

        def sampler():
            while not stop.wait(0.5):
                samples.append(proc_status(process.pid))

        threads = ([threading.Thread(target=stepper) for _ in range(clients)] + [threading.Thread(target=streamer)]
                   + [threading.Thread(target=idle_stream) for _ in range(idle_streams)]
                   + [threading.Thread(target=idle_sockets_holder), threading.Thread(target=sampler)])
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        stop.set()
        for thread in threads:
            thread.join(120)
        rss1, threads1 = proc_status(process.pid)
        print(f"\nload {load}: {seconds} s, {counts}; server RSS {rss0:.0f} -> {rss1:.0f} MB "
              f"(max {max(r for r, _ in samples):.0f}), threads {threads0} -> {threads1} "
              f"(max {max(t for _, t in samples)})")
        assert not errors, errors[:5]
        assert counts["info"] >= clients and counts["step"] >= clients and counts["stream frames"] >= 1, counts
        assert counts["idle stream timeouts"] >= idle_streams, counts  # each idle stream was closed at least once
        assert counts["sockets closed by server"] >= idle_sockets, counts
        assert max(t for _, t in samples) <= threads0 + THREAD_BOUND and threads1 <= threads0 + THREAD_BOUND
        assert max(r for r, _ in samples) - rss0 <= RSS_BOUND_MB and rss1 - rss0 <= RSS_BOUND_MB, (rss0, rss1, samples)
        # Still serving after the load.
        with serve.SegmenterClient(address, timeout=60) as client:
            assert client.info()["num_classes"] == 5
    finally:
        process.terminate()  # SIGTERM: a graceful stop
        assert process.wait(60) == 0


def test_client_stream_timeout_counts_only_while_labels_are_due(exported, server):
    """A caller may pause between frames (benchmarks/serving.py drives a stream one frame at a time); the
    client's timeout is for the labels of a frame sent, not for the pause."""
    import queue
    import time

    _, _, frames = exported
    client = serve.SegmenterClient(server, timeout=3.0)
    client.info()
    requests = queue.Queue()

    def paced():
        while (item := requests.get()) is not None:
            yield item

    results = client.stream(paced())
    requests.put(frames[0])
    first = next(results)
    time.sleep(4.0)  # longer than the timeout, with no frame outstanding
    requests.put(frames[1])
    second = next(results)
    requests.put(None)
    assert list(results) == [] and first.shape == second.shape == (1, *SIZE)
    client.close()
