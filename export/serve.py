"""Serve an exported SavedModel's streaming step over gRPC with binary tensors (no JSON).

    python -m stt_keras.export.serve server --saved-model exports/NAME/saved_model/1 --port 8500
    python -m stt_keras.export.serve client --address localhost:8500 --video in.mp4 --out labels.npz [--mode stream|step]

No new dependency: `grpcio` comes with TensorFlow, and the messages are TensorFlow's
own protos (`StructuredValue`, a dict of named `TensorProto`s), so no .proto file is
compiled. The service `stt_keras.Segmenter` has three methods:

- `Info` (unary): the model's contract: frame size, classes, T, state shape and the
  state dtypes the SavedModel offers.
- `Step` (unary): {frame, state, reset} -> {labels, next_state}: the SavedModel's
  `step` signature (or `step_float16` when the state sent is float16), the state
  carried by the client as with TF Serving. Per frame the state crosses the wire
  twice (about 59 MB each way for stt_psp18 at 512x1024 in float32, 29 MB in float16).
- `Stream` (bidirectional stream): {frame} in, {labels} out, one message per frame;
  the server keeps the stream's state for the life of the call (the first frame
  resets it; a message may carry {reset: 1} to start a new clip). Only the frame and
  the labels cross the wire. Labels go back as uint8 when there are at most 256
  classes (the values are the same as the signature's int32 labels).

The state never leaves the server in `Stream`; a lost connection loses the state
and the next call starts again with a reset (the first-frame policy), which is
what a video client does anyway after a gap. docs/serving.md has the measured
trade-off (benchmarks/serving.py).
"""

import argparse
import os
import sys
import threading
from concurrent import futures

import numpy as np

SERVICE = "stt_keras.Segmenter"
# Per-frame messages of the paper-size model exceed gRPC's 4 MB default.
MAX_MESSAGE_BYTES = 512 * 1024 * 1024
CHANNEL_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]


# ------------------------------------------------------------------ messages
def encode(tensors):
    """{name: array} -> bytes of a StructuredValue dict of TensorProtos (binary, lossless)."""
    from tensorflow.core.protobuf import struct_pb2
    from tensorflow.python.framework import tensor_util

    message = struct_pb2.StructuredValue()
    message.dict_value.SetInParent()  # an empty dict is still a dict
    for name, value in tensors.items():
        message.dict_value.fields[name].tensor_value.CopyFrom(tensor_util.make_tensor_proto(np.asarray(value)))
    return message.SerializeToString()


def decode(data):
    """bytes -> {name: numpy array} (inverse of `encode`)."""
    from tensorflow.core.protobuf import struct_pb2
    from tensorflow.python.framework import tensor_util

    message = struct_pb2.StructuredValue.FromString(data)
    if not message.HasField("dict_value"):
        raise ValueError("expected a dict of named tensors")
    return {name: tensor_util.MakeNdarray(field.tensor_value) for name, field in message.dict_value.fields.items()}


def _identity(data):
    return data


# -------------------------------------------------------------------- server
class SegmenterService:
    """The SavedModel's signatures behind the three methods (thread-safe: no shared mutable state)."""

    def __init__(self, saved_model_dir):
        import tensorflow as tf

        self._tf = tf
        self.model = tf.saved_model.load(saved_model_dir)
        signatures = self.model.signatures
        if "step" not in signatures:
            raise ValueError(f"{saved_model_dir} has no `step` signature (a per-frame model, or not an stt-export "
                             f"SavedModel); signatures: {sorted(signatures)}.")
        self.steps = {"float32": signatures["step"]}
        if "step_float16" in signatures:
            self.steps["float16"] = signatures["step_float16"]
        inputs = self.steps["float32"].structured_input_signature[1]
        outputs = self.steps["float32"].structured_outputs
        self.frame_shape = [int(d) for d in inputs["frame"].shape]
        self.state_shape = [int(d) for d in inputs["state"].shape]
        self.num_classes = int(outputs["logits"].shape[-1])
        clip = signatures["serving_default"].structured_input_signature[1]["clip"]
        self.num_key_frames = int(clip.shape[1]) - 1

    def info(self):
        return {"frame_shape": np.array(self.frame_shape, np.int64), "state_shape": np.array(self.state_shape, np.int64),
                "num_classes": np.array(self.num_classes, np.int64),
                "num_key_frames": np.array(self.num_key_frames, np.int64),
                "state_dtypes": np.array(sorted(self.steps), dtype=object)}

    def _check_frame(self, frame):
        if frame.dtype != np.uint8 or list(frame.shape) != self.frame_shape:
            raise ValueError(f"frame must be uint8 {self.frame_shape}, got {frame.dtype} {list(frame.shape)}")

    def step(self, request):
        tf = self._tf
        frame, state = request["frame"], request["state"]
        self._check_frame(frame)
        fn = self.steps.get(state.dtype.name)
        if fn is None or list(state.shape) != self.state_shape:
            raise ValueError(f"state must be {sorted(self.steps)} {self.state_shape}, got {state.dtype} {list(state.shape)}")
        reset = np.asarray(request.get("reset", np.zeros([1], np.float32)), np.float32).reshape([1])
        out = fn(frame=tf.constant(frame), state=tf.constant(state), reset=tf.constant(reset))
        return {"labels": out["labels"].numpy(), "next_state": out["next_state"].numpy()}

    def stream(self, requests, state_dtype="float32"):
        """Yields {labels} per {frame} (optionally {reset}); the state stays here."""
        tf = self._tf
        fn = self.steps[state_dtype]
        state = tf.zeros(self.state_shape, tf.as_dtype(state_dtype))
        first = True
        for request in requests:
            frame = request["frame"]
            self._check_frame(frame)
            reset = first or bool(np.asarray(request.get("reset", 0)).reshape(-1)[0] > 0.5)
            out = fn(frame=tf.constant(frame), state=state, reset=tf.constant([1.0 if reset else 0.0]))
            state, first = out["next_state"], False  # stays a server-side tensor
            labels = out["labels"].numpy()
            yield {"labels": labels.astype(np.uint8) if self.num_classes <= 256 else labels}


def _handlers(service):
    import grpc

    def unary(fn):
        def handle(data, context):
            try:
                return encode(fn(decode(data)))
            except ValueError as error:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        return grpc.unary_unary_rpc_method_handler(handle, request_deserializer=_identity,
                                                   response_serializer=_identity)

    def stream(messages, context):
        metadata = dict(context.invocation_metadata())
        state_dtype = metadata.get("state-dtype", "float32")
        if state_dtype not in service.steps:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"state-dtype {state_dtype!r} not offered: {sorted(service.steps)}")
        try:
            for out in service.stream((decode(m) for m in messages), state_dtype):
                yield encode(out)
        except ValueError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))

    return grpc.method_handlers_generic_handler(SERVICE, {
        "Info": unary(lambda _: service.info()),
        "Step": unary(service.step),
        "Stream": grpc.stream_stream_rpc_method_handler(stream, request_deserializer=_identity,
                                                        response_serializer=_identity),
    })


def make_server(saved_model_dir, address="[::]:8500", workers=4):
    """A started grpc.Server serving `saved_model_dir`; returns (server, bound port)."""
    import grpc

    service = SegmenterService(saved_model_dir)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=CHANNEL_OPTIONS)
    server.add_generic_rpc_handlers((_handlers(service),))
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    server.start()
    return server, port


# -------------------------------------------------------------------- client
class SegmenterClient:
    """Client of `stt_keras.Segmenter`: `info()`, `step(frame, state, reset)`, `stream(frames)`.

    Example (with a server running):
        client = SegmenterClient("localhost:8500")
        for labels in client.stream(frames):   # frames: iterable of uint8 [H, W, 3]
            ...
    """

    def __init__(self, address, timeout=None):
        import grpc

        self.channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.timeout = timeout
        method = f"/{SERVICE}/"
        self._info = self.channel.unary_unary(method + "Info", request_serializer=_identity, response_deserializer=_identity)
        self._step = self.channel.unary_unary(method + "Step", request_serializer=_identity, response_deserializer=_identity)
        self._stream = self.channel.stream_stream(method + "Stream", request_serializer=_identity,
                                                  response_deserializer=_identity)

    def info(self):
        info = decode(self._info(encode({}), timeout=self.timeout))
        return {"frame_shape": info["frame_shape"].tolist(), "state_shape": info["state_shape"].tolist(),
                "num_classes": int(info["num_classes"]), "num_key_frames": int(info["num_key_frames"]),
                "state_dtypes": [v.decode() if isinstance(v, bytes) else str(v) for v in info["state_dtypes"].tolist()]}

    def step(self, frame, state, reset):
        """One `step` call: (labels int32 [1, H, W], next_state in the state's dtype)."""
        out = decode(self._step(encode({"frame": frame, "state": state,
                                        "reset": np.array([1.0 if reset else 0.0], np.float32)}), timeout=self.timeout))
        return out["labels"], out["next_state"]

    def stream(self, frames, state_dtype="float32"):
        """Yields labels [1, H, W] per frame [H, W, 3] (or [1, H, W, 3]) over one bidirectional stream."""
        requests = (encode({"frame": np.asarray(f, np.uint8).reshape([1, *np.shape(f)[-3:]])}) for f in frames)
        for data in self._stream(requests, timeout=self.timeout, metadata=(("state-dtype", state_dtype),)):
            yield decode(data)["labels"]

    def close(self):
        self.channel.close()


def read_video(path, height, width):
    """Yields RGB uint8 frames [H, W, 3] of a video file, resized to (height, width)."""
    import cv2

    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise FileNotFoundError(f"cannot open video {path}")
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            if frame.shape[:2] != (height, width):
                frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()


# ----------------------------------------------------------------------- CLI
def build_parser():
    p = argparse.ArgumentParser(prog="python -m stt_keras.export.serve", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("server", help="serve a SavedModel folder (exports/NAME/saved_model/1)")
    s.add_argument("--saved-model", required=True)
    s.add_argument("--address", default="[::]:8500")
    s.add_argument("--workers", type=int, default=4)
    c = sub.add_parser("client", help="stream a video through a running server")
    c.add_argument("--address", default="localhost:8500")
    c.add_argument("--video", required=True)
    c.add_argument("--out", required=True, help=".npz of the labels, one array per frame, stacked")
    c.add_argument("--mode", choices=["stream", "step"], default="stream",
                   help="stream: the server keeps the state; step: the client carries it (the `step` signature)")
    c.add_argument("--state-dtype", choices=["float32", "float16"], default="float32")
    c.add_argument("--max-frames", type=int, default=None)
    return p


def main(argv=None):
    import itertools
    import time

    args = build_parser().parse_args(argv)
    if args.command == "server":
        server, port = make_server(args.saved_model, args.address, args.workers)
        print(f"export.serve: serving {args.saved_model} on port {port} (Ctrl-C stops)", flush=True)
        stop = threading.Event()
        try:
            stop.wait()
        except KeyboardInterrupt:
            server.stop(grace=2)
        return 0
    client = SegmenterClient(args.address)
    info = client.info()
    if args.state_dtype not in info["state_dtypes"]:
        raise SystemExit(f"export.serve: the server offers state dtypes {info['state_dtypes']}, not {args.state_dtype}")
    _, height, width, _ = info["frame_shape"]
    frames = itertools.islice(read_video(args.video, height, width), args.max_frames)
    labels, start = [], time.perf_counter()
    if args.mode == "stream":
        for out in client.stream(frames, args.state_dtype):
            labels.append(out[0])
    else:
        state = np.zeros(info["state_shape"], np.dtype(args.state_dtype))
        for t, frame in enumerate(frames):
            out, state = client.step(frame[None], state, t == 0)
            labels.append(out[0])
    seconds = time.perf_counter() - start
    if not labels:
        raise SystemExit(f"export.serve: no frames read from {args.video}")
    partial = f"{args.out}.partial-{os.getpid()}.npz"
    np.savez_compressed(partial, labels=np.stack(labels))
    os.replace(partial, args.out)  # the labels file appears complete or not at all
    print(f"export.serve: {len(labels)} frames, {len(labels) / seconds:.2f} frames/s ({args.mode}); labels in {args.out}")
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
