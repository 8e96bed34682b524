"""How much memory an export needs (estimated up front) and how much this process may still allocate."""

import numpy as np

# Bytes per pixel of live activations an export holds at once, as a multiple of one
# forward pass's peak: the Keras model, the TFLite converter / calibrator, the LiteRT
# interpreter and ONNX Runtime each hold their own.
MEMORY_FACTOR = 3.0
PROBE = (64, 128)  # the small frame size the activation peak is measured at


def peak_activation_bytes(graph):
    """Peak bytes of live tensors when running `graph`'s ops in creation order (each freed after its last use)."""
    ops = graph.get_operations()
    last_use = {}
    for i, op in enumerate(ops):
        for t in op.inputs:
            last_use[t.ref()] = i
    live, peak, sizes = 0, 0, {}
    for i, op in enumerate(ops):
        if op.type in ("ReadVariableOp", "Const", "VarHandleOp"):
            continue
        for t in op.outputs:
            if t.shape.is_fully_defined() and t.dtype.size:
                sizes[t.ref()] = t.shape.num_elements() * t.dtype.size
                live += sizes[t.ref()]
        peak = max(peak, live)
        for t in list(op.inputs) + list(op.outputs):
            if last_use.get(t.ref(), i) <= i and t.ref() in sizes:
                live -= sizes.pop(t.ref())
    return peak


def estimate_memory(model, size, probe=PROBE):
    """Bytes an export at `size` needs, estimated from the model's activation peak at a small probe size."""
    import tensorflow as tf

    frames = model.num_key_frames + 1
    shape = [1, frames, *probe, 3] if model.stt is not None else [1, *probe, 3]
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(tf.TensorSpec(shape, tf.uint8)).graph
    per_pixel = peak_activation_bytes(graph) / (probe[0] * probe[1])
    weights = sum(int(np.prod(w.shape)) * 4 for w in model.weights)
    return int(MEMORY_FACTOR * per_pixel * size[0] * size[1] + 6 * weights)


def available_memory():
    """Bytes this process may still allocate: MemAvailable, the cgroup limit and RLIMIT_AS/RLIMIT_DATA, the least."""
    import resource

    limits = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as f:
                text = f.read().strip()
            if text != "max" and int(text) < 1 << 60:
                with open(usage_file) as f:
                    limits.append(int(text) - int(f.read().strip()))
                break
        except (OSError, ValueError):
            continue
    for kind, status_key in ((resource.RLIMIT_AS, "VmSize:"), (resource.RLIMIT_DATA, "VmData:")):
        soft, _ = resource.getrlimit(kind)
        if soft != resource.RLIM_INFINITY:
            used = 0
            try:
                with open("/proc/self/status") as f:
                    used = next((int(l.split()[1]) * 1024 for l in f if l.startswith(status_key)), 0)
            except OSError:
                pass
            limits.append(soft - used)
    return min(limits) if limits else None
