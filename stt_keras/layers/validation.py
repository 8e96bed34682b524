"""The rules of `top_ratio`, the fraction of points that become STT queries, in one place.

Every layer, `dense_masked`, stt-train and the NumPy reference use these: one range,
[0, 1]; one count, round-half-up of top_ratio * points, at least one point when the
ratio is positive; and one decision of what a ratio selects (`coverage`): NONE
(the block returns its query map unchanged: the per-frame baseline), ALL (every
point is a query: no score and no selection) or SOME.
"""

import math

import tensorflow as tf

NONE, SOME, ALL = "none", "some", "all"


def check_top_ratio(top_ratio, name="`top_ratio`"):
    """`top_ratio` as a float in [0, 1]; a ValueError naming `name` (a flag, for a CLI) otherwise.

    Example:
    >>> check_top_ratio(1)
    1.0
    >>> check_top_ratio(1.5, name="--top-ratio")
    Traceback (most recent call last):
    ...
    ValueError: --top-ratio must be in [0, 1], got 1.5.
    """
    if isinstance(top_ratio, bool) or not isinstance(top_ratio, (int, float)):
        raise ValueError(f"{name} must be a number in [0, 1], got {top_ratio!r}.")
    if not 0.0 <= float(top_ratio) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {top_ratio}.")
    return float(top_ratio)


def query_count(top_ratio, num_points):
    """How many of `num_points` points a ratio makes queries: round-half-up, at least 1 if ratio > 0.

    `num_points` is an int, or an int32 tensor for maps whose size is known only
    when the graph runs (the count is then a tensor too).

    Example:
    >>> query_count(0.5, 63), query_count(0.001, 64), query_count(0.0, 64)
    (32, 1, 0)
    """
    if top_ratio <= 0:
        return 0
    if isinstance(num_points, tf.Tensor):
        count = tf.cast(tf.floor(top_ratio * tf.cast(num_points, tf.float32) + 0.5), tf.int32)
        return tf.minimum(num_points, tf.maximum(1, count))
    return min(num_points, max(1, int(math.floor(top_ratio * num_points + 0.5))))


def coverage(top_ratio, num_points=None):
    """What a ratio selects: NONE (ratio 0), ALL (ratio 1, or a count that reaches all of
    `num_points` when the map size is static) or SOME.

    Example:
    >>> coverage(0.0), coverage(0.5), coverage(1.0), coverage(0.99, num_points=16)
    ('none', 'some', 'all', 'all')
    """
    if top_ratio <= 0:
        return NONE
    if top_ratio >= 1 or (num_points is not None and query_count(top_ratio, num_points) >= num_points):
        return ALL
    return SOME
