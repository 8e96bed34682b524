"""ONNX export of the streaming step (tf2onnx), and the TensorRT limits it must respect.

Jetson users run ONNX through TensorRT (or ONNX Runtime's TensorRT provider).
Limits that matter for this model (TensorRT 8.6-10 operator docs): TopK needs
K <= 3840 (the top 50% of a 64 x 128 map is 4096), ScatterND only without a
reduction attribute, and Loop bodies run but are slow and fragile. The
delegate-friendly ("gpu") form has none of these ops, so it is the TensorRT path.
"""

import onnx
from onnx import numpy_helper

OPSET = 17
TENSORRT_TOPK_MAX_K = 3840


def _select_as_where(ctx, node, name, args):
    """tf2onnx's handler of Select/SelectV2 with the float case kept a `Where`.

    tf2onnx (1.16) writes a float select as cond * x + (1 - cond) * y (faster in ONNX Runtime), which is
    NaN wherever the unselected branch is NaN or inf: the reset of the streaming step (`tf.where(reset,
    fresh, state)`) would no longer ignore a non-finite incoming state. `Where` is exact, and TensorRT
    runs it.
    """
    from tf2onnx.onnx_opset.controlflow import Select

    node.set_attr("handles_nan", True)  # the flag tf2onnx's own rewriters set to keep the Where
    Select.version_9(ctx, node)


def export(step_fn, signature, path, opset=OPSET):
    """Writes `step_fn` (from export.step.make_step_function) as ONNX to `path`; returns the ModelProto."""
    import tf2onnx  # optional dependency: only the ONNX export needs it

    handlers = {op: (_select_as_where, []) for op in ("Select", "SelectV2")}
    model, _ = tf2onnx.convert.from_function(step_fn, input_signature=signature, opset=opset, output_path=str(path),
                                             custom_op_handlers=handlers)
    return model


def _constants(graph):
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def tensorrt_issues(model):
    """Human-readable list of what TensorRT would refuse or handle poorly in an ONNX model."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    issues = []

    def visit(graph, where):
        constants = _constants(graph)
        for node in graph.node:
            if node.op_type == "TopK":
                k = constants.get(node.input[1]) if len(node.input) > 1 else None
                if k is None:
                    issues.append(f"{where}TopK {node.name}: K is not a constant")
                elif int(k.reshape(-1)[0]) > TENSORRT_TOPK_MAX_K:
                    issues.append(f"{where}TopK {node.name}: K={int(k.reshape(-1)[0])} > {TENSORRT_TOPK_MAX_K}")
            elif node.op_type == "ScatterND":
                reduction = [a.s.decode() for a in node.attribute if a.name == "reduction"]
                if reduction and reduction[0] != "none":
                    issues.append(f"{where}ScatterND {node.name}: reduction={reduction[0]}")
            elif node.op_type in ("Loop", "If"):
                issues.append(f"{where}{node.op_type} {node.name}: control flow (slow or unsupported in TensorRT)")
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g, f"{where}{node.op_type} {node.name} > ")

    visit(model.graph, "")
    return issues


def op_types(model):
    """Sorted op types of the main graph."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    return sorted({node.op_type for node in model.graph.node})
