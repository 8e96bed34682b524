"""TFLite (LiteRT) conversion of the streaming step, and the op-list check every model must pass.

Conversion goes through a *frozen* concrete function: the variables become
constants before the converter sees the graph. Converting a SavedModel (or a
live function) instead keeps VAR_HANDLE/READ_VARIABLE ops, leaves BatchNorm
unfolded and, for this model, produced NaNs; XNNPACK also runs such a model far
slower. Keras 3's `export(format="litert")` turns on SELECT_TF_OPS (Flex) by
default; we never do.
"""

import re

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


FLOAT_HEAD_CONVS = 1  # int8: the classifier conv and everything after it stay float32 (see `head_tensors`)
DECODER_SCOPE = "decoder"  # the segmenter's decoder layer: float_head="decoder" keeps all of it float


HEAD_OUTPUTS = ("logits", "labels")


def head_tensors(float_bytes, convs=1, outputs=HEAD_OUTPUTS):
    """Output tensor names of the model's "head" in a float .tflite: the last `convs` convolutions
    before the `outputs` (signature names) and every op downstream of them (the logits'
    upsampling, on-device labels).

    Walks back from those outputs through non-convolution ops to the first CONV_2D /
    DEPTHWISE_CONV_2D on each path (the classifier), `convs` times (2: the conv that feeds the
    classifier too), then takes every op that consumes, transitively, an output of those
    convolutions. Other outputs (the STT state) are not walked from.
    """
    if convs < 0:
        raise ValueError(f"`convs` must be >= 0, got {convs}.")
    model = schema.ModelT.InitFromPackedBuf(bytearray(float_bytes), 0)
    codes = [_OP_NAMES.get(max(c.builtinCode, c.deprecatedBuiltinCode), "CUSTOM") for c in model.operatorCodes]
    graph = model.subgraphs[0]
    ops = list(graph.operators or [])
    producer = {int(t): i for i, op in enumerate(ops) for t in op.outputs}
    consumers = {}
    for i, op in enumerate(ops):
        for t in op.inputs:
            consumers.setdefault(int(t), []).append(i)

    def is_conv(i):
        return codes[ops[i].opcodeIndex] in ("CONV_2D", "DEPTHWISE_CONV_2D")

    def convs_above(tensors):
        # The first convolution on every path up from `tensors` (runtime inputs only).
        found, seen, stack = set(), set(), [producer[t] for t in tensors if t in producer]
        while stack:
            i = stack.pop()
            if i in seen:
                continue
            seen.add(i)
            if is_conv(i):
                found.add(i)
                continue
            stack.extend(producer[int(t)] for t in ops[i].inputs if int(t) in producer)
        return found

    signature = model.signatureDefs[0] if model.signatureDefs else None
    if signature is None:
        raise ValueError("head_tensors needs a model with a signature (named outputs).")
    named = {(o.name.decode() if isinstance(o.name, bytes) else o.name): int(o.tensorIndex) for o in signature.outputs}
    heads, frontier = set(), [named[name] for name in outputs if name in named]
    if not frontier:
        raise ValueError(f"The model has none of the outputs {list(outputs)}; its outputs: {sorted(named)}.")
    for _ in range(convs):
        level = convs_above(frontier)
        if not level:
            break
        heads |= level
        frontier = [int(ops[i].inputs[0]) for i in level]  # the convolution's data input
    kept, stack = set(), list(heads)
    while stack:
        i = stack.pop()
        if i in kept:
            continue
        kept.add(i)
        for t in ops[i].outputs:
            stack.extend(consumers.get(int(t), []))
    names = []
    for i in sorted(kept):
        for t in ops[i].outputs:
            name = graph.tensors[t].name
            names.append(name.decode() if isinstance(name, bytes) else name)
    return names


def _tensor_names(model_bytes):
    return [t.name.decode() if isinstance(t.name, bytes) else t.name
            for t in schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0).subgraphs[0].tensors]


def _in_scope(name, scope, numbered=True):
    """Whether a (possibly fused, ";"-joined) tensor name lies under name scope `scope`; `numbered`
    also accepts the traced copies Keras names `scope_1/`, `scope_2/`, ..."""
    pattern = re.escape(scope) + (r"(_\d+)?/" if numbered else "/")
    return any(re.match(pattern, part) for part in name.split(";"))


def convert(concrete, quantization="float32", representative_dataset=None, keep_float_scope=None,
            float_head=FLOAT_HEAD_CONVS, quantized_subscopes=()):
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
            Its plain 1x1 convolutions are the exception (`quantized_subscopes`).
        float_head: for "int8", how many of the last convolutions (and every op
            after them: the logits' upsampling, on-device labels) stay float32
            (`head_tensors`; same denylist). 1 (default): the classifier, so the
            logits are float and labels do not fall on int8 ties; 0: none;
            "decoder": every op of the model's decoder layer (name scope
            `DECODER_SCOPE`) and the head (see docs/gpu_accelerator.md for what
            each costs and buys).
        quantized_subscopes: for "int8", name scopes inside `keep_float_scope`
            whose ops are quantized after all (the STT block's plain 1x1
            convolutions: `dense_masked.QUANTIZABLE`).
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
        denylist = []
        if keep_float_scope or float_head:
            float_bytes, _ = convert(concrete, "float32")
        if keep_float_scope:
            kept = [n for n in _tensor_names(float_bytes) if _in_scope(n, keep_float_scope, numbered=False)]
            inner = [f"{keep_float_scope}/{sub}" for sub in quantized_subscopes]
            quantized = [n for n in kept if any(_in_scope(n, scope) for scope in inner)]
            kept = [n for n in kept if n not in quantized]
            settings["kept_float"] = f"{len(kept)} tensors under name scope {keep_float_scope!r} (denylisted_nodes)"
            if quantized_subscopes:
                settings["quantized_in_float_scope"] = (f"{len(quantized)} tensors under {', '.join(inner)} "
                                                        f"(not denylisted)")
            denylist += kept
        if float_head == "decoder":
            head = [n for n in _tensor_names(float_bytes) if _in_scope(n, DECODER_SCOPE)]
            head += head_tensors(float_bytes, 1)
            settings["float_head"] = f"the decoder: {len(head)} op outputs (denylisted_nodes)"
            denylist += [n for n in head if n not in denylist]
        elif float_head:
            head = head_tensors(float_bytes, int(float_head))
            settings["float_head"] = (f"the last {float_head} convolution(s) before the outputs and the "
                                      f"{len(head)} op outputs from there on (denylisted_nodes)")
            denylist += [n for n in head if n not in denylist]
        if denylist:
            options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=denylist)
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
