"""The STT block's maths around the attention, written once for both implementations.

`SparseTemporalTransformer` ("sparse": matmuls on the selected points, `tf.nn.moments`
norms) and `dense_masked` (1x1 convolutions on the whole map, moment-free norms for
mobile GPUs) compute the same function with different ops. Each passes its own
`linear(x, kernel, bias)` and `layer_norm(x, gamma, beta)`; the order of the steps,
the norm_first branches, the residual gate and the name scopes are here. The scopes
"query", "output" and "ffn" are the sub-scopes int8 export quantizes (`dense_masked.QUANTIZABLE`).
"""

import math

import tensorflow as tf


def key_value_weights(stt):
    """W^K and W^V side by side (kernel [d, 2 d_r], bias [2 d_r]): one projection gives a frame's
    keys then values, the per-frame map streaming caches."""
    (key_kernel, key_bias), (value_kernel, value_bias) = stt.weights_of("key"), stt.weights_of("value")
    return tf.concat([key_kernel, value_kernel], axis=1), tf.concat([key_bias, value_bias], axis=0)


def query_scale(stt):
    """1 / sqrt(d_head), the attention's logit scale, folded into the projected queries."""
    return 1.0 / math.sqrt(stt.reduced_channels // stt.num_heads)


def project_queries(stt, points, linear, layer_norm):
    """W^Q of query points [.., d] (after the first LayerNorm with norm_first), scaled by `query_scale`."""
    if stt.norm_first:
        points = layer_norm(points, *stt.weights_of("norm1"))
    with tf.name_scope("query"):
        return linear(points, *stt.weights_of("query")) * query_scale(stt)


# The last linear of each residual branch and the gate that multiplies the branch (`stt.residual_gate`).
BRANCH_GATES = {"output": "attention", "ffn2": "ffn"}


def branch_weights(stt, sublayer):
    """(kernel, bias) of a residual branch's last linear ("output": W^O, "ffn2": the FFN's output layer).

    With `stt.residual_gate` the branch's per-channel gate gamma [d] (`stt.gate_of`) is folded in:
    (kernel * gamma, bias * gamma), the same function as gamma * linear(x). Folded here, every
    implementation and export reads the gated weights (a constant in an exported graph, and what
    int8 quantizes per channel). Every reader of W^O and of the FFN's output layer goes through here.
    """
    kernel, bias = stt.weights_of(sublayer)
    if not stt.residual_gate:
        return kernel, bias
    gamma = stt.gate_of(BRANCH_GATES[sublayer])
    return kernel * gamma, bias * gamma


def post_attention(stt, points, attended, linear, layer_norm):
    """The rest of the block at full width: (query points [.., d], heads [.., d_r]) -> [.., d].

    W^O maps the concatenated heads back to d; then the paper's post-norm
    X = LN(q + MH), Y = LN(X + FFN(X)), or with `stt.norm_first` the pre-norm
    X = q + MH, Y = X + FFN(LN(X)) (its first LayerNorm is in `project_queries`); with
    `stt.residual_gate` MH and FFN are multiplied by their gates (`branch_weights`).
    """
    with tf.name_scope("output"):
        mixed = linear(attended, *branch_weights(stt, "output"))

    def ffn(x):
        with tf.name_scope("ffn"):
            return linear(tf.nn.relu(linear(x, *stt.weights_of("ffn1"))), *branch_weights(stt, "ffn2"))

    if stt.norm_first:
        x = points + mixed
        return x + ffn(layer_norm(x, *stt.weights_of("norm2")))
    x = layer_norm(points + mixed, *stt.weights_of("norm1"))
    return layer_norm(x + ffn(x), *stt.weights_of("norm2"))
