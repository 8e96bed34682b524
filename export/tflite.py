"""TFLite (LiteRT) conversion of the streaming step, and the op-list check every model must pass.

Conversion goes through a *frozen* concrete function: the variables become
constants before the converter sees the graph. Converting a SavedModel (or a
live function) instead keeps VAR_HANDLE/READ_VARIABLE ops, leaves BatchNorm
unfolded and, for this model, produced NaNs; XNNPACK also runs such a model far
slower. Keras 3's `export(format="litert")` turns on SELECT_TF_OPS (Flex) by
default; we never do.
"""

import numpy as np
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

QUANTIZATIONS = ("float32", "float16", "dynamic_range", "int8")
FORBIDDEN_OPS = ("VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE")


def frozen_function(fn):
    """A concrete function of `fn` with variables folded to constants and named outputs.

    Freezing flattens the output dict (sorted keys); the wrapper gives the names
    back so the TFLite signature says `labels`/`state` instead of `output_0`.
    """
    concrete = fn.get_concrete_function()
    frozen = convert_variables_to_constants_v2(concrete)
    names = sorted(concrete.structured_outputs)
    signature = concrete.structured_input_signature[0]

    @tf.function(input_signature=signature, autograph=False)
    def named(*args):
        outputs = frozen(**{spec.name: arg for spec, arg in zip(signature, args)})
        return dict(zip(names, outputs))

    named_concrete = named.get_concrete_function()
    if named_concrete.captured_inputs:
        raise RuntimeError("Freezing left captured variables in the step function.")
    return named_concrete


def converter_settings(quantization):
    """The converter options of a quantization mode, as plain data (goes into the metadata)."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"`quantization` must be one of {QUANTIZATIONS}, got {quantization!r}.")
    settings = {
        "source": "frozen concrete function (convert_variables_to_constants_v2)",
        "supported_ops": ["TFLITE_BUILTINS"],
        "optimizations": [],
        "supported_types": [],
        "representative_dataset": None,
        "tensorflow": tf.__version__,
    }
    if quantization == "float16":
        settings.update(optimizations=["DEFAULT"], supported_types=["float16"])
    elif quantization == "dynamic_range":
        settings.update(optimizations=["DEFAULT"])
    elif quantization == "int8":
        # Int8 kernels where they exist, float kernels for the rest (top-k,
        # gather of indices, ...): a model that runs, not one that refuses to convert.
        settings.update(optimizations=["DEFAULT"], supported_ops=["TFLITE_BUILTINS_INT8", "TFLITE_BUILTINS"])
    return settings


def convert(concrete, quantization="float32", representative_dataset=None, keep_float_scope=None):
    """TFLite flatbuffer bytes of a frozen concrete function, and the settings used.

    Args:
        concrete: from `frozen_function`.
        quantization: one of QUANTIZATIONS.
        representative_dataset: for "int8", a callable yielding dicts of input
            arrays by signature name (see `export.calibration`).
        keep_float_scope: for "int8", a TF name scope whose ops stay float32
            (selective quantization through QuantizationDebugger's denylist).
            The STT block is kept float this way: its NSM scores, top-k threshold
            and softmax do not survive int8 (a quantized DIV even faults on a
            zero divisor), while the convolutions around it hold the FLOPs.
    """
    settings = converter_settings(quantization)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], tf.Module())
    converter.target_spec.supported_ops = [getattr(tf.lite.OpsSet, name) for name in settings["supported_ops"]]
    if settings["optimizations"]:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if settings["supported_types"]:
        converter.target_spec.supported_types = [tf.float16]
    if quantization == "int8":
        if representative_dataset is None:
            raise ValueError("int8 quantization needs a representative dataset.")
        converter.representative_dataset = representative_dataset
        settings["representative_dataset"] = getattr(representative_dataset, "description", "custom")
        if keep_float_scope:
            float_bytes, _ = convert(concrete, "float32")
            names = [t.name.decode() if isinstance(t.name, bytes) else t.name
                     for t in schema.ModelT.InitFromPackedBuf(bytearray(float_bytes), 0).subgraphs[0].tensors]
            kept = [n for n in names if n.startswith(keep_float_scope + "/") or f";{keep_float_scope}/" in n]
            settings["kept_float"] = f"{len(kept)} tensors under name scope {keep_float_scope!r} (denylisted_nodes)"
            options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=kept)
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter, debug_dataset=representative_dataset, debug_options=options)
            return debugger.get_nondebug_quantized_model(), settings
    return converter.convert(), settings


# ------------------------------------------------------------------ op lists
_OP_NAMES = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
_TYPE_NAMES = {value: name for name, value in vars(schema.TensorType).items() if not name.startswith("_")}


def read_ops(model_bytes):
    """[(op name, subgraph index)] of every operator of a .tflite flatbuffer.

    Custom ops are named by their custom code (Flex ops start with "Flex").
    """
    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    names = []
    for code in model.operatorCodes:
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        name = _OP_NAMES.get(builtin, f"BUILTIN_{builtin}")
        if name == "CUSTOM":
            custom = code.customCode
            name = custom.decode() if isinstance(custom, bytes) else str(custom)
        names.append(name)
    ops = []
    for index, subgraph in enumerate(model.subgraphs):
        for op in subgraph.operators or []:
            ops.append((names[op.opcodeIndex], index))
    return ops


def _tensor_is_constant(model, tensor):
    buffer = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
    return buffer is not None and buffer.data is not None and len(buffer.data) > 0


def unfolded_batch_norms(model_bytes):
    """Convolutions whose output goes straight into a per-channel constant MUL (an unfolded BatchNorm)."""
    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    codes = [_OP_NAMES.get(max(c.builtinCode, c.deprecatedBuiltinCode)) for c in model.operatorCodes]
    found = []
    for subgraph in model.subgraphs:
        consumers = {}
        for i, op in enumerate(subgraph.operators or []):
            for t in op.inputs:
                consumers.setdefault(int(t), []).append(i)
        for i, op in enumerate(subgraph.operators or []):
            if codes[op.opcodeIndex] not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                continue
            users = consumers.get(int(op.outputs[0]), [])
            if len(users) != 1:
                continue
            user = subgraph.operators[users[0]]
            if codes[user.opcodeIndex] != "MUL":
                continue
            others = [subgraph.tensors[t] for t in user.inputs if t != op.outputs[0]]
            if others and all(_tensor_is_constant(model, t) for t in others):
                found.append(i)
    return found


def check_ops(model_bytes):
    """Raises ValueError naming every Flex/custom op, variable op or unfolded BatchNorm; returns the op list."""
    ops = read_ops(model_bytes)
    problems = []
    flex = sorted({name for name, _ in ops if name.startswith("Flex")})
    custom = sorted({name for name, _ in ops if not name.isupper() and not name.startswith("Flex")})
    variables = sorted({name for name, _ in ops if name in FORBIDDEN_OPS})
    if flex:
        problems.append(f"Flex (SELECT_TF_OPS) ops {flex}")
    if custom:
        problems.append(f"custom ops {custom}")
    if variables:
        problems.append(f"variable ops {variables} (convert a frozen function, not live variables)")
    unfolded = unfolded_batch_norms(model_bytes)
    if unfolded:
        problems.append(f"{len(unfolded)} convolution(s) followed by a constant MUL (BatchNorm not folded)")
    if problems:
        raise ValueError("Exported model is not deployable: " + "; ".join(problems) + ".")
    return ops


def op_histogram(model_bytes):
    """{op name: count} over all subgraphs."""
    counts = {}
    for name, _ in read_ops(model_bytes):
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def tensor_types(model_bytes):
    """{dtype name: count} of the primary subgraph's tensors (how much of an int8 model is still float)."""
    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    counts = {}
    for tensor in model.subgraphs[0].tensors:
        name = _TYPE_NAMES.get(tensor.type, str(tensor.type))
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def float_ops_in_quantized(model_bytes):
    """Ops of a quantized model that compute in float32 (every runtime input float32), by name."""
    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    codes = [_OP_NAMES.get(max(c.builtinCode, c.deprecatedBuiltinCode), "CUSTOM") for c in model.operatorCodes]
    counts = {}
    for subgraph in model.subgraphs:
        for op in subgraph.operators or []:
            name = codes[op.opcodeIndex]
            if name in ("QUANTIZE", "DEQUANTIZE"):
                continue
            runtime = [subgraph.tensors[t] for t in op.inputs if t >= 0 and not _tensor_is_constant(model, subgraph.tensors[t])]
            if runtime and all(t.type == schema.TensorType.FLOAT32 for t in runtime):
                counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def run(model_bytes_or_path, inputs, num_threads=2):
    """Runs the serving_default signature once: {name: array} -> {name: array} (LiteRT)."""
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(model_bytes_or_path, (bytes, bytearray)):
        interpreter = Interpreter(model_content=bytes(model_bytes_or_path), num_threads=num_threads)
    else:
        interpreter = Interpreter(model_path=str(model_bytes_or_path), num_threads=num_threads)
    runner = interpreter.get_signature_runner()
    return {k: np.asarray(v) for k, v in runner(**inputs).items()}
