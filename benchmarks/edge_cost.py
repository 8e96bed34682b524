"""What temporal context costs on the edge: the STT streaming step against the per-frame model of the
same backbone, side by side in one process, in every runtime, and the STT block's share of the step.

For each pair (--pairs, default `stt_psp18:psp18,stt_bise18:bise18`) and frame size (--sizes), both
models are built from their presets with random weights (seed 0, 19 classes) and run as:

  keras          the exported step functions in TensorFlow (`export.step.make_step_function`, default form,
                 float32): the graph a SavedModel serves, standard TF ops only. The step a Keras user runs
                 (`StreamingSegmenter`, with the native kernels) is timed by benchmarks/streaming.py.
  tflite_float32 LiteRT with XNNPACK, the gpu (loop-free) form of the STT step (the faster float
                 .tflite on a CPU, docs/performance.md), the per-frame model's one form
  tflite_int8    the int8 models `stt-export --quantizations int8` writes (`tflite.convert` with the
                 exporter's settings: the STT block float but its QUANTIZABLE 1x1 convolutions, float
                 classifier; both calibrated on 2 x 3 synthetic frames)
  tflite_int8_float_block  the same with the whole STT block float32 (the per-frame model is the same)
  onnx           tf2onnx + ONNX Runtime (CPU provider), default form (`stt_step.onnx`)
  onnx_dense_masked  the same, the dense_masked form (`stt_gpu_step.onnx`, the Jetson's file)
  onnx_native    not by default: the default form with the native kernels as ONNX Runtime custom ops
                 (Python ops of onnxruntime-extensions calling them; an upper bound on what a fused
                 attention op costs there: benchmarks/native_onnx.py; pip install onnxruntime-extensions)

LiteRT and ONNX Runtime run through the edge demo's own sessions (`stt_edge_demo.runners`), all with
--threads threads (TensorFlow's intra-op pool too). Three models per runtime:

  stt        the streaming step (a real state: 3 frames streamed first)
  no_block   the same step with the STT block replaced by identity (top_ratio 0: the block returns
             its input; the key/value projection and the state shift stay), same export settings
  frame      the per-frame model

The three are timed interleaved in --rounds rounds of --repeats steps each (median per round); the
ratios stt/frame and the block's share 1 - no_block/stt are taken within a round, and the report
gives their median [min, max] over the rounds (a shared machine moves absolute times; a ratio within
a round is what to compare). The CPU's features (AVX2, AVX-512, VNNI, AMX) and the load average are
printed with the results.

    nice -n 10 python benchmarks/edge_cost.py --sizes 256x512 --json edge_cost.json
    nice -n 10 python benchmarks/edge_cost.py --pairs stt_psp18:psp18 --sizes 512x1024 --runtimes tflite_int8
"""

import argparse
import contextlib
import functools
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from timing import interleaved_rounds  # noqa: E402

RUNTIMES = ("keras", "tflite_float32", "tflite_int8", "tflite_int8_float_block", "onnx", "onnx_dense_masked")
OPTIONAL_RUNTIMES = ("onnx_native",)  # needs onnxruntime-extensions: only when asked for
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def cpu_features():
    """The int8/SIMD features of this CPU that decide XNNPACK's and MLAS's kernels, from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set()
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags |= set(line.split(":", 1)[1].split())
    except OSError:
        return "unknown"
    found = [flag for flag in CPU_FLAGS if flag in flags]
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    return f"{' '.join(found) or 'none of ' + ' '.join(CPU_FLAGS)}{f' ({model})' if model else ''}"


@contextlib.contextmanager
def block_as_identity(model):
    """While active, the model's STT block returns its input (top_ratio 0): trace the step under it to time the
    step without the block (`no_block` here, segformer_cost.py's "block as identity")."""
    stt = model.stt
    saved = stt.top_ratio
    stt.top_ratio = 0.0
    try:
        yield
    finally:
        stt.top_ratio = saved


def build(preset, size, **overrides):
    import tensorflow as tf

    from stt_keras.models import STTSegmenter

    tf.keras.utils.set_random_seed(0)
    model = STTSegmenter.from_preset(preset, num_classes=19, **overrides)
    streaming = model.stt is not None
    shape = (1, model.num_key_frames + 1, *size, 3) if streaming else (1, *size, 3)
    model(np.zeros(shape, np.uint8))
    return model


@contextlib.contextmanager
def attention_tile(tile):
    """While active, the dense_masked attention uses this query tile (None: `attention_tiling` chooses)."""
    from stt_keras.layers import dense_masked

    saved = dense_masked.ATTENTION_TILE
    dense_masked.ATTENTION_TILE = tile
    try:
        yield
    finally:
        dense_masked.ATTENTION_TILE = saved


def make_runner(runtime, model, size, threads, tmp, name, identity=False, calibration_frames=(2, 3), tile=None):
    """(step callable taking frame/state/reset as the runtime wants them, frame dtype, state shape, bytes or None)."""
    with attention_tile(tile):  # traced, converted and calibrated with this tile
        return _make_runner(runtime, model, size, threads, tmp, name, identity, calibration_frames)


def _make_runner(runtime, model, size, threads, tmp, name, identity, calibration_frames):
    from stt_edge_demo.runners import LiteRTSession, OnnxSession
    from stt_keras.export import calibration, onnx_export, step as step_lib, tflite
    from stt_keras.export.gpu_step import STT_QUANTIZED, STT_SCOPE

    streaming = model.stt is not None
    form = "dense_masked" if streaming and runtime.startswith(("tflite", "onnx_dense")) else "default"
    native = runtime == "onnx_native" and streaming and not identity  # a graph with the native ops in it
    if native:
        import native_onnx
    with block_as_identity(model) if identity else contextlib.nullcontext(), \
            native_onnx.native_kernels_traced() if native else contextlib.nullcontext():
        fn = step_lib.make_step_function(model, *size, form)
        concrete = fn.get_concrete_function()  # traced now, while the block is identity
    state_shape = list(model.state_shape(*size, packed=True)) if streaming else None
    frame_dtype = step_lib.frame_dtype(form).as_numpy_dtype
    if runtime == "keras":
        return (lambda **kw: {k: v.numpy() for k, v in concrete(**kw).items()}), frame_dtype, state_shape, None
    if runtime.startswith("tflite"):
        quantization = runtime.split("_")[1]
        dataset = None
        if quantization == "int8":
            dataset = calibration.representative_dataset(fn, *size, state_shape, *calibration_frames, frame_dtype)
        model_bytes, _ = tflite.convert(tflite.frozen_function(fn), quantization, dataset,
                                        keep_float_scope=STT_SCOPE if streaming else None,
                                        quantized_subscopes=() if runtime.endswith("float_block") else STT_QUANTIZED)
        tflite.check_ops(model_bytes)
        return LiteRTSession(model_bytes, threads), frame_dtype, state_shape, len(model_bytes)
    path = os.path.join(tmp, f"{name}_{form}{'_native' if native else ''}.onnx")
    if native:
        native_onnx.export(fn, step_lib.input_signature(model, *size, form), path)
        session = native_onnx.session(path, threads)
        agree, state_error = native_onnx.check_parity(concrete, session, frame_dtype, state_shape, size)
        print(f"{name}: onnx_native against TensorFlow: labels {100 * agree:.2f}%, state within {state_error:.1e}")
        return session, frame_dtype, state_shape, os.path.getsize(path)
    onnx_export.export(fn, step_lib.input_signature(model, *size, form), path)
    return OnnxSession(path, threads), frame_dtype, state_shape, os.path.getsize(path)


def prepared_inputs(step, frame_dtype, state_shape, frames):
    """The inputs of one timed step: the last frame, with the state of streaming the frames before it."""
    if state_shape is None:
        return {"frame": frames[-1][None].astype(frame_dtype)}
    state = np.zeros(state_shape, np.float32)
    for t, frame in enumerate(frames[:-1]):
        out = step(frame=frame[None].astype(frame_dtype), state=state, reset=np.array([float(t == 0)], np.float32))
        state = np.asarray(out["next_state"], np.float32)
    return {"frame": frames[-1][None].astype(frame_dtype), "state": state, "reset": np.zeros([1], np.float32)}


def time_rounds(runners, rounds, repeats):
    """{name: [median seconds per round]} of {name: (step, inputs)}, interleaved (`timing.interleaved_rounds`)."""
    return interleaved_rounds({name: functools.partial(step, **inputs) for name, (step, inputs) in runners.items()},
                              rounds, repeats)


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", default="stt_psp18:psp18,stt_bise18:bise18", help="comma list of STT:per-frame presets")
    p.add_argument("--sizes", default="256x512,512x1024", help="comma list of HxW")
    p.add_argument("--runtimes", default=",".join(RUNTIMES), help=f"comma list of {', '.join(RUNTIMES)}")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calibration", default="2x3", metavar="SEQxFRAMES",
                   help="int8 calibration: synthetic sequences x frames (latency only: fewer is faster to convert)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--attention-tiles", default="", metavar="T[,T...]",
                   help="also time the STT step with the dense_masked attention forced to these query tiles "
                        "(4, 8, or 0 for the whole map) in the same rounds: rows stt_tileT (LiteRT and "
                        "onnx_dense_masked only)")
    p.add_argument("--stt-overrides", default="", metavar="KEY=VALUE[,KEY=VALUE...]",
                   help="also time, in the same rounds, the STT step of the same preset built with each override "
                        "(one variant each, every runtime), e.g. num_heads=1,top_ratio=1.0: rows stt_KEY=VALUE")
    args = p.parse_args()
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    unknown = [r for r in runtimes if r not in RUNTIMES + OPTIONAL_RUNTIMES]
    if unknown:
        p.error(f"--runtimes: unknown {unknown}; choose from {list(RUNTIMES + OPTIONAL_RUNTIMES)}")
    if "onnx_native" in runtimes:
        import importlib.util

        if importlib.util.find_spec("onnxruntime_extensions") is None:
            p.error("--runtimes onnx_native needs onnxruntime-extensions (pip install onnxruntime-extensions)")
    try:
        pairs = [tuple(pair.split(":")) for pair in args.pairs.split(",")]
        sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
        calibration_frames = tuple(int(v) for v in args.calibration.split("x"))
        tiles = [int(v) for v in args.attention_tiles.split(",") if v.strip()]
        overrides = [(k.strip(), json.loads(v)) for k, v in
                     (item.split("=") for item in args.stt_overrides.split(",") if item.strip())]
    except ValueError:
        p.error("--pairs is STT:FRAME[,...], --sizes HxW[,...], --calibration SEQxFRAMES, --stt-overrides KEY=VALUE[,...]")
    if any(len(pair) != 2 for pair in pairs) or any(len(s) != 2 or min(s) < 32 for s in sizes) or \
            len(calibration_frames) != 2 or min(calibration_frames) < 1:
        p.error("--pairs is STT:FRAME[,...], --sizes HxW[,...] (at least 32x32), --calibration SEQxFRAMES")

    import tensorflow as tf

    from stt_keras.export import calibration

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    features = cpu_features()
    print(f"CPU: {features}; {args.threads} threads; load average at start {os.getloadavg()}", flush=True)
    frame_cache = {}
    results = {"cpu": features, "threads": args.threads, "rounds": args.rounds, "repeats": args.repeats, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for stt_preset, frame_preset in pairs:
            for size in sizes:
                stt_model, frame_model = build(stt_preset, size), build(frame_preset, size)
                variants = {f"stt_{k}={v}": build(stt_preset, size, **{k: v}) for k, v in overrides}
                frames = calibration.synthetic_frames(*size, 1, 4, calibration.EVALUATION_SEED)[0][0]
                for runtime in runtimes:
                    start = time.time()
                    runners, sizes_bytes = {}, {}
                    forced = tiles if runtime.startswith(("tflite", "onnx_dense")) else []
                    for name, model, identity, tile in (("stt", stt_model, False, None),
                                                        ("no_block", stt_model, True, None),
                                                        ("frame", frame_model, False, None),
                                                        *((f"stt_tile{t}", stt_model, False, t) for t in forced),
                                                        *((name, m, False, None) for name, m in variants.items())):
                        # The per-frame model has no STT block: both int8 settings give it the same model, and it
                        # has one ONNX form.
                        key = (frame_preset, size, "tflite_int8" if runtime.startswith("tflite_int8") else
                               "onnx" if runtime.startswith("onnx") else runtime)
                        if name == "frame" and key in frame_cache:
                            runners[name], sizes_bytes[name] = frame_cache[key]
                            continue
                        step, dtype, state_shape, nbytes = make_runner(runtime, model, size, args.threads, tmp,
                                                                       f"{stt_preset}_{name}", identity,
                                                                       calibration_frames, tile)
                        runners[name] = (step, prepared_inputs(step, dtype, state_shape, frames))
                        sizes_bytes[name] = nbytes
                        if name == "frame":
                            frame_cache[key] = (runners[name], nbytes)
                    load = os.getloadavg()[0]
                    times = time_rounds(runners, args.rounds, args.repeats)
                    ratio = [s / f for s, f in zip(times["stt"], times["frame"])]
                    share = [1 - n / s for s, n in zip(times["stt"], times["no_block"])]
                    row = {"pair": f"{stt_preset}:{frame_preset}", "size": f"{size[0]}x{size[1]}", "runtime": runtime,
                           "ms": {k: 1000 * statistics.median(v) for k, v in times.items()},
                           "ratio": summary(ratio), "block_share": summary(share), "bytes": sizes_bytes,
                           "load_average": load, "seconds": time.time() - start}
                    results["rows"].append(row)
                    print(f"{row['pair']:18s} {row['size']:9s} {runtime:15s} stt {row['ms']['stt']:8.1f} ms  "
                          f"no block {row['ms']['no_block']:8.1f} ms  frame {row['ms']['frame']:8.1f} ms  "
                          f"ratio {row['ratio']['median']:.2f}x [{row['ratio']['min']:.2f}, {row['ratio']['max']:.2f}]  "
                          f"block share {100 * row['block_share']['median']:.0f}% "
                          f"[{100 * row['block_share']['min']:.0f}, {100 * row['block_share']['max']:.0f}]  "
                          f"load {load:.1f}", flush=True)
                    # The extra STT variants timed in these rounds: (runner name, label, the row's key).
                    extras = [(f"stt_tile{t}", f"stt, attention tile {t}", f"ratio_tile{t}") for t in forced]
                    extras += [(name, name, f"ratio_{name}") for name in variants]
                    for name, label, key in extras:
                        extra = row[key] = summary([s / f for s, f in zip(times[name], times["frame"])])
                        print(f"{'':18s} {'':9s} {runtime:15s} {label}: {1000 * statistics.median(times[name]):8.1f} ms  "
                              f"ratio {extra['median']:.2f}x [{extra['min']:.2f}, {extra['max']:.2f}]", flush=True)
                    if args.json:
                        with open(args.json, "w") as f:
                            json.dump(results, f, indent=2)
    print(f"\nCPU: {features}; load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
