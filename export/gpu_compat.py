"""Checks a .tflite model against the LiteRT GPU delegate's own rules; reports what leaves the GPU.

`tf.lite.experimental.Analyzer(gpu_compatibility=True)` is broken in TF 2.21 (it
calls a model with TOPK_V2 and SCATTER_ND compatible), so this module encodes the
rules from the delegate's sources:

- per-op checks: tensorflow/lite/tools/versioning/gpu_compatibility.cc,
  `CheckGpuDelegateCompatibility` (the logic that used to be the parsers'
  `IsSupported` in delegates/gpu/common/model_builder.cc). Every op not in its
  switch (TOPK_V2, SCATTER_ND, GATHER_ND, ARG_MAX, ARG_MIN, WHILE, IF, the
  variable ops, ...) is unsupported. Encoded here: the supported set; GATHER with
  1-D int32 indices and a non-int32 operand; MEAN/SUM/REDUCE_* with constant
  int32 axes; STRIDED_SLICE without ellipsis/new-axis/shrink-axis masks on 3-D or
  4-D input; SLICE on 3-D/4-D input; PAD with a 3x2 or 4x2 paddings tensor; CAST
  only bool<->float and int32<->float32; MUL of equal-rank inputs where neither
  is smaller in every dimension; SOFTMAX with beta 1; elementwise ops with 1 or 2
  operands; fused activations other than SIGN_BIT; custom ops only the four the
  delegate knows.
- model-level checks (model_builder.cc, `GetOpsToReplace` and the tensor
  readers): runtime (non-constant) tensors of rank <= 4, static shapes (no -1 in
  shape_signature), runtime tensor types float32/float16 (int8/uint8 too: the
  delegate accepts quantized models) except where an op needs otherwise
  (bool out of comparisons, bool/int32 through CAST, bool conditions of SELECT,
  int32 indices of GATHER and friends), no ops in other subgraphs (control flow).
Simplified: op versions are not checked, nor rules about specific input shapes
beyond the above (e.g. depthwise multipliers) that our models never meet.

Partitions follow TFLite's `PartitionGraphIntoIndependentNodeSubsets`: walk the
graph taking every ready node of the current kind (GPU / not GPU) before
switching kind; each GPU run is a partition. By default the delegate takes only
the largest partition (`max_delegated_partitions` = 1); the rest runs on the CPU.

CLI: python -m export.gpu_compat model.tflite [--json]   (exit 0 if fully compatible)
"""

import argparse
import dataclasses
import json
import sys

from tensorflow.lite.python import schema_py_generated as schema

_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_TYPE_NAMES = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
T = schema.TensorType

ELEMENTWISE_1 = {"ABS", "CEIL", "COS", "ELU", "EXP", "FLOOR", "GELU", "LOG", "LOGISTIC", "NEG", "RSQRT", "SIGN",
                 "SIN", "SQRT", "SQUARE", "TANH", "HARD_SWISH"}
ELEMENTWISE_2 = {"ATAN2", "DIV", "EQUAL", "FLOOR_DIV", "FLOOR_MOD", "GREATER", "GREATER_EQUAL", "LOGICAL_AND", "LESS",
                 "LESS_EQUAL", "MAXIMUM", "MINIMUM", "NOT_EQUAL", "POW", "SQUARED_DIFFERENCE", "SUB"}
COMPARISONS = {"EQUAL", "GREATER", "GREATER_EQUAL", "LESS", "LESS_EQUAL", "NOT_EQUAL"}
SIMPLE_SUPPORTED = {"ADD", "ADD_N", "AVERAGE_POOL_2D", "MAX_POOL_2D", "BATCH_MATMUL", "CONCATENATION", "CONV_2D",
                    "DEPTHWISE_CONV_2D", "DEPTH_TO_SPACE", "SPACE_TO_DEPTH", "DEQUANTIZE", "QUANTIZE",
                    "FULLY_CONNECTED", "PACK", "PRELU", "RELU", "RELU6", "RELU_N1_TO_1", "LEAKY_RELU", "RESHAPE",
                    "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "SPLIT", "SPLIT_V", "TILE", "TRANSPOSE",
                    "TRANSPOSE_CONV", "CUMSUM", "ONE_HOT", "DYNAMIC_UPDATE_SLICE", "DENSIFY", "EMBEDDING_LOOKUP",
                    "LSTM", "STABLEHLO_CLAMP"}
KNOWN_CUSTOM = {"Convolution2DTransposeBias", "MaxPoolingWithArgmax2D", "MaxUnpooling2D", "Resampler"}
FLOAT_TYPES = {T.FLOAT32, T.FLOAT16}
QUANT_TYPES = {T.INT8, T.UINT8}


@dataclasses.dataclass
class OpReport:
    index: int
    name: str
    supported: bool
    reasons: list


@dataclasses.dataclass
class GpuReport:
    ops: list
    partitions: list  # lists of op indices (primary subgraph), in execution order
    other_subgraph_ops: int

    @property
    def compatible(self):
        return all(op.supported for op in self.ops) and self.other_subgraph_ops == 0 and len(self.partitions) <= 1

    @property
    def largest_partition(self):
        return max((len(p) for p in self.partitions), default=0)

    def unsupported_by_type(self):
        """{op name: (count, sorted reasons)} of the ops that would leave the GPU."""
        table = {}
        for op in self.ops:
            if not op.supported:
                count, reasons = table.get(op.name, (0, set()))
                table[op.name] = (count + 1, reasons | set(op.reasons))
        return {k: (c, sorted(r)) for k, (c, r) in sorted(table.items())}

    def summary(self):
        n = len(self.ops)
        lines = [f"GPU delegate check: {n} ops, {sum(o.supported for o in self.ops)} supported, "
                 f"{len(self.partitions)} GPU partition(s), largest {self.largest_partition} ops "
                 f"({100.0 * self.largest_partition / max(n, 1):.0f}% of the graph on the GPU with the default "
                 "max_delegated_partitions=1)."]
        if self.other_subgraph_ops:
            lines.append(f"  {self.other_subgraph_ops} ops live in control-flow subgraphs (never delegated).")
        for name, (count, reasons) in self.unsupported_by_type().items():
            lines.append(f"  {name} x{count}: {'; '.join(reasons)}")
        lines.append("  -> fully compatible" if self.compatible else "  -> NOT fully compatible")
        return "\n".join(lines)

    def to_dict(self):
        return {
            "compatible": self.compatible,
            "num_ops": len(self.ops),
            "supported_ops": sum(o.supported for o in self.ops),
            "partitions": [len(p) for p in self.partitions],
            "largest_partition": self.largest_partition,
            "other_subgraph_ops": self.other_subgraph_ops,
            "unsupported": {k: {"count": c, "reasons": r} for k, (c, r) in self.unsupported_by_type().items()},
        }


class _Graph:
    def __init__(self, model_bytes):
        self.model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
        self.codes = []
        for code in self.model.operatorCodes:
            name = _OP_NAMES.get(max(code.builtinCode, code.deprecatedBuiltinCode), "UNKNOWN")
            custom = code.customCode.decode() if isinstance(code.customCode, bytes) else code.customCode
            self.codes.append((name, custom))
        self.subgraph = self.model.subgraphs[0]

    def tensor(self, index):
        return None if index < 0 else self.subgraph.tensors[index]

    def is_const(self, index):
        t = self.tensor(index)
        if t is None:
            return False
        buffer = self.model.buffers[t.buffer] if t.buffer < len(self.model.buffers) else None
        return buffer is not None and buffer.data is not None and len(buffer.data) > 0

    def const_value(self, index):
        import numpy as np

        t = self.tensor(index)
        data = bytes(bytearray(self.model.buffers[t.buffer].data))
        dtype = {T.INT32: np.int32, T.INT64: np.int64, T.FLOAT32: np.float32}.get(t.type)
        return None if dtype is None else np.frombuffer(data, dtype)


def _shape(t):
    return [] if t.shape is None else [int(d) for d in t.shape]


def _check_op(graph, op):
    name, custom = graph.codes[op.opcodeIndex]
    inputs = [i for i in op.inputs]
    outputs = [i for i in op.outputs]
    runtime_in = [i for i in inputs if i >= 0 and not graph.is_const(i)]
    options = op.builtinOptions
    reasons = []

    if name == "CUSTOM":
        if custom not in KNOWN_CUSTOM:
            kind = "Flex (TF) op" if str(custom).startswith("Flex") else "custom op"
            reasons.append(f"{kind} {custom} is not a GPU op")
        return f"CUSTOM:{custom}", reasons
    supported = name in SIMPLE_SUPPORTED or name in ELEMENTWISE_1 or name in ELEMENTWISE_2 or name in {
        "GATHER", "MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD", "MUL", "SLICE", "STRIDED_SLICE",
        "PAD", "PADV2", "MIRROR_PAD", "CAST", "SOFTMAX", "SELECT", "SELECT_V2"}
    if not supported:
        reasons.append(f"{name} is not a GPU op")
        return name, reasons

    fused = getattr(options, "fusedActivationFunction", None)
    if fused == schema.ActivationFunctionType.SIGN_BIT:
        reasons.append("fused SIGN_BIT activation")
    if name in ELEMENTWISE_1 and (len(runtime_in) != 1 or len(inputs) != 1):
        reasons.append(f"{name} needs exactly one runtime input")
    if name in ELEMENTWISE_2 and not (1 <= len(runtime_in) <= 2 and len(inputs) == 2):
        reasons.append(f"{name} handles 1 or 2 operands")
    if name == "GATHER":
        if len(inputs) != 2 or not runtime_in:
            reasons.append("GATHER needs 1 or 2 operands with a runtime one")
        elif graph.tensor(inputs[0]).type == T.INT32:
            reasons.append("GATHER does not accept an int32 operand")
        elif len(_shape(graph.tensor(inputs[1]))) != 1:
            reasons.append(f"GATHER supports 1-D indices only, got rank {len(_shape(graph.tensor(inputs[1])))}")
        elif graph.tensor(inputs[1]).type != T.INT32:
            reasons.append("GATHER needs int32 indices")
    if name in ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD"):
        if len(inputs) < 2 or not graph.is_const(inputs[1]) or graph.tensor(inputs[1]).type != T.INT32:
            reasons.append(f"{name} needs constant int32 axes")
    if name == "STRIDED_SLICE":
        for mask in ("ellipsisMask", "newAxisMask", "shrinkAxisMask"):
            if getattr(options, mask, 0):
                reasons.append(f"STRIDED_SLICE with {mask} (shrink/new-axis/ellipsis masks are not supported)")
        if len(_shape(graph.tensor(inputs[0]))) not in (3, 4):
            reasons.append("STRIDED_SLICE supports 3-D or 4-D input only")
    if name == "SLICE" and len(_shape(graph.tensor(inputs[0]))) not in (3, 4):
        reasons.append("SLICE supports 3-D or 4-D input only")
    if name in ("PAD", "PADV2", "MIRROR_PAD"):
        paddings = _shape(graph.tensor(inputs[1]))
        if len(paddings) != 2 or paddings[0] not in (3, 4) or paddings[1] != 2:
            reasons.append(f"{name} needs a 3x2 or 4x2 paddings tensor, got {paddings}")
        if len(runtime_in) != 1:
            reasons.append(f"{name} needs exactly one runtime input")
    if name == "CAST":
        src, dst = graph.tensor(inputs[0]).type, graph.tensor(outputs[0]).type
        ok = (src == T.BOOL and dst in FLOAT_TYPES) or (src in FLOAT_TYPES and dst == T.BOOL) or (
            src in (T.FLOAT32, T.INT32) and dst in (T.FLOAT32, T.INT32))
        if not ok:
            reasons.append(f"CAST {_TYPE_NAMES.get(src)} -> {_TYPE_NAMES.get(dst)} is not supported")
    if name == "MUL" and len(inputs) == 2:
        a, b = _shape(graph.tensor(inputs[0])), _shape(graph.tensor(inputs[1]))
        if len(a) == len(b) and any(x < y for x, y in zip(a, b)) and any(y < x for x, y in zip(a, b)):
            reasons.append(f"MUL where each input is smaller in some dimension ({a} x {b})")
    if name == "SOFTMAX" and getattr(options, "beta", 1.0) != 1.0:
        reasons.append("SOFTMAX beta != 1")
    if name == "RESHAPE" and len(runtime_in) != 1:
        reasons.append("RESHAPE needs exactly one runtime input")
    return name, reasons


def _allowed_types(name, position, graph, tensor_index, is_output):
    """Runtime tensor types the delegate accepts at this op position (model_builder.cc)."""
    allowed = set(FLOAT_TYPES) | QUANT_TYPES
    if name == "CAST":
        allowed |= {T.BOOL, T.INT32}
    if name in COMPARISONS and is_output:
        allowed |= {T.BOOL}
    if name == "LOGICAL_AND":
        allowed |= {T.BOOL}
    if name in ("SELECT", "SELECT_V2") and position == 0 and not is_output:
        allowed |= {T.BOOL}
    if name in ("GATHER", "ONE_HOT", "EMBEDDING_LOOKUP") and position != 0 and not is_output:
        allowed |= {T.INT32}
    if name in ("ONE_HOT", "EMBEDDING_LOOKUP") and position == 0 and not is_output:
        allowed |= {T.INT32}
    if name == "DYNAMIC_UPDATE_SLICE" and position == 2 and not is_output:
        allowed |= {T.INT32}
    return allowed


def _tensor_reasons(graph, op, name):
    reasons = []
    for is_output, indices in ((False, op.inputs), (True, op.outputs)):
        for position, index in enumerate(indices):
            if index < 0 or graph.is_const(index):
                continue
            t = graph.tensor(index)
            shape = _shape(t)
            label = f"{'output' if is_output else 'input'} {position} {shape}"
            if len(shape) > 4:
                reasons.append(f"runtime tensor of rank {len(shape)} (max 4): {label}")
            signature = [] if t.shapeSignature is None else [int(d) for d in t.shapeSignature]
            if any(d < 0 for d in signature):
                reasons.append(f"dynamic shape {signature}: {label}")
            if t.type not in _allowed_types(name, position, graph, index, is_output):
                reasons.append(f"runtime {_TYPE_NAMES.get(t.type, t.type)} tensor: {label}")
    return reasons


def _partitions(graph, supported):
    """TFLite's greedy partitioning into alternating supported/unsupported node subsets."""
    ops = graph.subgraph.operators or []
    producer = {}
    for i, op in enumerate(ops):
        for t in op.outputs:
            producer[int(t)] = i
    deps = [{producer[int(t)] for t in op.inputs if int(t) in producer} for op in ops]
    done = [False] * len(ops)
    remaining = len(ops)
    kind = supported[0] if ops else True
    result = []
    while remaining:
        subset = []
        progress = True
        while progress:
            progress = False
            for i in range(len(ops)):
                if not done[i] and supported[i] == kind and all(done[d] for d in deps[i]):
                    done[i] = True
                    remaining -= 1
                    subset.append(i)
                    progress = True
        if subset and kind:
            result.append(subset)
        kind = not kind
    return result


def check_model(model):
    """GpuReport of a .tflite model given as bytes or a path."""
    if not isinstance(model, (bytes, bytearray)):
        with open(model, "rb") as f:
            model = f.read()
    graph = _Graph(model)
    reports = []
    for i, op in enumerate(graph.subgraph.operators or []):
        name, reasons = _check_op(graph, op)
        reasons = reasons + _tensor_reasons(graph, op, name)
        reports.append(OpReport(i, name, not reasons, reasons))
    other = sum(len(sg.operators or []) for sg in graph.model.subgraphs[1:])
    return GpuReport(reports, _partitions(graph, [r.supported for r in reports]), other)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m export.gpu_compat", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    report = check_model(args.model)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0 if report.compatible else 1


if __name__ == "__main__":
    sys.exit(main())
