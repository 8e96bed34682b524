"""Reading a converted TFLite model's graph in tests: which convolutions int8 quantized."""

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema

from stt_keras.export import tflite


def conv_weight_types(model_bytes):
    """{output channels of a CONV_2D's weights: tensor type name} (the test graphs give each conv distinct C_out)."""
    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    graph = model.subgraphs[0]
    types = {}
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.CONV_2D:
            weights = graph.tensors[op.inputs[1]]
            types[int(weights.shape[0])] = tflite._TYPE_NAMES[weights.type]
    return types


def random_frames(height, width, count=8, seed=1):
    """A representative dataset of `count` float frames in [-1, 1) for calibrating a test graph."""
    rng = np.random.default_rng(seed)
    return lambda: ({"frame": rng.uniform(-1, 1, (1, height, width, 3)).astype(np.float32)} for _ in range(count))
