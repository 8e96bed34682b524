"""The STT step in ONNX Runtime with the native kernels as custom ops: what a fused attention gives there.

Not a shipped path (docs/performance.md, "What the target asks of `stt_psp18`'s block"): the step is
traced with the native TensorFlow kernels (`SttWindowedAttention`, `SttNsmScore`: the Keras path)
instead of the portable graph, tf2onnx writes them as nodes of onnxruntime-extensions' domain, and
onnxruntime-extensions runs them as Python ops that call the same compiled kernels through
TensorFlow. So every step also pays, per op, a Python call, a TensorFlow eager dispatch, copies of
the inputs and the output's way back as a Python list: an upper bound on what a C custom op would
cost (about 10 ms at 256 x 512 for the attention's output and key/values alone).

Needs `pip install onnxruntime-extensions` (this benchmark only, not a dependency of the package).
"""

import contextlib
import functools

DOMAIN = "ai.onnx.contrib"  # the domain onnxruntime-extensions registers its Python ops in


@contextlib.contextmanager
def native_kernels_traced():
    """While active, `export.step.make_step_function` traces the native kernels (not `portable_ops`)."""
    from stt_keras.export import step as step_lib

    saved = step_lib.portable_ops
    step_lib.portable_ops = contextlib.nullcontext
    try:
        yield
    finally:
        step_lib.portable_ops = saved


def _attention_node(ctx, node, name, args):
    node.domain = DOMAIN
    # onnxruntime-extensions' Python ops take scalar attributes only: the radii as "5,5,4,...".
    node.set_attr("radii", ",".join(str(int(r)) for r in node.get_attr_value("radii")))
    return node


def _nsm_node(ctx, node, name, args):
    node.domain = DOMAIN
    return node


def export(step_fn, signature, path):
    """`step_fn` (traced under `native_kernels_traced`) as ONNX at `path`, the native ops as custom nodes."""
    from stt_keras.export import onnx_export

    model = onnx_export.export(step_fn, signature, path, custom_handlers={
        "SttWindowedAttention": _attention_node, "SttNsmScore": _nsm_node}, custom_domains=[DOMAIN])
    custom = sorted({n.op_type for n in model.graph.node if n.domain == DOMAIN})
    if "SttWindowedAttention" not in custom:
        raise RuntimeError(f"{path}: no SttWindowedAttention node (custom nodes: {custom}): not the native path")
    return model


@functools.cache
def register_ops():
    """Registers the two Python ops (once per process); they call the native kernels through TensorFlow."""
    from onnxruntime_extensions import PyCustomOpDef, onnx_op

    from stt_keras import kernels

    module = kernels.load()
    if module is None:
        raise RuntimeError(f"the native kernels are not available: {kernels.native_status()}")

    @onnx_op(op_type="SttWindowedAttention",
             inputs=[PyCustomOpDef.dt_float, PyCustomOpDef.dt_int32, PyCustomOpDef.dt_float],
             outputs=[PyCustomOpDef.dt_float], attrs={"radii": PyCustomOpDef.dt_string,
                                                      "num_heads": PyCustomOpDef.dt_int64})
    def attention(queries, positions, key_values, radii, num_heads):
        radii = [int(r) for r in radii.split(",")]
        return module.stt_windowed_attention(queries, positions, key_values, radii=radii,
                                             num_heads=num_heads).numpy()

    @onnx_op(op_type="SttNsmScore", inputs=[PyCustomOpDef.dt_float],
             outputs=[PyCustomOpDef.dt_float], attrs={"radius": PyCustomOpDef.dt_int64})
    def nsm_score(x, radius):
        return module.stt_nsm_score(x, radius=radius).numpy()


def check_parity(concrete, session, frame_dtype, state_shape, size, seed=0):
    """Raises unless `session` gives the TensorFlow step's labels (>= 99.9%) and state (1e-4) on one step
    from a random state: a ratio is only reported for a graph that computes the step."""
    import numpy as np

    rng = np.random.default_rng(seed)
    inputs = {"frame": rng.integers(0, 256, size=(1, *size, 3)).astype(frame_dtype),
              "state": rng.normal(size=state_shape).astype(np.float32), "reset": np.zeros([1], np.float32)}
    expected = {k: v.numpy() for k, v in concrete(**inputs).items()}
    got = session(**inputs)
    agree = float(np.mean(expected["labels"] == got["labels"]))
    state_error = float(np.max(np.abs(expected["next_state"] - got["next_state"])))
    if agree < 0.999 or state_error > 1e-4:
        raise RuntimeError(f"the native ONNX step differs from TensorFlow's: labels agree on {100 * agree:.2f}%, "
                           f"next_state differs by up to {state_error:.2e}")
    return agree, state_error


def session(path, threads=2):
    """The edge demo's ONNX Runtime session of such a file, with the Python ops registered."""
    from onnxruntime_extensions import get_library_path

    from stt_edge_demo.runners import OnnxSession

    register_ops()
    return OnnxSession(path, threads, custom_ops_libraries=[get_library_path()])
