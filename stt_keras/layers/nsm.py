"""Neighbouring Similarity Matrix (NSM) score and the query selection built on it.

docs/method.md, "Query selection": a point is "complex" when its neighbours are
dissimilar to it. For q = Q[u, v] and its (2r+1)^2 neighbourhood (q included):

    s_i   = <Q^n_i, q>
    D_KL  = logsumexp(s) - mean(s) - log(n_b)      (= KL(uniform || softmax(s)) >= 0)
    D_cos = mean_i (1 - cos(Q^n_i, q))
    score = D_KL + D_cos

Scale: the paper's s_i are raw dot products, so the score grows with the
feature norm |q|^2 and tends to pick large-norm points rather than boundaries.
With a temperature tau, s_i = cos(Q^n_i, q) / tau instead (features are
L2-normalised, then scaled by 1/sqrt(tau)): the same formula, free of scale.
D_cos does not change (it is scale-free already).

Non-finite features: a point with a NaN or infinite feature in its
neighbourhood gets the score -inf, so it is never selected while finite
points remain (and both implementations agree on it exactly); a NaN feature is
then passed through unchanged by the STT block.

Border policy: neighbours outside the map are *excluded*, so n_b is the number
of in-map neighbours of each point (a corner point of a r=5 window has 36, not
121). Zero padding would put fake all-zero neighbours into both terms (their dot
product is 0 and their cosine undefined) and make every border point look
complex.
"""

import keras
import tensorflow as tf

from stt_keras import kernels
from stt_keras.layers import validation, windows

_EPS = 1e-12  # cosine denominator floor: a zero feature vector has cosine 0
_TILES_PER_STEP = 4


def _check_features(features, name="features"):
    if features.shape.rank != 4:
        raise ValueError(
            f"`{name}` must have rank 4 [batch, height, width, channels], "
            f"got shape {features.shape}."
        )


def _extent(size, radius):
    """In-map neighbours along one axis of every position 0..size-1."""
    position = tf.range(size)
    return tf.minimum(position + radius, size - 1) - tf.maximum(position - radius, 0) + 1


def _neighbour_count(h, w, radius):
    """n_b of every point in tile layout [1, n_tiles, 64], in closed form.

    (Summing the mask instead makes XLA constant-fold a large reduce-window for
    seconds at compile time.) Tile padding gets 1 to keep divisions finite.
    """
    count = tf.cast(_extent(h, radius)[:, None] * _extent(w, radius)[None, :], tf.float32)
    count = windows.to_tiles(count[None, :, :, None], h, w)[..., 0]
    return tf.maximum(count, 1.0)


def check_temperature(temperature):
    """None (raw dot products) or a positive float."""
    if temperature is None:
        return None
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"`nsm_temperature` must be None or a positive number, got {temperature!r}.")
    return float(temperature)


def scale_free(features, temperature, eps=_EPS):
    """Features whose dot products are cos / temperature (zero vectors stay zero).

    `eps` floors the norm; the exported float16 step passes one float16 can hold.
    """
    x = tf.cast(features, tf.float32)
    norm = tf.sqrt(tf.reduce_sum(x * x, axis=-1, keepdims=True))
    return x / tf.maximum(norm, eps) * (1.0 / temperature) ** 0.5


def nsm_score(features, radius=5, temperature=None):
    """NSM complexity score of every point of a feature map.

    Computed in float32 whatever the input dtype. On a CPU (outside XLA and
    exports, radius <= 7) by the native kernel (stt_keras/kernels); otherwise
    each 8x8 tile of points is multiplied against its (8 + 2r)^2 halo once (a
    dense matmul) and the dot products outside each point's own neighbourhood
    are masked.

    Args:
        features: [B, h, w, d] feature map.
        radius: neighbourhood radius r (non-negative integer; r = 0 scores 0).
        temperature: None (the paper: raw dot products) or tau > 0 (cosine / tau).

    Returns:
        [B, h, w] float32 scores, >= 0 up to float rounding; -inf where the
        neighbourhood holds a non-finite feature.

    Example:
    >>> import numpy as np
    >>> s = nsm_score(np.random.rand(1, 16, 16, 8).astype("float32"), radius=2)
    >>> tuple(s.shape)
    (1, 16, 16)
    """
    windows._check_positive_int("radius", radius, allow_zero=True)
    features = tf.convert_to_tensor(features)
    _check_features(features)
    temperature = check_temperature(temperature)
    x = tf.cast(features, tf.float32)
    finite = tf.reduce_all(tf.math.is_finite(x), axis=-1, keepdims=True)  # [B, h, w, 1]
    x = tf.where(finite, x, 0.0)
    if temperature is not None:
        x = scale_free(x, temperature)
    if radius <= 7 and kernels.use_native():
        score = _native_nsm_score(x, radius)
    else:
        score = _tiled_nsm_score(x, radius)
    # A non-finite feature poisons every score whose neighbourhood holds it.
    size = 2 * radius + 1
    poisoned = tf.nn.max_pool2d(1.0 - tf.cast(finite, tf.float32), size, 1, "SAME")[..., 0] > 0
    return tf.where(poisoned, tf.constant(-float("inf"), tf.float32), score)


def _native_nsm_score(x, radius):
    """The native kernel's scores; gradients (rarely wanted: selection is discrete) via the TF path."""

    @tf.custom_gradient
    def score(x):
        def grad(upstream):
            with tf.GradientTape() as tape:
                tape.watch(x)
                again = _tiled_nsm_score(x, radius)
            return tape.gradient(again, x, output_gradients=upstream)

        return kernels.load().stt_nsm_score(x, radius=radius), grad

    return score(x)


def _tiled_nsm_score(x, radius):
    """Pure-TF NSM: 8x8 tiles against their halos by matmul, masked."""
    shape = tf.shape(x)
    batch, h, w, d = shape[0], shape[1], shape[2], shape[3]
    if x.shape[1] is not None and x.shape[2] is not None:
        h, w = x.shape[1], x.shape[2]
    points = windows.TILE**2

    index, valid, window = windows.halo_tables(h, w, [radius])
    n_tiles = windows.num_tiles(h) * windows.num_tiles(w)
    n_halo = tf.shape(index)[-1]
    rows = h * w + 1  # table rows per batch element, the last one zeros
    table = tf.concat([tf.reshape(x, [batch, -1, d]), tf.zeros([batch, 1, d])], axis=1)
    table = tf.reshape(table, [-1, d])
    norm_table = tf.norm(table, axis=-1)
    tile_index = tf.reshape(index[None] + (tf.range(batch) * rows)[:, None, None], [-1, n_halo])
    tile_valid = tf.reshape(tf.tile(valid[None], [batch, 1, 1]), [-1, n_halo])
    tile_queries = tf.reshape(windows.to_tiles(x, h, w), [-1, points, d])
    tile_count = tf.reshape(tf.tile(_neighbour_count(h, w, radius), [batch, 1, 1]), [-1, points])

    # A few tiles per loop step keeps each [tiles, 64, halo] block in cache
    # (measured 1.5x faster than one monolithic block).
    per = _TILES_PER_STEP
    total = batch * n_tiles
    steps = (total + per - 1) // per
    pad = steps * per - total

    def chunk(t, value=0):
        t = tf.pad(t, [[0, pad]] + [[0, 0]] * (len(t.shape) - 1), constant_values=value)
        return tf.reshape(t, tf.concat([[steps, per], tf.shape(t)[1:]], 0))

    def step(args):
        q, idx, ok, count = args
        dots = tf.matmul(q, tf.gather(table, idx), transpose_b=True)  # [per, 64, halo]
        mask = window[None] & ok[:, None, :]
        logsumexp = tf.reduce_logsumexp(tf.where(mask, dots, tf.constant(-1e30, tf.float32)), axis=-1)
        mean_dot = tf.reduce_sum(tf.where(mask, dots, 0.0), axis=-1) / count
        norms = tf.norm(q, axis=-1, keepdims=True) * tf.gather(norm_table, idx)[:, None, :]
        cosine = dots / tf.maximum(norms, _EPS)
        cos_term = tf.reduce_sum(tf.where(mask, 1.0 - cosine, 0.0), axis=-1) / count
        return logsumexp - mean_dot - tf.math.log(count) + cos_term

    score = tf.map_fn(
        step,
        (chunk(tile_queries), chunk(tile_index, rows - 1), chunk(tile_valid, False), chunk(tile_count, 1.0)),
        fn_output_signature=tf.TensorSpec([per, points], tf.float32),
    )
    score = tf.reshape(score, [-1, points])[:total]
    score = tf.reshape(score, [batch, n_tiles, points, 1])
    return windows.from_tiles(score, h, w)[..., 0]


def temporal_change(current_keys, previous_keys):
    """1 - cos(k_t, k_{t-1}) per point of two projected key maps [B, h, w, c] -> [B, h, w].

    Large where the current frame differs from the previous one at the same place:
    a burst of degradation, an occluder arriving or leaving, a moving boundary.
    """
    a = tf.cast(current_keys, tf.float32)
    b = tf.cast(previous_keys, tf.float32)
    dot = tf.reduce_sum(a * b, axis=-1)
    norms = tf.sqrt(tf.reduce_sum(a * a, axis=-1) * tf.reduce_sum(b * b, axis=-1))
    return 1.0 - dot / tf.maximum(norms, _EPS)


def _standardise(x, finite):
    """(x - mean) / std over each map's finite entries; 0 where the map is constant."""
    x = tf.where(finite, x, 0.0)
    count = tf.maximum(tf.reduce_sum(tf.cast(finite, tf.float32), axis=[1, 2], keepdims=True), 1.0)
    mean = tf.reduce_sum(x, axis=[1, 2], keepdims=True) / count
    centred = tf.where(finite, x - mean, 0.0)
    std = tf.sqrt(tf.reduce_sum(centred * centred, axis=[1, 2], keepdims=True) / count)
    return centred / tf.maximum(std, 1e-6)


def combine_with_change(scores, change, weight):
    """z(NSM) + weight * z(change) per map: both terms scale-free, -inf NSM scores stay -inf.

    Args:
        scores: [B, h, w] NSM scores (may hold -inf, see `nsm_score`).
        change: [B, h, w] `temporal_change` of the same points.
        weight: how much the change counts against spatial complexity.
    """
    finite = tf.math.is_finite(scores)
    change = tf.where(tf.math.is_finite(change), change, 0.0)
    combined = _standardise(scores, finite) + weight * _standardise(change, tf.ones_like(finite))
    return tf.where(finite, combined, scores)


def select_top(scores, top_ratio):
    """Flat indices [B, N_q] of the highest scores; ties go to the lower index."""
    shape = tf.shape(scores)
    flat = tf.reshape(scores, [shape[0], -1])
    if scores.shape[1] is not None and scores.shape[2] is not None:
        count = validation.query_count(top_ratio, scores.shape[1] * scores.shape[2])
    else:
        count = validation.query_count(top_ratio, shape[1] * shape[2])
    return tf.math.top_k(flat, k=count, sorted=True).indices


@keras.saving.register_keras_serializable(package="stt_keras")
class NSMQuerySelection(keras.layers.Layer):
    """Selects the `top_ratio` most complex points of a feature map by NSM score.

    Args:
        radius: neighbourhood radius r (paper: 5).
        top_ratio: fraction of points to keep, in [0, 1] (paper: 0.5). The count is
            round(top_ratio * h * w), at least 1 when top_ratio > 0.
        temperature: None (paper: raw dot products) or tau > 0: score on cosine
            similarities / tau, independent of feature norms.

    Call arguments:
        features: [B, h, w, d].

    Returns:
        (indices, scores): int32 [B, N_q] flattened positions u * w + v, most
        complex first; float32 [B, h, w] NSM scores.

    Example:
    >>> import numpy as np
    >>> layer = NSMQuerySelection(radius=2, top_ratio=0.25)
    >>> idx, scores = layer(np.random.rand(2, 8, 8, 16).astype("float32"))
    >>> tuple(idx.shape)
    (2, 16)
    """

    def __init__(self, radius=5, top_ratio=0.5, temperature=None, **kwargs):
        super().__init__(**kwargs)
        windows._check_positive_int("radius", radius, allow_zero=True)
        self.radius = radius
        self.top_ratio = validation.check_top_ratio(top_ratio)
        self.temperature = check_temperature(temperature)

    def build(self, features_shape):
        if len(features_shape) != 4:
            raise ValueError(
                f"NSMQuerySelection expects features of rank 4 [batch, height, width, channels], got shape {tuple(features_shape)}."
            )
        self.built = True

    def call(self, features):
        _check_features(tf.convert_to_tensor(features))
        scores = nsm_score(tf.stop_gradient(features), self.radius, self.temperature)
        indices = select_top(scores, self.top_ratio)
        return indices, scores

    def compute_output_shape(self, features_shape):
        b, h, w = features_shape[0], features_shape[1], features_shape[2]
        n = None if h is None or w is None else validation.query_count(self.top_ratio, h * w)
        return (b, n), (b, h, w)

    def get_config(self):
        config = super().get_config()
        config.update({"radius": self.radius, "top_ratio": self.top_ratio, "temperature": self.temperature})
        return config
