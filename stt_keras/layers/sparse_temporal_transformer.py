"""The Sparse Temporal Transformer block (METHOD.md, "The network" to "The temporal transformer encoder")."""

import math

import keras
import tensorflow as tf

from stt_keras import kernels
from stt_keras.layers import nsm, temporal_attention, windows

KEY_SELECTIONS = ("window", "all")


@keras.saving.register_keras_serializable(package="stt_keras")
class SparseTemporalTransformer(keras.layers.Layer):
    """Mixes the previous frames' features into the complex points of the current one.

    For query map Q [B, h, w, d] and key maps K [B, T, h, w, d] (K[:, 0] the
    farthest frame, K[:, T-1] the nearest):

    1. NSM query selection keeps the round(top_ratio * h * w) most complex points.
    2. A shared linear reduction maps every feature from d to d_r = d / reduction
       (the paper's channel reduction; key and value are the same features).
    3. Each selected point attends, with `num_heads` heads, to the square window
       of radius l_t around it in every key frame (or to every key with
       key_selection="all"); window points outside the map get no weight.
    4. X = LN(q + MH), Y = LN(X + FFN(X)) with FFN = ReLU MLP of width
       ffn_multiplier * d_r; Y is mapped back to d by a linear expansion and
       *replaces* the selected point. Unselected points pass through unchanged.

    The key side can be computed once per frame and cached: `project_keys(K)`
    gives the projected key/value map and `attend(Q, projected)` the output;
    `call(Q, K)` is `attend(Q, project_keys(K))`.

    Args:
        num_key_frames: T (paper: 7).
        start_size, end_size, expansion: window radii s, e, eps (paper: 1, 5, 1);
            see `key_window_radii`.
        neighborhood_radius: NSM radius r (paper: 5).
        top_ratio: fraction of points that become queries, in [0, 1]. 0 returns
            the query unchanged (per-frame baseline); 1 makes every point a query.
        num_heads: attention heads (paper: 8).
        reduction: channel reduction factor (paper: 4). d must be divisible by
            num_heads * reduction.
        key_selection: "window" (sparse) or "all" (the vanilla temporal
            transformer: every key of every frame).
        ffn_multiplier: FFN hidden width as a multiple of d_r.
        layer_norm_epsilon: epsilon of both layer norms.
        tiles_per_step: query tiles per loop step of the windowed attention.
        query_chunk: queries per loop step of the all-keys attention.
        residual: not in the paper. Add the expansion to the selected points
            instead of replacing them, with the expansion initialised to zero, so
            an untrained block is the identity (useful when fine-tuning a trained
            per-frame model).

    Example:
    >>> import numpy as np
    >>> stt = SparseTemporalTransformer(num_key_frames=2, num_heads=2, neighborhood_radius=2)
    >>> q = np.random.rand(1, 8, 8, 16).astype("float32")
    >>> k = np.random.rand(1, 2, 8, 8, 16).astype("float32")
    >>> tuple(stt(q, k).shape)
    (1, 8, 8, 16)
    """

    def __init__(
        self,
        num_key_frames=7,
        start_size=1,
        end_size=5,
        expansion=1,
        neighborhood_radius=5,
        top_ratio=0.5,
        num_heads=8,
        reduction=4,
        key_selection="window",
        ffn_multiplier=4,
        layer_norm_epsilon=1e-5,
        tiles_per_step=4,
        query_chunk=256,
        residual=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.radii = windows.key_window_radii(num_key_frames, start_size, end_size, expansion)
        windows._check_positive_int("neighborhood_radius", neighborhood_radius, allow_zero=True)
        for name, value in (
            ("num_heads", num_heads),
            ("reduction", reduction),
            ("ffn_multiplier", ffn_multiplier),
            ("tiles_per_step", tiles_per_step),
            ("query_chunk", query_chunk),
        ):
            windows._check_positive_int(name, value)
        if key_selection not in KEY_SELECTIONS:
            raise ValueError(f"`key_selection` must be one of {KEY_SELECTIONS}, got {key_selection!r}.")
        self.num_key_frames = num_key_frames
        self.start_size = start_size
        self.end_size = end_size
        self.expansion = expansion
        self.neighborhood_radius = neighborhood_radius
        self.top_ratio = windows.check_ratio(top_ratio)
        self.num_heads = num_heads
        self.reduction = reduction
        self.key_selection = key_selection
        self.ffn_multiplier = ffn_multiplier
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.tiles_per_step = tiles_per_step
        self.query_chunk = query_chunk
        self.residual = bool(residual)

    # ------------------------------------------------------------------ build
    def _check_shapes(self, query_shape, keys_shape):
        query_shape, keys_shape = tuple(query_shape), tuple(keys_shape)
        if len(query_shape) != 4:
            raise ValueError(f"`query` must be [batch, height, width, channels], got shape {query_shape}.")
        if len(keys_shape) != 5:
            raise ValueError(
                f"`keys` must be [batch, frames, height, width, channels], got shape {keys_shape}."
            )
        if keys_shape[1] is not None and keys_shape[1] != self.num_key_frames:
            raise ValueError(
                f"`keys` has {keys_shape[1]} frames but the layer was built for "
                f"num_key_frames={self.num_key_frames}."
            )
        for axis, name in ((1, "height"), (2, "width"), (3, "channels")):
            a, b = query_shape[axis], keys_shape[axis + 1]
            if a is not None and b is not None and a != b:
                raise ValueError(f"`query` and `keys` disagree in {name}: {a} vs {b}.")
            if axis < 3 and a is not None and a < 1:
                raise ValueError(f"`query` {name} must be at least 1, got {a}.")

    def build(self, query_shape, keys_shape):
        self._check_shapes(query_shape, keys_shape)
        d = query_shape[-1]
        if d is None:
            raise ValueError("The channel dimension of `query` must be known.")
        if d % (self.num_heads * self.reduction):
            raise ValueError(
                f"channels d={d} must be divisible by num_heads * reduction = "
                f"{self.num_heads} * {self.reduction} = {self.num_heads * self.reduction}."
            )
        self.channels = d
        d_r = d // self.reduction
        self.reduced_channels = d_r
        f = self.ffn_multiplier * d_r

        def dense(name, shape_in, shape_out):
            kernel = self.add_weight(name=f"{name}_kernel", shape=(shape_in, shape_out), initializer="glorot_uniform")
            bias = self.add_weight(name=f"{name}_bias", shape=(shape_out,), initializer="zeros")
            return kernel, bias

        def norm(name):
            gamma = self.add_weight(name=f"{name}_gamma", shape=(d_r,), initializer="ones")
            beta = self.add_weight(name=f"{name}_beta", shape=(d_r,), initializer="zeros")
            return gamma, beta

        self.reduce_kernel, self.reduce_bias = dense("reduce", d, d_r)
        self.query_kernel, self.query_bias = dense("query", d_r, d_r)
        self.key_kernel, self.key_bias = dense("key", d_r, d_r)
        self.value_kernel, self.value_bias = dense("value", d_r, d_r)
        self.output_kernel, self.output_bias = dense("output", d_r, d_r)
        self.norm1_gamma, self.norm1_beta = norm("norm1")
        self.ffn1_kernel, self.ffn1_bias = dense("ffn1", d_r, f)
        self.ffn2_kernel, self.ffn2_bias = dense("ffn2", f, d_r)
        self.norm2_gamma, self.norm2_beta = norm("norm2")
        self.expand_kernel, self.expand_bias = dense("expand", d_r, d)
        if self.residual:  # start as the identity: selected points keep their features
            self.expand_kernel.assign(tf.zeros_like(self.expand_kernel))
        self.built = True

    # ------------------------------------------------------------- pieces
    def _linear(self, x, kernel, bias):
        return tf.matmul(x, tf.cast(kernel, x.dtype)) + tf.cast(bias, x.dtype)

    def _layer_norm(self, x, gamma, beta):
        x = tf.cast(x, tf.float32)
        mean, var = tf.nn.moments(x, axes=[-1], keepdims=True)
        gamma, beta = tf.cast(gamma, tf.float32), tf.cast(beta, tf.float32)
        return (x - mean) * tf.math.rsqrt(var + self.layer_norm_epsilon) * gamma + beta

    def _build_for_channels(self, channels):
        """Lets `project_keys` and `attend` be the first call (streaming does that)."""
        if not self.built:
            self.build((None, None, None, channels), (None, self.num_key_frames, None, None, channels))

    def _reduce(self, x):
        return self._linear(x, self.reduce_kernel, self.reduce_bias)

    def project_keys(self, keys):
        """Projected key/value map of key frames: [..., h, w, d] -> float32 [..., h, w, 2 d_r].

        Per frame and independent of the query, so streaming inference computes
        it once per frame and caches it.
        """
        return self.project_frame(keys)[1]

    def project_frame(self, features):
        """(reduced, key_values) of frame features [..., h, w, d].

        `reduced` (d_r channels, compute dtype) can be passed to `attend` when the
        same frame is also the query, so the shared reduction runs once.
        """
        features = tf.convert_to_tensor(features)
        self._build_for_channels(features.shape[-1])
        if features.dtype != self.compute_dtype:
            features = tf.cast(features, self.compute_dtype)
        reduced = self._reduce(features)
        kernel = tf.concat([self.key_kernel, self.value_kernel], axis=1)
        bias = tf.concat([self.key_bias, self.value_bias], axis=0)
        return reduced, tf.cast(self._linear(reduced, kernel, bias), tf.float32)

    def attend(self, query, key_values, reduced=None):
        """STT output for a query map and projected key/values from `project_keys`.

        `reduced`: the query's reduced features from `project_frame`, if at hand.
        """
        query = tf.convert_to_tensor(query)
        self._build_for_channels(query.shape[-1])
        if query.dtype != self.compute_dtype:
            query = tf.cast(query, self.compute_dtype)
        if self.top_ratio == 0.0:
            return query
        key_values = tf.cast(key_values, tf.float32)
        shape = tf.shape(query)
        batch, h, w = shape[0], shape[1], shape[2]
        if query.shape[1] is not None and query.shape[2] is not None:
            h, w = query.shape[1], query.shape[2]
        d, d_r = self.channels, self.reduced_channels
        scale = 1.0 / math.sqrt(d_r // self.num_heads)

        scores = nsm.nsm_score(tf.stop_gradient(query), self.neighborhood_radius)
        selected = tf.stop_gradient(nsm.select_top(scores, self.top_ratio))  # [B, N_q]

        flat_query = tf.reshape(query, [batch, -1, d])
        query_kernel = tf.cast(self.query_kernel, tf.float32)
        query_bias = tf.cast(self.query_bias, tf.float32)
        if self.key_selection == "window" and kernels.use_native():
            # Native kernel: only the selected points are reduced, projected and
            # attended, over their exact windows.
            if reduced is None:
                reduced = self._reduce(tf.gather(flat_query, selected, batch_dims=1))
            else:
                reduced = tf.gather(tf.reshape(reduced, [batch, -1, d_r]), selected, batch_dims=1)
            reduced = tf.cast(reduced, tf.float32)  # [B, N_q, d_r]
            q = (tf.matmul(reduced, query_kernel) + query_bias) * scale
            attended = temporal_attention.selected_windowed_attention(
                q, selected, key_values, self.radii, self.num_heads, self.tiles_per_step
            )
        elif self.key_selection == "window":
            # The tiled kernel scores whole 8x8 tiles, so every point is projected;
            # only the selected points go on through the rest of the block.
            if reduced is None:
                reduced = self._reduce(query)
            reduced = tf.cast(reduced, tf.float32)  # [B, h, w, d_r]
            q = (tf.matmul(reduced, query_kernel) + query_bias) * scale
            attended = temporal_attention.windowed_attention(
                q, key_values, self.radii, self.num_heads, self.tiles_per_step
            )
            attended = tf.gather(tf.reshape(attended, [batch, -1, d_r]), selected, batch_dims=1)
            reduced = tf.gather(tf.reshape(reduced, [batch, -1, d_r]), selected, batch_dims=1)
        else:
            reduced = tf.cast(self._reduce(tf.gather(flat_query, selected, batch_dims=1)), tf.float32)
            q = (tf.matmul(reduced, query_kernel) + query_bias) * scale
            attended = temporal_attention.full_attention(
                q, tf.reshape(key_values, [batch, -1, 2 * d_r]), self.num_heads, self.query_chunk
            )

        mixed = self._linear(attended, tf.cast(self.output_kernel, tf.float32), tf.cast(self.output_bias, tf.float32))
        x = self._layer_norm(reduced + mixed, self.norm1_gamma, self.norm1_beta)
        hidden = tf.nn.relu(self._linear(x, tf.cast(self.ffn1_kernel, tf.float32), tf.cast(self.ffn1_bias, tf.float32)))
        ffn = self._linear(hidden, tf.cast(self.ffn2_kernel, tf.float32), tf.cast(self.ffn2_bias, tf.float32))
        y = self._layer_norm(x + ffn, self.norm2_gamma, self.norm2_beta)
        out = self._linear(tf.cast(y, query.dtype), self.expand_kernel, self.expand_bias)  # [B, N_q, d]
        if self.residual:
            out = out + tf.gather(flat_query, selected, batch_dims=1)

        batch_index = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(selected))
        positions = tf.stack([batch_index, selected], axis=-1)
        flat = tf.tensor_scatter_nd_update(flat_query, positions, out)
        return tf.reshape(flat, tf.shape(query))

    # ------------------------------------------------------------------ call
    def call(self, query, keys):
        query = tf.convert_to_tensor(query)
        keys = tf.convert_to_tensor(keys)
        self._check_shapes(query.shape, keys.shape)
        if self.top_ratio == 0.0:
            return tf.cast(query, self.compute_dtype)
        return self.attend(query, self.project_keys(keys))

    def compute_output_shape(self, query_shape, keys_shape):
        return tuple(query_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_key_frames": self.num_key_frames,
                "start_size": self.start_size,
                "end_size": self.end_size,
                "expansion": self.expansion,
                "neighborhood_radius": self.neighborhood_radius,
                "top_ratio": self.top_ratio,
                "num_heads": self.num_heads,
                "reduction": self.reduction,
                "key_selection": self.key_selection,
                "ffn_multiplier": self.ffn_multiplier,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "tiles_per_step": self.tiles_per_step,
                "query_chunk": self.query_chunk,
                "residual": self.residual,
            }
        )
        return config
