"""ONNX export of the streaming step (tf2onnx), and the TensorRT limits it must respect.

Jetson users run ONNX through TensorRT (or ONNX Runtime's TensorRT provider).
Limits that matter for this model (TensorRT 8.6-10 operator docs): TopK needs
K <= 3840 (the top 50% of a 64 x 128 map is 4096), ScatterND only without a
reduction attribute, and Loop bodies run but are slow and fragile. The
delegate-friendly ("dense_masked") form has none of these ops, so it is the TensorRT path.
"""

import numpy as np
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


def export(step_fn, signature, path, opset=OPSET, custom_handlers=None, custom_domains=()):
    """Writes `step_fn` (from export.step.make_step_function) as ONNX to `path`; returns the ModelProto.

    `custom_handlers` ({TF op name: tf2onnx handler}) turn ops ONNX has not into nodes of the
    `custom_domains` (version 1 each); benchmarks/native_onnx.py uses them for the native kernels.
    """
    import tf2onnx  # optional dependency: only the ONNX export needs it

    handlers = {op: (_select_as_where, []) for op in ("Select", "SelectV2")}
    handlers.update({op: (handler, []) for op, handler in (custom_handlers or {}).items()})
    opsets = [onnx.helper.make_opsetid(domain, 1) for domain in custom_domains] or None
    model, _ = tf2onnx.convert.from_function(step_fn, input_signature=signature, opset=opset,
                                             custom_op_handlers=handlers, extra_opset=opsets)
    model = resize_to_sizes(model)
    onnx.save(model, str(path))
    return model


def resize_to_sizes(model):
    """`model` with every Resize given its output `sizes` instead of float `scales`; returns it.

    tf2onnx writes a static bilinear resize as Resize(scales=out/in in float32). ONNX
    takes the output size as floor(in * scale), and a ratio that float32 cannot hold
    exactly rounds below the integer: the PSP head resizes its 3-bin pool (3 columns)
    to a 20-column map with scale 6.6666665, and 3 * 6.6666665 floors to 19, so the
    model fails to load (ShapeInferenceError at the concat) at every feature size that
    is not a multiple of the pyramid bins. With `sizes` ONNX uses exactly the size
    TensorFlow resized to, and the coordinate transform takes the exact ratio out/in
    as TensorFlow does. The size is round(in * scale): the float32 ratio is within a
    relative 1e-7 of out/in, far closer than half a pixel.
    """
    replaced = set()
    for _ in range(1 + sum(n.op_type == "Resize" for n in model.graph.node)):
        shapes = _inferred_shapes(model)
        constants = _constants(model.graph)
        changed = pending = False
        for node in model.graph.node:
            if node.op_type != "Resize" or len(node.input) < 3 or not node.input[2] or (
                    len(node.input) > 3 and node.input[3]):
                continue
            scales = constants.get(node.input[2])
            shape = shapes.get(node.input[0])
            if scales is None or scales.size == 0:
                continue
            if shape is None or None in shape:
                pending = True  # its input's shape shows once the resizes before it are fixed
                continue
            sizes = np.round(np.asarray(shape, np.float64) * scales.astype(np.float64)).astype(np.int64)
            name = f"{node.name}/sizes"
            model.graph.initializer.append(numpy_helper.from_array(sizes, name))
            replaced.add(node.input[2])
            node.input[2] = ""  # scales and sizes are exclusive; an empty name is the absent optional input
            if len(node.input) > 3:
                node.input[3] = name
            else:
                node.input.append(name)
            changed = True
        if not changed:
            if pending:
                raise RuntimeError("ONNX export: a Resize node's input shape is unknown; cannot give it static sizes.")
            break
    used = _used_names(model.graph)
    for init in [init for init in model.graph.initializer if init.name in replaced and init.name not in used]:
        model.graph.initializer.remove(init)  # the replaced scales (ONNX Runtime warns about unused initializers)
    return model


def _used_names(graph):
    """Every tensor name a node of `graph` or of its subgraphs (Loop bodies) reads."""
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                names |= _used_names(attr.g)
    return names


def _inferred_shapes(model):
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    shapes = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims:
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


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
