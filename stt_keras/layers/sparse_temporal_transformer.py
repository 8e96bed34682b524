"""The Sparse Temporal Transformer block (docs/method.md, "The STT block")."""

import keras
import tensorflow as tf

from stt_keras import kernels
from stt_keras.layers import block, compat, dense_masked, nsm, temporal_attention, validation, windows

KEY_SELECTIONS = ("window", "all")
IMPLEMENTATIONS = ("sparse", "dense_masked")


class ResidualGate(keras.layers.Layer):
    """The STT block's residual gates (`residual_gate=True`): per-channel gamma [d] of the attention
    branch (`attention`) and of the FFN branch (`ffn`), initialised to 0. Holds the weights only; the
    block folds them into its linears (`block.branch_weights`)."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.attention = self.add_weight(shape=(channels,), initializer="zeros", name="attention")
        self.ffn = self.add_weight(shape=(channels,), initializer="zeros", name="ffn")
        self.built = True


@keras.saving.register_keras_serializable(package="stt_keras")
class SparseTemporalTransformer(compat.OlderLayouts, keras.layers.Layer):
    """Mixes the previous frames' features into the complex points of the current one.

    For query map Q [B, h, w, d] and key maps K [B, T, h, w, d] (K[:, 0] the
    farthest frame, K[:, T-1] the nearest):

    1. NSM query selection keeps the round(top_ratio * h * w) most complex points.
    2. Channel reduction lives inside attention only: W^Q, W^K, W^V map d to
       d_r = d / reduction in total over the heads (so a frame's keys/values can be
       cached at 2 d_r channels), and W^O maps the heads back to d.
    3. Each selected point attends, with `num_heads` heads, to the square window
       of radius l_t around it in every key frame (or to every key with
       key_selection="all"); window points outside the map get no weight.
    4. At full width d: X = LN(q + MH), Y = LN(X + FFN(X)), FFN a ReLU MLP of
       hidden width `ffn_channels` (paper: d / num_heads). Y replaces the
       selected point (it contains the point's own features through the
       residual); unselected points pass through unchanged.

    With `norm_first=True` (not the paper) the block is the pre-norm form
    X = q + MH(LN(q)), Y = X + FFN(LN(X)) with W^O and the FFN's output layer
    initialised to zero: an untrained block is exactly the identity, so it can
    be inserted into a trained per-frame model without disturbing it. With
    `residual_gate=True` as well, the identity comes from zero-initialised
    per-channel gates instead (X = q + g_a * MH(LN(q)), Y = X + g_f * FFN(LN(X)),
    g_a, g_f in R^d, init 0; W^O and the FFN keep their Glorot init), so every
    weight gets gradient as soon as the gates move (ReZero / LayerScale).

    The weights live in sublayers, as in keras' MultiHeadAttention: Dense `query`,
    `key`, `value`, `output`, `ffn1`, `ffn2` and LayerNormalization `norm1`, `norm2`
    (`weights_of(name)`), and with `residual_gate` a `ResidualGate` `gates` after them
    (`gate_of(branch)`); the block computes with them itself (see `build`), the
    maths around the attention in `stt_keras.layers.block`. Older files and the old
    weight names (`query_kernel`, `norm1_gamma`, ...) are `stt_keras.layers.compat`.

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
        reduction: channel reduction of q/k/v inside attention (paper: 4). d must
            be divisible by num_heads * reduction.
        key_selection: "window" (sparse) or "all" (the vanilla temporal
            transformer: every key of every frame).
        ffn_channels: FFN hidden width; None = d / num_heads (the paper's d_hat).
        nsm_temperature: None scores complexity on raw dot products (the paper);
            a float tau scores it on cosine similarities / tau, which does not
            depend on feature norms (see `nsm_score`).
        norm_first: the pre-norm, identity-at-start variant described above.
        residual_gate: with norm_first, the identity at start by zero-initialised
            per-channel gates on the two residual branches (described above) rather
            than by zero W^O and FFN output. Needs norm_first=True.
        change_weight: 0 selects queries by NSM alone (the paper). w > 0 (not the
            paper) ranks points by z(NSM) + w * z(change), where change =
            1 - cos(k_t, k_{t-1}) compares the point's projected key with the
            nearest key frame's at the same place: points the previous frame
            saw differently (degradation, occlusion, motion) become queries.
        layer_norm_epsilon: epsilon of both layer norms.
        tiles_per_step: query tiles per loop step of the windowed attention.
        query_chunk: queries per loop step of the all-keys attention.
        implementation: how the same function is computed. "sparse" (default):
            top-k selection, tile loops, only the selected points go through the
            block, scattered back; fastest on a CPU. "dense_masked"
            (`stt_keras.layers.dense_masked`): no loops, top-k, scatter or rank-5
            tensors; every point is computed and a 0/1 top-k mask (by threshold
            bisection) blends the selected ones in: the form mobile GPUs run in one
            piece. Needs a static map size and key_selection="window"; ties at the
            k-th score keep every tied point. `attend` and
            `STTSegmenter.stream_step` also take it per call.

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
        ffn_channels=None,
        nsm_temperature=None,
        norm_first=False,
        residual_gate=False,
        change_weight=0.0,
        layer_norm_epsilon=1e-5,
        tiles_per_step=4,
        query_chunk=256,
        implementation="sparse",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.radii = windows.key_window_radii(num_key_frames, start_size, end_size, expansion)
        windows._check_positive_int("neighborhood_radius", neighborhood_radius, allow_zero=True)
        for name, value in (
            ("num_heads", num_heads),
            ("reduction", reduction),
            ("tiles_per_step", tiles_per_step),
            ("query_chunk", query_chunk),
        ):
            windows._check_positive_int(name, value)
        if ffn_channels is not None:
            windows._check_positive_int("ffn_channels", ffn_channels)
        if key_selection not in KEY_SELECTIONS:
            raise ValueError(f"`key_selection` must be one of {KEY_SELECTIONS}, got {key_selection!r}.")
        self.num_key_frames = num_key_frames
        self.start_size = start_size
        self.end_size = end_size
        self.expansion = expansion
        self.neighborhood_radius = neighborhood_radius
        self.top_ratio = validation.check_top_ratio(top_ratio)
        self.num_heads = num_heads
        self.reduction = reduction
        self.key_selection = key_selection
        self.ffn_channels = ffn_channels
        self.nsm_temperature = nsm.check_temperature(nsm_temperature)
        self.norm_first = bool(norm_first)
        self.residual_gate = bool(residual_gate)
        if self.residual_gate and not self.norm_first:
            raise ValueError("`residual_gate=True` needs `norm_first=True` (the gates make the pre-norm block "
                             "the identity at start; the post-norm block's LayerNorms are not).")
        if isinstance(change_weight, bool) or not isinstance(change_weight, (int, float)) or change_weight < 0:
            raise ValueError(f"`change_weight` must be a non-negative number, got {change_weight!r}.")
        self.change_weight = float(change_weight)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.tiles_per_step = tiles_per_step
        self.query_chunk = query_chunk
        self.implementation = self._check_implementation(implementation)

    def _check_implementation(self, implementation):
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"`implementation` must be one of {IMPLEMENTATIONS}, got {implementation!r}.")
        if implementation == "dense_masked" and self.key_selection != "window":
            raise ValueError("implementation='dense_masked' supports key_selection='window' only, "
                             f"got key_selection={self.key_selection!r}.")
        return implementation

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
        for axis, name in ((0, "batch size"), (1, "height"), (2, "width"), (3, "channels")):
            a, b = query_shape[axis], keys_shape[axis + 1 if axis else 0]
            if a is not None and b is not None and a != b:
                raise ValueError(f"`query` and `keys` disagree in {name}: {a} vs {b}.")
            if axis in (1, 2) and a is not None and a < 1:
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
        self.hidden_channels = self.ffn_channels or max(1, d // self.num_heads)
        # Pre-norm starts as the identity: its two residual branches end in zero weights, or in
        # zero gates (residual_gate) with the weights at their usual init.
        last = "zeros" if self.norm_first and not self.residual_gate else "glorot_uniform"

        # Sublayers hold the weights (as keras' MultiHeadAttention does), created in the order of the
        # old layout (`compat.SUBLAYERS`), so get_weights()/set_weights() keep their order. The block
        # does not call them: its maths runs in float32 under any dtype policy and reads the weights
        # through `weights_of`; dense_masked must emit 1x1 convolutions and moment-free norms
        # under the int8 name scopes; and Dense/LayerNormalization.call would compute in the policy's
        # dtype with another norm formula (x * inv + (beta - mean * inv)), changing every output's
        # rounding, the committed fixtures and the exported graphs.
        def dense(name, shape_in, units, initializer="glorot_uniform"):
            layer = keras.layers.Dense(units, kernel_initializer=initializer, dtype=self.dtype_policy, name=name)
            layer.build((None, shape_in))
            return layer

        def norm(name):
            layer = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name=name)
            layer.build((None, d))
            return layer

        self.query = dense("query", d, d_r)
        self.key = dense("key", d, d_r)
        self.value = dense("value", d, d_r)
        self.output_dense = dense("output", d_r, d, last)
        self.norm1 = norm("norm1")
        self.ffn1 = dense("ffn1", d, self.hidden_channels)
        self.ffn2 = dense("ffn2", self.hidden_channels, d, last)
        self.norm2 = norm("norm2")
        if self.residual_gate:  # after the old layout's sublayers: their order and paths stay as they are
            self.gates = ResidualGate(d, dtype=self.dtype_policy, name="gates")
        self.built = True

    def _weight_layers(self):
        return (self.query, self.key, self.value, self.output_dense, self.norm1, self.ffn1, self.ffn2, self.norm2)

    def weights_of(self, sublayer):
        """(kernel, bias) of a Dense sublayer or (gamma, beta) of a LayerNormalization, by name
        (`compat.SUBLAYERS`: "query", "key", "value", "output", "norm1", "ffn1", "ffn2", "norm2").
        The block's maths reads its weights here."""
        layer = self._weight_layers()[compat.SUBLAYERS.index(sublayer)]
        return tuple(layer.weights)

    def gate_of(self, branch):
        """The residual gate [d] of "attention" or "ffn" (`residual_gate=True` only).
        `block.branch_weights` folds it into W^O / the FFN's output layer."""
        if not self.residual_gate:
            raise ValueError(f"Layer '{self.name}' has no residual gates (residual_gate=False).")
        return {"attention": self.gates.attention, "ffn": self.gates.ffn}[branch]

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

    def project_keys(self, keys):
        """Projected key/value map of key frames: [..., h, w, d] -> float32 [..., h, w, 2 d_r].

        Per frame and independent of the query, so streaming inference computes
        it once per frame and caches it (the streaming state).
        """
        keys = tf.convert_to_tensor(keys)
        self._build_for_channels(keys.shape[-1])
        kernel, bias = (tf.cast(w, tf.float32) for w in block.key_value_weights(self))
        return self._linear(tf.cast(keys, tf.float32), kernel, bias)

    def _linear_f32(self, x, kernel, bias):
        return self._linear(x, tf.cast(kernel, tf.float32), tf.cast(bias, tf.float32))

    def transform(self, selected, attended):
        """The full-width rest of the block: (query points [.., d], attention [.., d_r]) -> [.., d].

        `attended` is the concatenated head outputs (before W^O) computed from
        `project_queries(selected)`. Float32; the maths is `block.post_attention`.
        """
        return block.post_attention(self, selected, attended, self._linear_f32, self._layer_norm)

    def project_queries(self, points):
        """W^Q of query points [.., d] (after the first LayerNorm with norm_first), scaled by 1/sqrt(d_head)."""
        return block.project_queries(self, tf.cast(points, tf.float32), self._linear_f32, self._layer_norm)

    def selection_scores(self, query, key_values):
        """[B, h, w] scores whose top `top_ratio` become queries (see `change_weight`)."""
        query = tf.stop_gradient(query)
        scores = nsm.nsm_score(query, self.neighborhood_radius, self.nsm_temperature)
        if self.change_weight > 0:
            d_r = self.reduced_channels
            current = self._linear_f32(tf.cast(query, tf.float32), *self.weights_of("key"))
            change = nsm.temporal_change(current, tf.stop_gradient(key_values)[:, -1, ..., :d_r])
            scores = nsm.combine_with_change(scores, change, self.change_weight)
        return scores

    def _coverage(self, query):
        """`validation.coverage` of top_ratio on this query map (its point count when static)."""
        h, w = query.shape[1], query.shape[2]
        return validation.coverage(self.top_ratio, None if h is None or w is None else h * w)

    def select(self, query, key_values):
        """Flat positions [B, N_q] of the selected query points."""
        if self._coverage(query) == validation.ALL:  # every point is a query: no score needed
            shape = tf.shape(query)
            return tf.broadcast_to(tf.range(shape[1] * shape[2])[None], [shape[0], shape[1] * shape[2]])
        return tf.stop_gradient(nsm.select_top(self.selection_scores(query, key_values), self.top_ratio))

    def attend(self, query, key_values, implementation=None):
        """STT output for a query map [B, h, w, d] and projected key/values from `project_keys`.

        Args:
            query: [B, h, w, d].
            key_values: [B, T, h, w, 2 d_r] from `project_keys`, or packed along channels
                [B, h, w, T * 2 d_r] (`dense_masked.pack_frames`, oldest frame first).
            implementation: None (the layer's) or one of IMPLEMENTATIONS.
        """
        implementation = self.implementation if implementation is None else self._check_implementation(implementation)
        query = tf.convert_to_tensor(query)
        self._build_for_channels(query.shape[-1])
        if query.dtype != self.compute_dtype:
            query = tf.cast(query, self.compute_dtype)
        if self._coverage(query) == validation.NONE:
            return query
        key_values = tf.cast(key_values, tf.float32)
        if key_values.shape.rank not in (4, 5):
            raise ValueError("`key_values` must be [B, T, h, w, 2 d_r] or packed [B, h, w, T * 2 d_r], "
                             f"got shape {key_values.shape}.")
        if implementation == "dense_masked":
            if key_values.shape.rank == 5:
                key_values = dense_masked.pack_frames(key_values)
            return tf.cast(dense_masked.attend(self, query, key_values), self.compute_dtype)
        if key_values.shape.rank == 4:
            key_values = dense_masked.unpack_frames(key_values, self.num_key_frames)
        shape = tf.shape(query)
        batch = shape[0]
        d = self.channels

        selected = self.select(query, key_values)  # [B, N_q]
        flat_query = tf.reshape(query, [batch, -1, d])
        points = tf.cast(tf.gather(flat_query, selected, batch_dims=1), tf.float32)  # [B, N_q, d]
        if self.key_selection == "window" and kernels.use_native():
            # Native kernel: only the selected points are projected and attended,
            # over their exact windows.
            attended = temporal_attention.selected_windowed_attention(
                self.project_queries(points), selected, key_values, self.radii, self.num_heads, self.tiles_per_step
            )
        elif self.key_selection == "window":
            # The tiled kernel scores whole tiles, so every point is projected;
            # only the selected points go on through the rest of the block.
            attended = temporal_attention.windowed_attention(
                self.project_queries(query), key_values, self.radii, self.num_heads, self.tiles_per_step
            )
            attended = tf.gather(tf.reshape(attended, [batch, -1, self.reduced_channels]), selected, batch_dims=1)
        else:
            attended = temporal_attention.full_attention(
                self.project_queries(points), tf.reshape(key_values, [batch, -1, 2 * self.reduced_channels]),
                self.num_heads, self.query_chunk,
            )
        out = tf.cast(self.transform(points, attended), query.dtype)

        batch_index = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(selected))
        positions = tf.stack([batch_index, selected], axis=-1)
        flat = tf.tensor_scatter_nd_update(flat_query, positions, out)
        return tf.reshape(flat, tf.shape(query))

    # ------------------------------------------------------------------ call
    def call(self, query, keys):
        query = tf.convert_to_tensor(query)
        keys = tf.convert_to_tensor(keys)
        self._check_shapes(query.shape, keys.shape)
        if self._coverage(query) == validation.NONE:  # nothing to attend: the keys are not even projected
            return tf.cast(query, self.compute_dtype)
        return self.attend(query, self.project_keys(keys))

    def compute_output_shape(self, query_shape, keys_shape):
        return tuple(query_shape)

    def compute_key_values_shape(self, keys_shape):
        """Shape of `project_keys(keys)` for keys [..., h, w, d]: [..., h, w, 2 d_r], d_r = d / reduction.

        One frame's slice of the streaming state (docs/export.md, "The streaming
        state contract"); no weight is built or run.
        """
        channels = keys_shape[-1]
        if channels is None:
            raise ValueError(f"The channel dimension of the keys must be known, got shape {tuple(keys_shape)}.")
        if channels % (self.num_heads * self.reduction):
            raise ValueError(f"channels d={channels} must be divisible by num_heads * reduction = "
                             f"{self.num_heads} * {self.reduction} = {self.num_heads * self.reduction}.")
        return (*tuple(keys_shape)[:-1], 2 * (channels // self.reduction))

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
                "ffn_channels": self.ffn_channels,
                "nsm_temperature": self.nsm_temperature,
                "norm_first": self.norm_first,
                "residual_gate": self.residual_gate,
                "change_weight": self.change_weight,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "tiles_per_step": self.tiles_per_step,
                "query_chunk": self.query_chunk,
                "implementation": self.implementation,
            }
        )
        return config
