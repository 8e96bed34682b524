"""The browser's copy of an exported model for WebGPU: every 1-D GATHER index tensor becomes [1, n].

LiteRT.js 2.5.3's WebGPU delegate claims GATHER with 1-D indices and then fails to build the kernel,
and with it the whole model:

    Failed to create litert::ml_drift::DelegateKernelLiteRt: INVALID_ARGUMENT: Unable to parse bc
    coord for BATCH axis ... selector object=indices ... shape: {bhwc, {400, 1, 1, 1}}

(the 1-D index tensor is laid out along the batch axis). The dense_masked-form step has no gathers (it cuts
its tiles by slices, stt_keras/layers/dense_masked.py): its copy is the file itself, and LiteRT.js
runs all of it on WebGPU. Another model with such gathers (LiteRT's GPU accelerator in ai-edge-litert
2.3.0 runs them fine) gets the index tensor reshaped to [1, n]: the delegate declines those gathers
("Only support 1D indices"), LiteRT.js runs them on the CPU (Wasm, model partitioning needs JSPI)
and everything else on WebGPU.

The function is the same: GATHER's output gains a leading 1 at the gathered axis, and only gathers
whose output goes to RESHAPE ops alone (which take an explicit shape) are changed. The tests check
the page's labels against the untouched model in Python LiteRT. Needs only ai-edge-litert's
flatbuffer schema, no TensorFlow.
"""

import flatbuffers

try:
    from ai_edge_litert import schema_py_generated as schema
except ImportError:  # pragma: no cover - the edge demo needs ai-edge-litert anyway
    schema = None


def _code(model, op):
    code = model.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode)  # the deprecated field holds codes < 127


def gather_indices_2d(data):
    """(new model bytes, number of gathers changed) for .tflite bytes; the same bytes if none changed."""
    if schema is None:
        raise RuntimeError("ai-edge-litert is not installed: pip install ai-edge-litert")
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    gather, reshape = schema.BuiltinOperator.GATHER, schema.BuiltinOperator.RESHAPE
    changed = 0
    for graph in model.subgraphs:
        readers = {}
        for op in graph.operators:
            for tensor in op.inputs:
                readers.setdefault(int(tensor), []).append(op)
        outputs = {int(t) for t in graph.outputs}
        users = {}  # index tensor -> the gathers reading it as indices
        for op in graph.operators:
            if _code(model, op) == gather:
                users.setdefault(int(op.inputs[1]), []).append(op)
        for index, gathers in users.items():
            tensor = graph.tensors[index]
            if len(tensor.shape) != 1 or any(getattr(g.builtinOptions, "batchDims", 0) for g in gathers) or any(_code(model, r) != gather or int(r.inputs[1]) != index
                                             for r in readers[index]):
                continue
            if any(int(g.outputs[0]) in outputs or any(_code(model, r) != reshape for r in readers.get(int(g.outputs[0]), []))
                   for g in gathers):
                continue
            tensor.shape = [1, int(tensor.shape[0])]
            if tensor.shapeSignature is not None:
                tensor.shapeSignature = [1, int(tensor.shapeSignature[0])]
            for g in gathers:
                options = g.builtinOptions
                params = graph.tensors[int(g.inputs[0])]
                axis = (options.axis if options is not None else 0) % len(params.shape)
                out = graph.tensors[int(g.outputs[0])]
                out.shape = [int(d) for d in out.shape[:axis]] + [1] + [int(d) for d in out.shape[axis:]]
                if out.shapeSignature is not None:
                    sig = [int(d) for d in out.shapeSignature]
                    out.shapeSignature = sig[:axis] + [1] + sig[axis:]
                changed += 1
    if not changed:
        return bytes(data), 0
    builder = flatbuffers.Builder(len(data) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), changed
