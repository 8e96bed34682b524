"""Does the sparsity pay? The STT block vs the vanilla temporal transformer, in one process.

Paper setting: query map 64 x 128, d = 512, T = 7, s = 1, e = 5, eps = 1, r = 5,
top_ratio = 0.5, 8 heads, reduction 4. The vanilla block is the same layer with
key_selection="all" and top_ratio=1.0 (every point attends to every key of every
frame), computed by chunked batched matmuls. The sparse block is timed twice: with
the native windowed-attention kernel (stt_keras/kernels, what the layer uses on a
CPU) and on the pure-TF path (what exports and XLA use). Pure-TF blocks get the
faster of graph and XLA compilation; the native one runs in a graph (XLA cannot
call it).

Two forms are timed:
  clip    call(query, keys): the key side of all T frames is projected in the call.
  stream  what one streaming step costs: the current frame's key side is projected
          once (it becomes a key for the next T frames) and the block attends to the
          T cached projected frames. This is how the model runs at inference.

Also printed: the sparse block at several map sizes with the fitted exponent of
time vs h*w (linear = 1.0), and the arithmetic floor: the block's useful FLOPs over
the matmul rate measured in this process.

Run: python benchmarks/stt_attention.py [--quick] [--threads N]
"""

import argparse
import contextlib
import math
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from stt_keras_cli import load_library_module  # noqa: E402  (TensorFlow-free)

load_library_module("devices", "devices.py").cpu_only_without_cuda_driver()  # no CUDA probe without a driver

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from timing import timeit  # noqa: E402
from stt_keras import kernels  # noqa: E402
from stt_keras.layers import SparseTemporalTransformer, key_window_radii, nsm, temporal_attention  # noqa: E402
from stt_keras.layers.windows import num_selected  # noqa: E402

PAPER = dict(num_key_frames=7, start_size=1, end_size=5, expansion=1, neighborhood_radius=5, num_heads=8, reduction=4)




def matmul_rate():
    """GFLOP/s of a large float32 matmul, the best this machine does."""
    a = tf.random.normal([2048, 2048])
    b = tf.random.normal([2048, 2048])
    fn = tf.function(lambda: tf.matmul(a, b))
    seconds = min(timeit(lambda: fn().numpy(), 5) for _ in range(2))
    return 2 * 2048**3 / seconds / 1e9


def useful_flops(h, w, d, form, top_ratio=0.5, all_keys=False):
    """FLOPs any implementation of the block must spend (multiply-add = 2)."""
    cfg = PAPER
    radii = key_window_radii(cfg["num_key_frames"], cfg["start_size"], cfg["end_size"], cfg["expansion"])
    hw, d_r = h * w, d // cfg["reduction"]
    n_q = num_selected(top_ratio, hw)
    n_k = cfg["num_key_frames"] * hw if all_keys else sum((2 * r + 1) ** 2 for r in radii)
    n_b = (2 * cfg["neighborhood_radius"] + 1) ** 2
    frames = cfg["num_key_frames"] if form == "clip" else 1
    flops = 2 * hw * n_b * d  # NSM dot products (cosines reuse them)
    flops += 2 * frames * hw * d * 2 * d_r  # key side: W^K, W^V (d -> d_r each)
    flops += 2 * n_q * d * d_r  # W^Q
    flops += 2 * 2 * n_q * n_k * d_r  # scores and weighted values
    hidden = d // cfg["num_heads"]
    flops += 2 * n_q * (d_r * d + 2 * d * hidden)  # W^O (back to d), FFN d -> d/heads -> d
    return flops


def make_block(h, w, d, top_ratio, key_selection, weights=None):
    layer = SparseTemporalTransformer(top_ratio=top_ratio, key_selection=key_selection, **PAPER)
    layer.build((1, h, w, d), (1, PAPER["num_key_frames"], h, w, d))
    if weights is not None:
        layer.set_weights(weights)
    return layer


def compiled(layer, form, jit, portable):
    def step(q, k, current):
        with kernels.portable_ops() if portable else contextlib.nullcontext():
            if form == "stream":
                # k: the cached projected frames. The current frame is projected once,
                # its key/value map for the next T frames.
                return layer.attend(q, k), layer.project_keys(current)
            return layer(q, k)

    return tf.function(step, jit_compile=jit)


def time_block(layer, h, w, d, form, repeats, native=False):
    rng = np.random.default_rng(0)
    q = tf.constant(rng.normal(size=(1, h, w, d)).astype("float32"))
    keys = tf.constant(rng.normal(size=(1, PAPER["num_key_frames"], h, w, d)).astype("float32"))
    k = layer.project_keys(keys) if form == "stream" else keys
    current = q
    best = None
    for jit in ((False,) if native else (False, True)):
        fn = compiled(layer, form, jit, portable=not native)
        t = timeit(lambda: tf.nest.map_structure(lambda x: x.numpy(), fn(q, k, current)), repeats)
        if best is None or t < best[0]:
            best = (t, "native" if native else "xla" if jit else "graph")
    return best


def stream_parts(layer, h, w, d, repeats):
    """Where the native stream-form block spends its time (each part compiled alone)."""
    rng = np.random.default_rng(0)
    q = tf.constant(rng.normal(size=(1, h, w, d)).astype("float32"))
    keys = tf.constant(rng.normal(size=(1, PAPER["num_key_frames"], h, w, d)).astype("float32"))
    kv = layer.project_keys(keys)
    selected = nsm.select_top(nsm.nsm_score(q, layer.neighborhood_radius), layer.top_ratio)
    d_r = d // layer.reduction
    q_sel = tf.constant(rng.normal(size=(1, selected.shape[1], d_r)).astype("float32"))
    parts = {
        "NSM score + top-k": lambda: nsm.select_top(nsm.nsm_score(q, layer.neighborhood_radius), layer.top_ratio),
        "current frame: W^K, W^V": lambda: layer.project_keys(q),
        "windowed attention (native op)": lambda: temporal_attention.selected_windowed_attention(
            q_sel, selected, kv, layer.radii, layer.num_heads),
    }
    print("parts of the native stream-form block:")
    for name, fn in parts.items():
        compiled_fn = tf.function(fn)
        t = timeit(lambda: tf.nest.map_structure(lambda x: x.numpy(), compiled_fn()), repeats)
        print(f"  {name:40s} {t * 1e3:7.1f} ms", flush=True)
    print("  (the rest of the block: gathers, W^Q, W^O, FFN, layer norms, scatter into the map)\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller maps, fewer repeats (smoke run)")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = all cores)")
    parser.add_argument("--forms", default="clip,stream")
    parser.add_argument("--skip-vanilla", action="store_true")
    args = parser.parse_args()
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)

    h, w, d = (32, 64, 256) if args.quick else (64, 128, 512)
    repeats = 3 if args.quick else 5
    rate = matmul_rate()
    print(f"machine: {os.cpu_count()} cores, float32 matmul {rate:.1f} GFLOP/s (2048^3)")
    print(f"setting: map {h}x{w}, d={d}, T=7, s=1, e=5, eps=1, r=5, heads=8, reduction=4\n")

    sparse = make_block(h, w, d, 0.5, "window")
    vanilla = make_block(h, w, d, 1.0, "all", weights=sparse.get_weights())
    print(f"native kernel: {kernels.native_status()}")
    native = kernels.use_native()
    print(f"{'form':7s} {'block':30s} {'ms':>9s} {'how':>7s} {'GFLOP':>7s} {'floor ms':>8s} {'x floor':>7s}")
    results = {}
    for form in args.forms.split(","):
        for key, name, layer, all_keys, ratio in (
            ("native", "sparse, native kernel", sparse, False, 0.5),
            ("tf", "sparse, pure TF", sparse, False, 0.5),
            ("vanilla", "vanilla (all keys, all q)", vanilla, True, 1.0),
        ):
            if (key == "vanilla" and args.skip_vanilla) or (key == "native" and not native):
                continue
            t, how = time_block(layer, h, w, d, form, repeats if ratio < 1 else max(1, repeats // 2), key == "native")
            flops = useful_flops(h, w, d, form, ratio, all_keys)
            floor = flops / (rate * 1e9)
            results[(form, key)] = t
            print(f"{form:7s} {name:30s} {t*1e3:9.1f} {how:>7s} {flops/1e9:7.2f} {floor*1e3:8.1f} {t/floor:7.2f}", flush=True)
        bound = useful_flops(h, w, d, form, 1.0, True) / useful_flops(h, w, d, form, 0.5, False)
        print(f"{form:7s} FLOP ratio vanilla/sparse (the speed-up if both ran at their floor): {bound:.1f}x")
        if (form, "vanilla") in results:
            for key in ("native", "tf"):
                if (form, key) in results:
                    ratio = results[(form, "vanilla")] / results[(form, key)]
                    print(f"{form:7s} speed-up of sparse ({key}) over vanilla: {ratio:.1f}x", flush=True)
        print()

    if native and "stream" in args.forms:
        stream_parts(sparse, h, w, d, repeats)

    sizes = [(16, 32), (32, 64), (48, 96), (64, 128)] if args.quick else [(32, 64), (48, 96), (64, 128), (96, 192), (128, 256)]
    print("scaling of the sparse block (stream form):")
    xs, ys = [], []
    for sh, sw in sizes:
        layer = make_block(sh, sw, d, 0.5, "window", weights=sparse.get_weights())
        t, how = time_block(layer, sh, sw, d, "stream", repeats, native)
        xs.append(math.log(sh * sw))
        ys.append(math.log(t))
        print(f"  {sh:4d}x{sw:<4d} h*w={sh*sw:6d} {t*1e3:9.1f} ms ({how})", flush=True)
    slope = np.polyfit(xs, ys, 1)[0]
    print(f"fitted exponent of time vs h*w: {slope:.2f}")


if __name__ == "__main__":
    main()
