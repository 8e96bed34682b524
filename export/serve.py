"""Serve an exported SavedModel's streaming step over gRPC with binary tensors (no JSON).

    python -m stt_keras.export.serve server --saved-model exports/NAME/saved_model/1 [--address 127.0.0.1:8500]
    python -m stt_keras.export.serve client --address 127.0.0.1:8500 --video in.mp4 --out labels.npz [--mode stream|step]

(`python -m stt_keras_cli.serve ...` runs the same without TensorFlow's own log lines.)

No new dependency: `grpcio` comes with TensorFlow, and the messages are TensorFlow's
own protos (`StructuredValue`, a dict of named `TensorProto`s), so no .proto file is
compiled. The service `stt_keras.Segmenter` has three methods:

- `Info` (unary): the model's contract: frame size, classes (with their names and
  display colours, from the SavedModel's assets/labels.json), T, state shape and the
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

The server (grpc.aio: an idle call holds no thread) trusts nothing a client declares:
every tensor's dtype and shape are checked against the model before a byte of it is
decoded, messages are capped at the model's own sizes, streams are counted and time
out when idle, and every refusal is a gRPC status with one line (docs/serving.md,
"What the server guarantees").
"""

import argparse
import asyncio
import collections
import contextlib
import logging
import math
import os
import signal
import ssl
import sys
import threading
import time
from concurrent import futures

import numpy as np

from stt_edge_demo.overlay import letterbox, unletterbox
from stt_keras.utils import faults
from stt_keras.utils.fileio import atomic_file

SERVICE = "stt_keras.Segmenter"
DEFAULT_ADDRESS = "127.0.0.1:8500"
DEFAULT_WORKERS = 4  # model calls running at once (Step calls and Stream frames)
DEFAULT_MAX_STREAMS = 4  # Stream calls open at once; one more is RESOURCE_EXHAUSTED
DEFAULT_IDLE_TIMEOUT = 60.0  # seconds a call may wait for its client's next message
DEFAULT_CLIENT_TIMEOUT = 120.0  # seconds the client waits for an answer (a call, or one frame of a stream)
# Protobuf framing around the raw tensor bytes (names, dtypes, dims, lengths) is a few hundred
# bytes; the caps leave 64 KiB on top of the tensors.
HEADROOM_BYTES = 64 * 1024
INFO_CALLS = 32  # calls beyond streams and steps the server takes at once (Info, refusals); more: RESOURCE_EXHAUSTED

log = logging.getLogger("stt_keras.export.serve")


class RequestError(ValueError):
    """A message that does not match the model's contract (answered INVALID_ARGUMENT)."""


class BusyError(RuntimeError):
    """A call beyond the server's limits (answered RESOURCE_EXHAUSTED)."""


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
    """bytes -> {name: numpy array} (inverse of `encode`), for trusted bytes only.

    It allocates what the message declares; bytes from the network go through
    `parse` (shapes and dtypes checked first) instead.
    """
    from tensorflow.core.protobuf import struct_pb2
    from tensorflow.python.framework import tensor_util

    message = struct_pb2.StructuredValue.FromString(data)
    if not message.HasField("dict_value"):
        raise ValueError("expected a dict of named tensors")
    return {name: tensor_util.MakeNdarray(field.tensor_value) for name, field in message.dict_value.fields.items()}


class Spec:
    """What one named tensor of a message must be: dtypes (numpy names) and one of the allowed shapes."""

    def __init__(self, dtypes, shapes, required=True):
        self.dtypes, self.shapes, self.required = tuple(dtypes), [list(s) for s in shapes], required

    def describe(self):
        shapes = " or ".join(str(s) for s in self.shapes)
        return f"{'/'.join(self.dtypes)} {shapes}"


# TensorProto's typed value fields, for senders that do not use tensor_content.
_VALUE_FIELDS = {"uint8": "int_val", "int32": "int_val", "int64": "int64_val", "float32": "float_val",
                 "float64": "double_val", "float16": "half_val", "bool": "bool_val"}


def parse(data, specs, what="request"):
    """bytes -> {name: array}, each tensor checked against `specs` ({name: Spec}) BEFORE it is decoded.

    The dtype, shape and byte count every TensorProto declares are compared with the
    model's; only then are its bytes viewed as an array (no broadcasting of a short
    value list, nothing allocated from a declared size). RequestError names the problem.
    """
    from google.protobuf.message import DecodeError
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import struct_pb2

    message = struct_pb2.StructuredValue()
    try:
        message.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as error:
        raise RequestError(f"the {what} is not a StructuredValue message ({type(error).__name__}: "
                           f"{str(error)[:200]})") from None
    if message.WhichOneof("kind") != "dict_value":
        raise RequestError(f"the {what} must be a dict of named tensors, got {message.WhichOneof('kind') or 'nothing'}")
    fields = message.dict_value.fields
    expected = ", ".join(f"{name}: {spec.describe()}" for name, spec in specs.items())
    unknown = sorted(set(fields) - set(specs))
    if unknown:
        raise RequestError(f"unexpected tensor(s) {unknown} in the {what}; expected {expected}")
    out = {}
    for name, spec in specs.items():
        if name not in fields:
            if spec.required:
                raise RequestError(f"the {what} has no {name!r} tensor; expected {expected}")
            continue
        field = fields[name]
        if field.WhichOneof("kind") != "tensor_value":
            raise RequestError(f"{name!r} must be a tensor ({spec.describe()}), got {field.WhichOneof('kind') or 'nothing'}")
        tensor = field.tensor_value
        dtype_name = types_pb2.DataType.Name(tensor.dtype) if tensor.dtype in types_pb2.DataType.values() else str(tensor.dtype)
        dtype = {"DT_UINT8": "uint8", "DT_INT32": "int32", "DT_INT64": "int64", "DT_FLOAT": "float32",
                 "DT_DOUBLE": "float64", "DT_HALF": "float16", "DT_BOOL": "bool"}.get(dtype_name)
        shape = None if tensor.tensor_shape.unknown_rank else [d.size for d in tensor.tensor_shape.dim]
        if dtype not in spec.dtypes or shape not in spec.shapes:
            shown = "unknown rank" if shape is None else str(shape)
            raise RequestError(f"{name} must be {spec.describe()}, got {dtype or dtype_name} {shown}")
        count = math.prod(shape)
        np_dtype = np.dtype(dtype).newbyteorder("<")
        if tensor.tensor_content:
            if len(tensor.tensor_content) != count * np_dtype.itemsize:
                raise RequestError(f"{name}: {len(tensor.tensor_content)} bytes of content for {dtype} {shape} "
                                   f"({count * np_dtype.itemsize} expected)")
            array = np.frombuffer(tensor.tensor_content, np_dtype).reshape(shape)
        else:
            values = getattr(tensor, _VALUE_FIELDS[dtype])
            if len(values) != count:
                raise RequestError(f"{name}: {len(values)} values for {dtype} {shape} ({count} expected)")
            if dtype == "float16":
                array = np.array(values, np.uint16).view(np.float16).reshape(shape)
            else:
                array = np.array(values, dtype).reshape(shape)
        out[name] = array.astype(dtype, copy=False)
    return out


def message_limits(frame_shape, state_shape):
    """(largest message a server receives, largest it sends) for a model, in bytes, with headroom.

    In: a Step request (uint8 frame + float32 state + reset). Out: a Step answer
    (int32 labels + float32 next state). Every other message is smaller.
    """
    frame = math.prod(frame_shape)
    state = 4 * math.prod(state_shape)
    labels = 4 * math.prod(frame_shape[:3])
    return frame + state + HEADROOM_BYTES, labels + state + HEADROOM_BYTES


def _identity(data):
    return data


# -------------------------------------------------------------------- server
def class_names(saved_model_dir, num_classes):
    """(names, RGB palette) of an stt-export SavedModel, from its assets/labels.json (what `stt-export`
    wrote there: --classes, the preset's names, a built-in set); without that file, class_0 ... and the
    default palette. ValueError if the file does not name num_classes classes."""
    from stt_keras.data import classes as class_sets

    path = os.path.join(saved_model_dir, "assets", "labels.json")
    if not os.path.isfile(path):
        return [f"class_{i}" for i in range(num_classes)], class_sets.default_palette(num_classes)
    return class_sets.read_classes_file(path, num_classes)


class SegmenterService:
    """The SavedModel's signatures: `info()`, `step(bytes) -> bytes`, `stream_step(bytes, state) -> (bytes, state)`.

    Thread-safe: no shared mutable state (a stream's state is passed in and out).
    """

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
        self.labels_dtype = np.uint8 if self.num_classes <= 256 else np.int32
        self.classes, self.palette = class_names(saved_model_dir, self.num_classes)
        reset = Spec(("float32", "float64", "int32", "int64", "bool"), ([1], []), required=False)
        frame = Spec(("uint8",), (self.frame_shape,))
        self.step_specs = {"frame": frame, "state": Spec(sorted(self.steps), (self.state_shape,)), "reset": reset}
        self.stream_specs = {"frame": frame, "reset": reset}
        self.max_receive, self.max_send = message_limits(self.frame_shape, self.state_shape)
        self.info_bytes = encode(self.info())

    def info(self):
        return {"frame_shape": np.array(self.frame_shape, np.int64), "state_shape": np.array(self.state_shape, np.int64),
                "num_classes": np.array(self.num_classes, np.int64),
                "num_key_frames": np.array(self.num_key_frames, np.int64),
                "state_dtypes": np.array(sorted(self.steps), dtype=object),
                "classes": np.array(self.classes, dtype=object), "palette": np.array(self.palette, np.int64)}

    @staticmethod
    def _reset(request, default):
        if "reset" not in request:
            return default
        value = float(request["reset"].reshape(-1)[0])
        if value not in (0.0, 1.0):
            raise RequestError(f"reset must be 0 or 1, got {value}")
        return value == 1.0

    def step(self, data):
        """A Step request's bytes -> the answer's bytes (RequestError for a bad request)."""
        tf = self._tf
        request = parse(data, self.step_specs)
        state = request["state"]
        reset = self._reset(request, False)
        out = self.steps[state.dtype.name](frame=tf.constant(request["frame"]), state=tf.constant(state),
                                           reset=tf.constant([1.0 if reset else 0.0]))
        return encode({"labels": out["labels"].numpy(), "next_state": out["next_state"].numpy()})

    def stream_step(self, data, state, state_dtype):
        """One Stream message's bytes and the stream's state (None: first frame) -> (answer bytes, next state)."""
        tf = self._tf
        request = parse(data, self.stream_specs, "message")
        reset = state is None or self._reset(request, False)
        if state is None:
            state = tf.zeros(self.state_shape, tf.as_dtype(state_dtype))
        out = self.steps[state_dtype](frame=tf.constant(request["frame"]), state=state,
                                      reset=tf.constant([1.0 if reset else 0.0]))
        labels = out["labels"].numpy().astype(self.labels_dtype)
        return encode({"labels": labels}), out["next_state"]  # the state stays a server-side tensor


class Limits:
    """The server's limits (docs/serving.md, "What the server guarantees")."""

    def __init__(self, workers=DEFAULT_WORKERS, max_streams=DEFAULT_MAX_STREAMS, idle_timeout=DEFAULT_IDLE_TIMEOUT):
        for name, value in (("workers", workers), ("max_streams", max_streams)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not idle_timeout > 0 or not math.isfinite(idle_timeout):
            raise ValueError(f"idle_timeout must be a positive number of seconds, got {idle_timeout!r}")
        self.workers, self.max_streams, self.idle_timeout = workers, max_streams, float(idle_timeout)
        self.max_steps = 2 * workers  # running plus waiting for a worker; one more is RESOURCE_EXHAUSTED
        self.max_calls = max_streams + self.max_steps + INFO_CALLS


class _Handlers:
    """The three methods on a grpc.aio server. Runs on the event loop; model work goes to `pool`.

    Every method is registered as a stream handler (the wire format of a unary call is
    the same), so the server can wait for a client's message with a timeout: a call
    whose request never arrives is closed after `idle_timeout`, like an idle stream.
    """

    def __init__(self, service, limits, pool):
        self.service, self.limits, self.pool = service, limits, pool
        self.open_streams = 0
        # Model jobs on the pool, queued or running, counted until they finish: a call cancelled by its
        # client leaves its job running, and the count still holds it (no unbounded queue from cancels).
        self.jobs = {"step": 0, "stream": 0}

    async def _next(self, messages, context, what):
        """The client's next message, or None at the end of its messages; DEADLINE_EXCEEDED when it idles."""
        import grpc

        try:
            return await asyncio.wait_for(messages.__anext__(), self.limits.idle_timeout)
        except StopAsyncIteration:
            return None
        except asyncio.TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"no {what} from the client for {self.limits.idle_timeout:g} s (the server's idle "
                                "timeout): the call is closed")

    def _job_done(self, kind):
        self.jobs[kind] -= 1

    async def _run(self, context, kind, fn, *args):
        """fn(*args) on the worker pool; a refusal becomes its gRPC status, never UNKNOWN with a traceback."""
        import grpc

        loop = asyncio.get_running_loop()
        left = threading.Event()  # the client cancelled the call

        def work():
            # A job whose client left before a worker was free skips the model, but it is never
            # cancelled on the pool: a cancelled job would stop counting while it still sits in the
            # pool's queue with its request, and cancelling calls could then queue without bound.
            return None if left.is_set() else fn(*args)

        job = self.pool.submit(work)
        self.jobs[kind] += 1

        def finished(_):
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server has stopped
                loop.call_soon_threadsafe(self._job_done, kind)

        job.add_done_callback(finished)
        try:
            return await asyncio.shield(asyncio.wrap_future(job))
        except asyncio.CancelledError:
            left.set()
            raise
        except RequestError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except (MemoryError, self._resource_errors()) as error:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"the server ran out of memory for this call ({type(error).__name__})")
        except Exception:  # anything else is the server's fault: logged here, not shown to the client
            log.exception("export.serve: internal error")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error of the server (logged there)")

    @staticmethod
    def _resource_errors():
        import tensorflow as tf

        return tf.errors.ResourceExhaustedError

    async def info(self, messages, context):
        if await self._next(messages, context, "request") is None:
            await self._no_request(context)
        return self.service.info_bytes

    async def _no_request(self, context):
        import grpc

        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call carried no request message")

    async def step(self, messages, context):
        import grpc

        data = await self._next(messages, context, "request")
        if data is None:
            await self._no_request(context)
        if self.jobs["step"] >= self.limits.max_steps:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"the server is busy: {self.jobs['step']} Step calls running or waiting (at most "
                                f"{self.limits.max_steps}: twice --workers {self.limits.workers}); retry later")
        return await self._run(context, "step", self.service.step, data)

    async def stream(self, messages, context):
        import grpc

        metadata = dict(context.invocation_metadata() or ())
        state_dtype = metadata.get("state-dtype", "float32")
        if state_dtype not in self.service.steps:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"state-dtype {state_dtype!r} not offered: {sorted(self.service.steps)}")
        held = max(self.open_streams, self.jobs["stream"])  # a cancelled stream's last frame still counts
        if held >= self.limits.max_streams:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{held} streams are open, the server's limit (--max-streams "
                                f"{self.limits.max_streams}); retry later")
        self.open_streams += 1
        try:
            state = None
            while True:
                data = await self._next(messages, context, "frame")
                if data is None:
                    return
                answer, state = await self._run(context, "stream", self.service.stream_step, data, state, state_dtype)
                faults.point("serve_stream_frame")
                try:  # a client that stops reading its labels is idle too
                    await asyncio.wait_for(context.write(answer), self.limits.idle_timeout)
                except asyncio.TimeoutError:
                    await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                        f"the client read no labels for {self.limits.idle_timeout:g} s (the server's "
                                        "idle timeout): the call is closed")
        finally:
            self.open_streams -= 1

    def generic_handler(self):
        import grpc

        def handler(behavior, streaming):
            make = grpc.stream_stream_rpc_method_handler if streaming else grpc.stream_unary_rpc_method_handler
            return make(behavior, request_deserializer=_identity, response_serializer=_identity)

        return grpc.method_handlers_generic_handler(SERVICE, {
            "Info": handler(self.info, False), "Step": handler(self.step, False), "Stream": handler(self.stream, True)})


def split_address(address):
    """'host:port' or '[v6]:port' -> (host, port int); ValueError naming what is wrong. Port 0: any free port."""
    host, sep, port = str(address).rpartition(":")
    if not sep or not host:
        raise ValueError(f"--address must be HOST:PORT (e.g. {DEFAULT_ADDRESS} or [::1]:8500), got {address!r}")
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        raise ValueError(f"--address {address!r}: put an IPv6 host in brackets, e.g. [::1]:8500")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--address {address!r}: the port must be a number from 0 to 65535, got {port!r}")
    return host, int(port)


ALL_INTERFACES = {"0.0.0.0", "[::]", "[0:0:0:0:0:0:0:0]", "*", ""}


def is_all_interfaces(host):
    return host in ALL_INTERFACES


def load_tls(cert, key):
    """(private key bytes, certificate chain bytes), the pair `grpc.ssl_server_credentials` takes, checked to
    be PEM files that belong together; ValueError naming the file."""
    if (cert is None) != (key is None):
        raise ValueError("TLS needs both --cert and --key (PEM files)")
    for flag, path in (("--cert", cert), ("--key", key)):
        if not os.path.isfile(path):
            raise ValueError(f"{flag} {path}: no such file")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as error:
        raise ValueError(f"--cert {cert} / --key {key}: not a PEM certificate and its private key ({error})") from None
    with open(cert, "rb") as c, open(key, "rb") as k:
        return k.read(), c.read()


class Server:
    """A running grpc.aio server on its own event-loop thread: `.address` (as bound), `.port`, `.stop()`."""

    def __init__(self, service, address=DEFAULT_ADDRESS, limits=None, tls=None):
        host, _ = split_address(address)
        self.service, self.limits = service, limits or Limits()
        self.tls = tls is not None
        self._pool = futures.ThreadPoolExecutor(max_workers=self.limits.workers, thread_name_prefix="stt-serve")
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error = None
        self._thread = threading.Thread(target=self._main, args=(address, tls), name="stt-serve-loop", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            self._loop.close()
            self._pool.shutdown(wait=False)
            raise self._error
        self.address = f"{host}:{self.port}"

    def _options(self):
        idle_ms = int(self.limits.idle_timeout * 1000)
        return [
            ("grpc.so_reuseport", 0),  # a second server on the same address fails to bind instead of sharing it
            ("grpc.max_receive_message_length", self.service.max_receive),
            ("grpc.max_send_message_length", self.service.max_send),
            ("grpc.server_handshake_timeout_ms", idle_ms),  # a socket that never speaks HTTP/2 (or TLS) is closed
            ("grpc.max_connection_idle_ms", idle_ms),  # a connection with no call is closed (clients reconnect)
        ]

    def _main(self, address, tls):
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start(address, tls))
        except BaseException as error:  # noqa: BLE001  (reported to the constructor's thread)
            self._error = error if isinstance(error, Exception) else RuntimeError(str(error))
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    async def _start(self, address, tls):
        import grpc

        self._server = grpc.aio.server(options=self._options(), maximum_concurrent_rpcs=self.limits.max_calls)
        self.handlers = _Handlers(self.service, self.limits, self._pool)
        self._server.add_generic_rpc_handlers((self.handlers.generic_handler(),))
        try:
            if tls is None:
                port = self._server.add_insecure_port(address)
            else:
                port = self._server.add_secure_port(address, grpc.ssl_server_credentials([tls]))
        except RuntimeError:
            port = 0
        if not port:
            raise OSError(f"cannot listen on {address}: the address is in use (another server?) or not an "
                          "address of this machine")
        self.port = port
        await self._server.start()

    def stop(self, grace=None):
        """Stops the server (running calls get `grace` seconds, then are cancelled) and its threads."""
        if self._loop.is_closed():
            return
        future = asyncio.run_coroutine_threadsafe(self._server.stop(grace), self._loop)
        future.result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self._pool.shutdown(wait=True)


def make_server(saved_model_dir, address=DEFAULT_ADDRESS, workers=DEFAULT_WORKERS, max_streams=DEFAULT_MAX_STREAMS,
                idle_timeout=DEFAULT_IDLE_TIMEOUT, tls=None):
    """A started `Server` serving `saved_model_dir`; returns (server, bound port).

    tls: None, or (private key PEM bytes, certificate chain PEM bytes) (`load_tls`).
    """
    limits = Limits(workers, max_streams, idle_timeout)
    server = Server(SegmenterService(saved_model_dir), address, limits, tls)
    return server, server.port


# -------------------------------------------------------------------- client
class ServerError(RuntimeError):
    """The server refused, failed or did not answer; the message says which and why."""

    def __init__(self, message, code=None):
        super().__init__(message)
        self.code = code


def _rpc_message(error):
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    return f"{code.name if code else 'error'}: {details}", code


class SegmenterClient:
    """Client of `stt_keras.Segmenter`: `info()`, `step(frame, state, reset)`, `stream(frames)`.

    Frames of any size: each is letterboxed to the model's size as the edge demo does
    (`stt_edge_demo.overlay.letterbox`: aspect ratio kept, black bars), and its labels
    come back at the frame's own size (the bars cut off, nearest neighbour).

    Every call has a timeout (`timeout` seconds; for `stream`, per frame), and the
    answers are checked against the model's contract (from `Info`) before they are
    decoded. TLS: `root_certificates` (PEM bytes of the CA), or `tls=True` for the
    system's roots.

    Example (with a server running):
        client = SegmenterClient("127.0.0.1:8500")
        for labels in client.stream(frames):   # frames: iterable of uint8 [H, W, 3]
            ...
    """

    def __init__(self, address, timeout=DEFAULT_CLIENT_TIMEOUT, root_certificates=None, tls=False):
        if timeout is None or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.address, self.timeout = address, float(timeout)
        self._credentials = None
        if root_certificates is not None or tls:
            import grpc

            self._credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        self._info = None
        self._open([])  # gRPC's default 4 MB limits: enough for Info, which sizes the real ones

    def _open(self, options):
        import grpc

        if getattr(self, "channel", None) is not None:
            self.channel.close()
        if self._credentials is None:
            self.channel = grpc.insecure_channel(self.address, options=options)
        else:
            self.channel = grpc.secure_channel(self.address, self._credentials, options=options)
        method = f"/{SERVICE}/"
        self._info_call = self.channel.unary_unary(method + "Info", request_serializer=_identity,
                                                   response_deserializer=_identity)
        self._step = self.channel.unary_unary(method + "Step", request_serializer=_identity,
                                              response_deserializer=_identity)
        self._stream = self.channel.stream_stream(method + "Stream", request_serializer=_identity,
                                                  response_deserializer=_identity)

    def info(self):
        """The model's contract; the first call also sizes the channel's message limits from it."""
        import grpc

        if self._info is not None:
            return self._info
        try:
            info = decode(self._info_call(encode({}), timeout=self.timeout))
        except grpc.RpcError as error:
            message, code = _rpc_message(error)
            hint = "" if self._credentials else "; if the server uses TLS, pass --ca or --tls"
            raise ServerError(f"no answer from {self.address} ({message}{hint})", code) from None
        self._info = {"frame_shape": info["frame_shape"].tolist(), "state_shape": info["state_shape"].tolist(),
                      "num_classes": int(info["num_classes"]), "num_key_frames": int(info["num_key_frames"]),
                      "state_dtypes": [v.decode() if isinstance(v, bytes) else str(v)
                                       for v in info["state_dtypes"].tolist()],
                      "classes": [v.decode() if isinstance(v, bytes) else str(v) for v in info["classes"].tolist()],
                      "palette": info["palette"].tolist()}
        send, receive = message_limits(self._info["frame_shape"], self._info["state_shape"])
        self._open([("grpc.max_send_message_length", send), ("grpc.max_receive_message_length", receive)])
        _, h, w, _ = self._info["frame_shape"]
        labels = Spec(("uint8", "int32"), ([1, h, w],))
        self._step_specs = {"labels": labels, "next_state": Spec(self._info["state_dtypes"], (self._info["state_shape"],))}
        self._stream_specs = {"labels": labels}
        return self._info

    def _boxed(self, frame):
        """A frame [h, w, 3] or [1, h, w, 3] -> (the model's input [1, H, W, 3], a function: labels [1, H, W] ->
        labels [1, h, w] of the frame)."""
        frame = np.asarray(frame)
        if frame.ndim == 4 and frame.shape[0] == 1:
            frame = frame[0]
        if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8 or 0 in frame.shape:
            return frame, lambda labels: labels  # the server names what is wrong with it
        _, height, width, _ = self._info["frame_shape"]
        boxed, box = letterbox(frame, height, width)

        def back(labels):
            return unletterbox(labels[0], box, *frame.shape[:2]).astype(labels.dtype)[None]
        return boxed[None], back

    def step(self, frame, state, reset):
        """One `step` call on a frame of any size: (labels [1, h, w] at the frame's size, int32; next_state in
        the state's dtype)."""
        import grpc

        self.info()
        frame, back = self._boxed(frame)
        try:
            data = self._step(encode({"frame": frame, "state": state,
                                      "reset": np.array([1.0 if reset else 0.0], np.float32)}), timeout=self.timeout)
        except grpc.RpcError as error:
            message, code = _rpc_message(error)
            raise ServerError(f"Step failed ({message})", code) from error
        out = parse(data, self._step_specs, "answer")
        return back(out["labels"]), out["next_state"]

    def stream(self, frames, state_dtype="float32"):
        """Yields labels [1, h, w] (uint8 up to 256 classes) per frame [h, w, 3] (or [1, h, w, 3]) of any size,
        at that frame's size, over one bidirectional stream.

        ServerError when the server refuses, fails, or sends nothing for `timeout` seconds.
        """
        import grpc

        self.info()
        lock = threading.Lock()
        pending = {"sent": 0, "answered": 0, "since": time.monotonic()}  # the clock runs while labels are due
        backs = collections.deque()  # per frame sent, how its labels go back to its size

        def requests():
            for f in frames:
                boxed, back = self._boxed(np.asarray(f, np.uint8).reshape([1, *np.shape(f)[-3:]]))
                backs.append(back)
                data = encode({"frame": boxed})
                with lock:
                    if pending["sent"] == pending["answered"]:
                        pending["since"] = time.monotonic()
                    pending["sent"] += 1
                yield data

        call = self._stream(requests(), metadata=(("state-dtype", state_dtype),))
        done, timed_out = threading.Event(), threading.Event()

        def watchdog():  # the labels of a frame sent arrive within `timeout` (a caller may pause between frames)
            while not done.wait(min(1.0, self.timeout / 4)):
                with lock:
                    late = pending["sent"] > pending["answered"] and time.monotonic() - pending["since"] > self.timeout
                if late:
                    timed_out.set()
                    call.cancel()
                    return

        watcher = threading.Thread(target=watchdog, name="stt-serve-client-watchdog", daemon=True)
        watcher.start()
        try:
            for data in call:
                with lock:
                    pending["answered"] += 1
                    pending["since"] = time.monotonic()
                labels = parse(data, self._stream_specs, "answer")["labels"]
                yield backs.popleft()(labels)
        except grpc.RpcError as error:
            if timed_out.is_set():
                raise ServerError(f"no labels from {self.address} for {self.timeout:g} s (the client's timeout)",
                                  grpc.StatusCode.DEADLINE_EXCEEDED) from None
            message, code = _rpc_message(error)
            raise ServerError(f"the stream failed ({message})", code) from None
        finally:
            done.set()
            call.cancel()  # no-op when finished; stops the request thread when the caller stops early
            watcher.join()

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class VideoFrames:
    """The client's frames: `stt_keras.data.video.VideoFrames` (the library's video reader) resized to
    (height, width) (None: the video's own size), stopping where a truncated video ends.

    `declared` is the frame count of the file's header (0 if unknown), `read` the frames decoded so
    far, `ended_early()` whether the video stopped before its declared count, and `error` an
    exception raised while decoding: reading stops and the client reports it with the frame count,
    rather than failing inside the gRPC stream.
    """

    def __init__(self, path, height, width, max_frames=None):
        from stt_keras.data.video import VideoFrames as Reader

        self.video = Reader(path, max_frames, truncated_ok=True)  # refuses a file that does not open or decode
        self.size, self.error = (height, width), None

    declared = property(lambda self: self.video.declared)
    read = property(lambda self: self.video.read)

    def ended_early(self):
        return self.video.ended_early()

    def __iter__(self):
        import cv2

        height, width = self.size
        try:
            for frame in self.video:
                if height is not None and frame.shape[:2] != (height, width):
                    frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
                yield frame
        except Exception as error:  # noqa: BLE001  (reported by the caller with the frame count)
            self.error = error


def read_video(path, height, width):
    """Yields RGB uint8 frames [H, W, 3] of a video file, resized to (height, width), as the client sends them."""
    try:
        video = VideoFrames(path, height, width)
    except ValueError as error:
        raise FileNotFoundError(str(error)) from None
    yield from video
    if video.error is not None:
        raise video.error


# ----------------------------------------------------------------------- CLI
def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _positive_seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def _address(text):
    try:
        split_address(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).replace("--address ", "")) from None
    return text


def build_parser():
    p = argparse.ArgumentParser(prog="python -m stt_keras.export.serve", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("server", help="serve a SavedModel folder (exports/NAME/saved_model/1)")
    s.add_argument("--saved-model", required=True)
    s.add_argument("--address", type=_address, default=DEFAULT_ADDRESS,
                   help=f"HOST:PORT to listen on (default {DEFAULT_ADDRESS}: this machine only). 0.0.0.0:PORT or "
                        "[::]:PORT listens on every network interface. Port 0: any free port (printed)")
    s.add_argument("--workers", type=_positive_int, default=DEFAULT_WORKERS,
                   help="model calls running at once (Step calls and Stream frames); as many more Step calls may wait")
    s.add_argument("--max-streams", type=_positive_int, default=DEFAULT_MAX_STREAMS,
                   help="Stream calls open at once; one more is refused with RESOURCE_EXHAUSTED")
    s.add_argument("--idle-timeout", type=_positive_seconds, default=DEFAULT_IDLE_TIMEOUT,
                   help="seconds a call may wait for its client's next message (or a connection for its first call) "
                        "before the server closes it")
    s.add_argument("--cert", help="PEM certificate chain: serve over TLS (with --key)")
    s.add_argument("--key", help="PEM private key of --cert")
    c = sub.add_parser("client", help="stream a video through a running server")
    c.add_argument("--address", type=_address, default=DEFAULT_ADDRESS)
    c.add_argument("--video", required=True)
    c.add_argument("--out", required=True, help=".npz of the labels at the video's size (`labels` [N, H, W]); each "
                   "frame is letterboxed to the model's size as the edge demo does")
    c.add_argument("--mode", choices=["stream", "step"], default="stream",
                   help="stream: the server keeps the state; step: the client carries it (the `step` signature)")
    c.add_argument("--state-dtype", choices=["float32", "float16"], default="float32")
    c.add_argument("--max-frames", type=_positive_int, default=None)
    c.add_argument("--timeout", type=_positive_seconds, default=DEFAULT_CLIENT_TIMEOUT,
                   help="seconds to wait for the server's answer to a call (in stream mode: to each frame)")
    c.add_argument("--ca", help="PEM file of the CA that signed the server's certificate (TLS)")
    c.add_argument("--tls", action="store_true", help="TLS with the system's root certificates")
    p.commands = {"server": s, "client": c}
    return p


def _error(message, code=2):
    print(f"export.serve: error: {message}", file=sys.stderr, flush=True)
    return code


def _check_server_args(parser, args):
    path = args.saved_model
    if not os.path.isdir(path):
        parser.error(f"--saved-model {path}: no such folder")
    if not any(os.path.isfile(os.path.join(path, n)) for n in ("saved_model.pb", "saved_model.pbtxt")):
        parser.error(f"--saved-model {path}: not a SavedModel folder (no saved_model.pb); pass "
                     "exports/NAME/saved_model/1")
    try:
        return load_tls(args.cert, args.key) if (args.cert or args.key) else None
    except ValueError as error:
        parser.error(str(error))


def run_server(parser, args):
    tls = _check_server_args(parser, args)
    host, _ = split_address(args.address)
    try:
        service = SegmenterService(args.saved_model)
    except ValueError as error:
        parser.error(str(error))
    except Exception as error:  # noqa: BLE001  (a damaged SavedModel: one line)
        parser.error(f"--saved-model {args.saved_model}: cannot be loaded ({type(error).__name__}: "
                     f"{str(error).splitlines()[0][:300] if str(error) else ''})")
    limits = Limits(args.workers, args.max_streams, args.idle_timeout)
    try:
        server = Server(service, args.address, limits, tls)
    except OSError as error:
        parser.error(str(error))
    scheme = "TLS" if tls else "no TLS"
    print(f"export.serve: serving {args.saved_model} at {server.address} ({scheme}; {limits.workers} workers, "
          f"{limits.max_streams} streams, idle timeout {limits.idle_timeout:g} s; messages up to "
          f"{service.max_receive / 1e6:.1f} MB in, {service.max_send / 1e6:.1f} MB out). Ctrl-C stops.", flush=True)
    if is_all_interfaces(host):
        print(f"export.serve: warning: listening on EVERY network interface ({server.address}): anyone who can reach "
              f"this machine on port {server.port} can run the model{'' if tls else ', unencrypted (no --cert/--key)'}"
              "; there is no authentication.", file=sys.stderr, flush=True)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.stop(grace=2)
    print("export.serve: stopped.", flush=True)
    return 0


def _write_labels(labels, out):
    with atomic_file(out, suffix=".npz") as partial:  # the labels file appears complete or not at all
        np.savez_compressed(partial, labels=np.stack(labels))


def run_client(parser, args):
    if args.ca and args.tls:
        parser.error("--ca and --tls: pick one (--ca: your CA's PEM file; --tls: the system's roots)")
    if not os.path.isfile(args.video):
        parser.error(f"--video {args.video}: no such file")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        parser.error(f"--out {args.out}: the folder {out_dir} does not exist")
    if os.path.isdir(args.out):
        parser.error(f"--out {args.out} is a folder; name the .npz file to write")
    if os.path.exists(args.out) and os.path.samefile(args.out, args.video):
        parser.error(f"--out {args.out} is the input video; name another file")
    roots = None
    if args.ca:
        if not os.path.isfile(args.ca):
            parser.error(f"--ca {args.ca}: no such file")
        with open(args.ca, "rb") as f:
            roots = f.read()
        try:
            ssl.create_default_context(cadata=roots.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as error:
            parser.error(f"--ca {args.ca}: not a PEM certificate ({error})")
    try:
        VideoFrames(args.video, None, None)  # refuse a garbage video before connecting
    except ValueError as error:
        parser.error(str(error))

    client = SegmenterClient(args.address, args.timeout, root_certificates=roots, tls=args.tls)
    try:
        try:
            info = client.info()
        except ServerError as error:
            return _error(f"{error}", 1)
        if args.state_dtype not in info["state_dtypes"]:
            return _error(f"the server offers state dtypes {info['state_dtypes']}, not {args.state_dtype}")
        video = VideoFrames(args.video, None, None, args.max_frames)  # the client letterboxes each frame
        labels, start, failure, code = [], time.perf_counter(), None, 0
        try:
            if args.mode == "stream":
                for out in client.stream(video, args.state_dtype):
                    labels.append(out[0])
            else:
                state = np.zeros(info["state_shape"], np.dtype(args.state_dtype))
                for t, frame in enumerate(video):
                    out, state = client.step(frame[None], state, t == 0)
                    labels.append(out[0])
        except ServerError as error:
            failure, code = str(error), 1
        except KeyboardInterrupt:
            failure, code = "interrupted (Ctrl-C)", 130
        seconds = time.perf_counter() - start
        if video.error is not None:
            failure = failure or f"reading {args.video} failed at frame {video.read}: {video.error}"
            code = code or 1
        total = f"{video.declared}" if video.declared else "?"
        if labels:
            _write_labels(labels, args.out)
        if failure:
            where = (f"the labels of those {len(labels)} frames are in {args.out}" if labels
                     else "nothing was written")
            return _error(f"{failure}; {len(labels)} of {total} frames segmented ({video.read} read from the video): {where}", code)
        if not labels:
            return _error(f"no frames read from {args.video}")
        _, height, width, _ = info["frame_shape"]
        print(f"export.serve: {len(labels)} frames, {len(labels) / seconds:.2f} frames/s ({args.mode}; letterboxed "
              f"to the model's {height}x{width}); labels at the video's {labels[0].shape[0]}x{labels[0].shape[1]} "
              f"in {args.out}", flush=True)
        if video.ended_early():
            print(f"export.serve: warning: the video ended early, at frame {video.read} of the {video.declared} its "
                  "header declares (truncated?); the labels of the frames read are written.", file=sys.stderr,
                  flush=True)
            return 3
        return 0
    finally:
        client.close()


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    sub = parser.commands[args.command]
    if args.command == "server":
        return run_server(sub, args)
    return run_client(sub, args)


if __name__ == "__main__":
    sys.exit(main())
