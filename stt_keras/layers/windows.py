"""Window arithmetic shared by the NSM score and the windowed key attention.

Both work on *tiles*: the map is cut into `tile x tile` blocks of query points,
and each block reads one square *halo* of the source map around it (the block
grown by the window radius on every side). One matmul of the block against its
halo then yields every score a point of the block can need; a fixed boolean
mask keeps the ones inside each point's own window. This is the layout that
measured fastest on CPU (docs/models.md, "Two implementations of the sparse kernels"): the halo is copied once
per block instead of once per query, and the scores come from a dense matmul
instead of gathered dot products.

Everything here is built from `tf` ops on (possibly dynamic) h and w, so the
tables constant-fold when shapes are static and still work when they are not.
"""

import tensorflow as tf

from stt_keras.layers import validation

# Query block edge. 8x8 blocks balance halo copies (fewer with larger blocks)
# against wasted scores (more with larger blocks); measured in benchmarks/.
TILE = 8


def _check_positive_int(name, value, allow_zero=False):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"`{name}` must be an integer, got {value!r} ({type(value).__name__}).")
    if value < 0 or (value == 0 and not allow_zero):
        bound = "non-negative" if allow_zero else "positive"
        raise ValueError(f"`{name}` must be a {bound} integer, got {value}.")


def key_window_radii(num_key_frames, start_size=1, end_size=5, expansion=1):
    """Window radius l_t of every key frame, farthest first.

    l_t = start_size + (T - t) * expansion if that is < end_size, else end_size,
    for t = 1..T (docs/method.md, "Key selection"). Index 0 of the result is K_1, the
    farthest frame in time; the last entry is K_T, the frame just before the query.

    Args:
        num_key_frames: T, the number of key frames (positive integer).
        start_size: s, the radius in the nearest frame (positive integer).
        end_size: e, the largest radius (integer >= start_size).
        expansion: eps, the radius growth per frame of distance (non-negative integer).

    Returns:
        A list of T integers.

    Example:
    >>> key_window_radii(7)
    [5, 5, 5, 4, 3, 2, 1]
    """
    _check_positive_int("num_key_frames", num_key_frames)
    _check_positive_int("start_size", start_size)
    _check_positive_int("end_size", end_size)
    _check_positive_int("expansion", expansion, allow_zero=True)
    if start_size > end_size:
        raise ValueError(
            f"`start_size` ({start_size}) must not exceed `end_size` ({end_size})."
        )
    radii = []
    for t in range(1, num_key_frames + 1):
        grown = start_size + (num_key_frames - t) * expansion
        radii.append(grown if grown < end_size else end_size)
    return radii


def key_set_size(num_key_frames, start_size=1, end_size=5, expansion=1):
    """n_k = sum_t (2 l_t + 1)^2, the keys one query attends to (before border clipping).

    Example:
    >>> key_set_size(7)
    527
    """
    radii = key_window_radii(num_key_frames, start_size, end_size, expansion)
    return sum((2 * r + 1) ** 2 for r in radii)


num_selected = validation.query_count  # the top_ratio rules live in `validation`
check_ratio = validation.check_top_ratio


def num_tiles(size, tile=TILE):
    return (size + tile - 1) // tile


def pad_to_tiles(x, h, w, tile=TILE):
    """Zero-pads [B, h, w, C] on the bottom/right to a multiple of `tile`."""
    ph = num_tiles(h, tile) * tile - h
    pw = num_tiles(w, tile) * tile - w
    return tf.pad(x, [[0, 0], [0, ph], [0, pw], [0, 0]])


def to_tiles(x, h, w, tile=TILE):
    """[B, h, w, C] -> [B, n_tiles, tile*tile, C] (row-major tiles, row-major inside)."""
    x = pad_to_tiles(x, h, w, tile)
    nth, ntw = num_tiles(h, tile), num_tiles(w, tile)
    c = tf.shape(x)[-1]
    x = tf.reshape(x, [-1, nth, tile, ntw, tile, c])
    x = tf.transpose(x, [0, 1, 3, 2, 4, 5])
    return tf.reshape(x, [-1, nth * ntw, tile * tile, c])


def from_tiles(x, h, w, tile=TILE):
    """Inverse of `to_tiles`: [B, n_tiles, tile*tile, C] -> [B, h, w, C]."""
    nth, ntw = num_tiles(h, tile), num_tiles(w, tile)
    c = tf.shape(x)[-1]
    x = tf.reshape(x, [-1, nth, ntw, tile, tile, c])
    x = tf.transpose(x, [0, 1, 3, 2, 4, 5])
    x = tf.reshape(x, [-1, nth * tile, ntw * tile, c])
    return x[:, :h, :w, :]


def halo_tables(h, w, radii, tile=TILE):
    """Index and mask tables for tiles reading square halos from several frames.

    Frame f (f = 0..len(radii)-1) of the source has radius radii[f]; the halo of a
    tile in frame f is the (tile + 2 r)^2 square centred on the tile. Halos of all
    frames are concatenated along one axis of length
    n_halo = sum_f (tile + 2 r_f)^2.

    Args:
        h, w: map size (Python ints or scalar int32 tensors).
        radii: list of Python ints, one per source frame.
        tile: block edge.

    Returns:
        index: int32 [n_tiles, n_halo], a row of the source table flattened as
            [frames * h * w] (frame-major, then row-major); points outside the map
            point at row frames * h * w, which callers fill with zeros.
        valid: bool [n_tiles, n_halo], the halo point lies inside the map.
        window: bool [tile * tile, n_halo], the halo point lies inside the window
            of that query point (the same for every tile).
    """
    nth, ntw = num_tiles(h, tile), num_tiles(w, tile)
    origin_y = tf.range(nth) * tile  # top-left corner of every tile
    origin_x = tf.range(ntw) * tile
    qy, qx = tf.meshgrid(tf.range(tile), tf.range(tile), indexing="ij")
    qy = tf.reshape(qy, [-1, 1])
    qx = tf.reshape(qx, [-1, 1])
    outside = len(radii) * h * w
    indices, valids, windows = [], [], []
    for frame, r in enumerate(radii):
        side = tile + 2 * r
        ly, lx = tf.meshgrid(tf.range(side), tf.range(side), indexing="ij")
        ly = tf.reshape(ly, [-1])
        lx = tf.reshape(lx, [-1])
        y = origin_y[:, None, None] - r + ly[None, None, :]  # [nth, 1, side^2]
        x = origin_x[None, :, None] - r + lx[None, None, :]  # [1, ntw, side^2]
        inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
        flat = frame * h * w + y * w + x
        indices.append(tf.reshape(tf.where(inside, flat, outside), [nth * ntw, side * side]))
        valids.append(tf.reshape(inside, [nth * ntw, side * side]))
        # Halo coordinate ly corresponds to tile row ly - r: inside the window of
        # query row qy iff |qy - (ly - r)| <= r.
        windows.append(
            (tf.abs(qy + r - ly[None, :]) <= r) & (tf.abs(qx + r - lx[None, :]) <= r)
        )
    return (
        tf.concat(indices, axis=1),
        tf.concat(valids, axis=1),
        tf.concat(windows, axis=1),
    )
