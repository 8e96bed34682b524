"""Serving a stream: bytes per frame each way and frames/s of the SavedModel's signatures, and what
float16 state costs in accuracy.

One process, `tf.saved_model.load` of the export of `--preset` (default stt_psp18, random weights:
speed does not depend on them) at --height x --width (default 512 x 1024), batch 1, --threads CPU
threads. Rows, each a client loop over a synthetic video:

  step float32   the `step` signature, the client carries the float32 state: it sends
                 frame + state + reset and reads labels + next_state back to host memory
  step float16   the `step_float16` signature: the same with the state in float16
  clip           the `serving_default` signature: the client sends the last T+1 frames
                 (the model re-encodes all of them), reads labels back
  server state   the `step` signature with the state kept as a tensor where the model
                 runs (what export/serve.py's `Stream` method does): frame in, labels out
  --grpc adds the same through export/serve.py on localhost (Step float32/float16, Stream).

Bytes per frame are computed from the tensors each request and response carries (labels as
int32, but uint8 in the server-state rows, as export/serve.py's Stream sends them; "all outputs" also counts what the signature returns unfiltered: logits or
probabilities, which TF Serving sends unless the request filters them). Timing: --repeats
rounds, each runs every row for --frames frames after one warm-up frame, rows interleaved so
drift hits them alike; reported: median seconds per frame over the rounds, spread (min..max),
frames/s, and the ratio to `step float32`.

Accuracy of float16 state (the same frames through `step` and `step_float16`):
  * the paper-size model (random weights, so near-tied logits: a pessimistic case):
    label agreement over a streamed sequence of --agreement-frames frames;
  * a tiny model trained on the synthetic video (--tiny-model FILE.keras, or trained here
    for --tiny-steps steps with stt-train): mIoU of both on the held-out synthetic set and
    their label agreement.

Run: python benchmarks/serving.py [--repeats 5 --frames 3 --grpc --json serving.json]
     python benchmarks/serving.py --skip-speed  (accuracy only)
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from stt_keras_cli import load_library_module  # noqa: E402  (TensorFlow-free)

load_library_module("devices", "devices.py").cpu_only_without_cuda_driver()  # no CUDA probe without a driver

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from stt_keras.export import saved_model, serve  # noqa: E402
from stt_keras.utils.fileio import atomic_file  # noqa: E402
from stt_keras.metrics import MeanIoU  # noqa: E402
from stt_keras.models import STTSegmenter  # noqa: E402
from stt_keras.data.synthetic import SyntheticVideo  # noqa: E402

MB = 1e6


def export(model, directory, size):
    start = time.perf_counter()
    saved_model.save(model, directory, *size)
    print(f"exported {model.name} at {size[0]}x{size[1]} in {time.perf_counter() - start:.0f} s", flush=True)
    return tf.saved_model.load(directory)


def stream_labels(fn, frames, state_dtype):
    """Labels [N, H, W] and logits of streaming `frames` through a step signature, state as the client would."""
    state = np.zeros(fn.structured_input_signature[1]["state"].shape, state_dtype)
    labels, logits = [], []
    for t, frame in enumerate(frames):
        out = fn(frame=tf.constant(frame[None]), state=tf.constant(state), reset=tf.constant([1.0 if t == 0 else 0.0]))
        state = out["next_state"].numpy()
        labels.append(out["labels"].numpy()[0])
        logits.append(out["logits"].numpy()[0])
    return np.stack(labels), np.stack(logits)


# ------------------------------------------------------------------- speed rows
def make_rows(loaded, num_key_frames, grpc_address=None):
    """{row name: (start(), step(frame) -> None, bytes in, bytes out (labels [+ state]), bytes out (all outputs))}."""
    sigs = loaded.signatures
    step32, step16, clip_fn = sigs["step"], sigs["step_float16"], sigs["serving_default"]
    state_shape = step32.structured_input_signature[1]["state"].shape
    frame_shape = step32.structured_input_signature[1]["frame"].shape
    classes = step32.structured_outputs["logits"].shape[-1]
    frame_bytes = int(np.prod(frame_shape))
    label_bytes = frame_bytes // 3 * 4  # int32 [1, H, W]
    state_elems = int(np.prod(state_shape))
    logits_bytes = frame_bytes // 3 * classes * 4
    rows = Rows()

    def client_state(fn, dtype):
        box = {}

        def start():
            box["state"], box["t"] = np.zeros(state_shape, dtype), 0

        def run(frame):
            out = fn(frame=tf.constant(frame[None]), state=tf.constant(box["state"]),
                     reset=tf.constant([1.0 if box["t"] == 0 else 0.0]))
            box["state"], box["t"] = out["next_state"].numpy(), box["t"] + 1
            out["labels"].numpy()

        size = np.dtype(dtype).itemsize
        return start, run, frame_bytes + state_elems * size + 4, label_bytes + state_elems * size, \
            label_bytes + state_elems * size + logits_bytes

    rows["step float32"] = client_state(step32, np.float32)
    rows["step float16"] = client_state(step16, np.float16)

    clip_box = {}

    def clip_start():
        clip_box["frames"] = []

    def clip_run(frame):
        history = clip_box["frames"] = (clip_box["frames"] + [frame])[-(num_key_frames + 1):]
        clip = np.stack([history[0]] * (num_key_frames + 1 - len(history)) + history)[None]  # first-frame policy
        clip_fn(clip=tf.constant(clip))["labels"].numpy()

    rows["clip"] = (clip_start, clip_run, frame_bytes * (num_key_frames + 1), label_bytes, label_bytes + logits_bytes)

    server_box = {}

    def server_start():
        server_box["state"], server_box["t"] = tf.zeros(state_shape), 0

    def server_run(frame):
        out = step32(frame=tf.constant(frame[None]), state=server_box["state"],
                     reset=tf.constant([1.0 if server_box["t"] == 0 else 0.0]))
        server_box["state"], server_box["t"] = out["next_state"], server_box["t"] + 1
        out["labels"].numpy()

    rows["server state"] = (server_start, server_run, frame_bytes, frame_bytes // 3, frame_bytes // 3)

    if grpc_address:
        client = serve.SegmenterClient(grpc_address)
        for dtype in (np.float32, np.float16):
            box = {}

            def start(box=box, dtype=dtype):
                box["state"], box["t"] = np.zeros(state_shape, dtype), 0

            def run(frame, box=box):
                _, box["state"] = client.step(frame[None], box["state"], box["t"] == 0)
                box["t"] += 1

            size = np.dtype(dtype).itemsize
            rows[f"grpc Step {np.dtype(dtype).name}"] = (start, run, frame_bytes + state_elems * size + 4,
                                                        label_bytes + state_elems * size,
                                                        label_bytes + state_elems * size)
        # A bidirectional stream driven one frame at a time (send, then wait for the labels).
        import queue
        import threading

        stream_box = {}

        def stream_start():
            if "queue" in stream_box:
                stream_box["queue"].put(None)
                stream_box["thread"].join()
            requests, results = queue.Queue(), queue.Queue()

            def frames():
                while (item := requests.get()) is not None:
                    yield item

            def consume():
                for labels in client.stream(frames()):
                    results.put(labels)

            stream_box.update(queue=requests, results=results, thread=threading.Thread(target=consume, daemon=True))
            stream_box["thread"].start()

        def stream_run(frame):
            stream_box["queue"].put(frame)
            stream_box["results"].get(timeout=600)

        def stream_close():
            if "queue" in stream_box:
                stream_box.pop("queue").put(None)  # ends the request stream: the call completes
                stream_box["thread"].join()
            client.close()

        rows["grpc Stream"] = (stream_start, stream_run, frame_bytes, frame_bytes // 3, frame_bytes // 3)
        rows.close = stream_close
    return rows


class Rows(dict):
    close = staticmethod(lambda: None)


def measure_speed(rows, frames, repeats, frames_per_round):
    seconds = {name: [] for name in rows}
    for start, run, *_ in rows.values():  # warm-up (tracing, first allocation) of every row
        start()
        run(frames[0])
    for r in range(repeats):
        for name, (start, run, *_) in rows.items():
            start()
            run(frames[0])  # the reset frame: not timed
            begin = time.perf_counter()
            for k in range(frames_per_round):
                run(frames[1 + (r * frames_per_round + k) % (len(frames) - 1)])
            seconds[name].append((time.perf_counter() - begin) / frames_per_round)
        print(f"round {r + 1}/{repeats}: " + ", ".join(f"{n} {s[-1]:.2f} s" for n, s in seconds.items()), flush=True)
    base = statistics.median(seconds["step float32"])
    table = []
    for name, (_, _, bytes_in, bytes_out, bytes_all) in rows.items():
        median = statistics.median(seconds[name])
        table.append({"row": name, "mb_in_per_frame": bytes_in / MB, "mb_out_per_frame": bytes_out / MB,
                      "mb_out_all_outputs": bytes_all / MB, "seconds_per_frame": median,
                      "spread": [min(seconds[name]), max(seconds[name])], "frames_per_second": 1.0 / median,
                      "time_vs_step_float32": median / base, "rounds": seconds[name]})
    return table


# ------------------------------------------------------------------- accuracy
def agreement(loaded, frames):
    a, la = stream_labels(loaded.signatures["step"], frames, np.float32)
    b, lb = stream_labels(loaded.signatures["step_float16"], frames, np.float16)
    return {"frames": len(frames), "label_agreement": float((a == b).mean()),
            "worst_frame_agreement": float(min((x == y).mean() for x, y in zip(a, b))),
            "max_abs_logit_difference": float(np.abs(la - lb).max())}


def tiny_model(path, steps, workdir):
    if path:
        return path
    out = os.path.join(workdir, "tiny")
    cmd = [sys.executable, "-m", "stt_keras.training.train", "--preset", "stt_psp_tiny", "--batch-size", "2",
           "--synthetic-sequences", "8", "--synthetic-size", "64x128", "--val-batches", "1", "--verbose", "2",
           "--steps", str(steps), "--checkpoint-every", str(steps), "--out", out]
    print("training the tiny model:", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, cwd=os.path.join(os.path.dirname(__file__), ".."),
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, stdout=subprocess.DEVNULL)
    return os.path.join(out, "last.keras")


def tiny_miou(path, sequences, frames, workdir):
    import stt_keras

    model = stt_keras.load_model(path, compile=False)
    size = (64, 128)
    loaded = export(model, os.path.join(workdir, "tiny_sm"), size)
    video = SyntheticVideo(sequences, frames, *size, seed=1000)  # stt-eval's held-out seed
    metrics = {"float32": MeanIoU(model.num_classes), "float16": MeanIoU(model.num_classes)}
    same = total = 0
    for i in range(sequences):
        clip, labels = video.sequence(i)
        a, _ = stream_labels(loaded.signatures["step"], clip, np.float32)
        b, _ = stream_labels(loaded.signatures["step_float16"], clip, np.float16)
        metrics["float32"].update_state(labels, a)
        metrics["float16"].update_state(labels, b)
        same, total = same + int((a == b).sum()), total + a.size
    return {"model": path, "size": list(size), "sequences": sequences, "frames": frames,
            "miou_float32_state": float(metrics["float32"].result()),
            "miou_float16_state": float(metrics["float16"].result()), "label_agreement": same / total}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="stt_psp18")
    p.add_argument("--num-classes", type=int, default=19)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=5, help="timing rounds")
    p.add_argument("--frames", type=int, default=3, help="timed frames per row per round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--grpc", action="store_true", help="also time export/serve.py's methods on localhost")
    p.add_argument("--agreement-frames", type=int, default=12)
    p.add_argument("--tiny-model", default=None, help="a trained stt_psp_tiny .keras (default: train one)")
    p.add_argument("--tiny-steps", type=int, default=300)
    p.add_argument("--tiny-sequences", type=int, default=6)
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-tiny", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.keras.utils.set_random_seed(0)
    size = (args.height, args.width)
    report = {"preset": args.preset, "size": list(size), "threads": args.threads}
    with tempfile.TemporaryDirectory() as workdir:
        model = STTSegmenter.from_preset(args.preset, num_classes=args.num_classes)
        model(np.zeros((1, model.num_key_frames + 1, *size, 3), np.uint8))
        directory = os.path.join(workdir, "sm")
        loaded = export(model, directory, size)
        frames, _ = SyntheticVideo(1, max(args.agreement_frames, args.frames + 1), *size, seed=1000).sequence(0)
        report["float16_state_paper_model"] = agreement(loaded, frames[:args.agreement_frames])
        print(json.dumps(report["float16_state_paper_model"]), flush=True)
        if not args.skip_speed:
            server = None
            if args.grpc:
                # The Stream row's call waits while the other rows run (minutes at this size): no idle timeout.
                server, port = serve.make_server(directory, "localhost:0", workers=2, idle_timeout=24 * 3600)
            rows = make_rows(loaded, model.num_key_frames, f"localhost:{port}" if server else None)
            report["speed"] = measure_speed(rows, frames, args.repeats, args.frames)
            rows.close()
            if server:
                server.stop(grace=None)
        if not args.skip_tiny:
            path = tiny_model(args.tiny_model, args.tiny_steps, workdir)
            report["float16_state_tiny_trained"] = tiny_miou(path, args.tiny_sequences, 30, workdir)
            print(json.dumps(report["float16_state_tiny_trained"]), flush=True)
    if "speed" in report:
        print(f"\n{args.preset} at {size[0]}x{size[1]}, {args.threads} threads, {args.repeats} rounds x {args.frames} frames")
        print(f"{'row':<20}{'MB in':>9}{'MB out':>9}{'(all)':>9}{'s/frame':>9}{'spread':>16}{'frames/s':>10}{'x time':>8}")
        for row in report["speed"]:
            lo, hi = row["spread"]
            print(f"{row['row']:<20}{row['mb_in_per_frame']:9.2f}{row['mb_out_per_frame']:9.2f}"
                  f"{row['mb_out_all_outputs']:9.2f}{row['seconds_per_frame']:9.3f}{f'{lo:.3f}..{hi:.3f}':>16}"
                  f"{row['frames_per_second']:10.2f}{row['time_vs_step_float32']:8.2f}")
    if args.json:
        with atomic_file(args.json) as partial, open(partial, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
