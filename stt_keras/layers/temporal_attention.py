"""The two attention kernels of the STT block: windowed (sparse) and all-keys (vanilla).

Both take queries already projected by W^Q and scaled by 1/sqrt(d_head), and
key/value maps already projected by W^K and W^V (the projected key/value map of a
frame is what streaming inference caches), and return the per-head outputs
concatenated, [.., d_r]. Everything runs in float32.

Windowed attention (docs/method.md, "Key selection"): a query at (u, v) attends to
the (2 l_t + 1)^2 keys around (u, v) in key frame t; window points outside the map
are masked out (they never receive weight). Layout, chosen by measurement (docs/performance.md,
"The STT block: what the sparsity buys"): the query map is cut into small tiles, the halo of each tile
(its union of windows, per frame) is gathered once, the tile's scores come from
one matmul per head against the halo, a fixed mask keeps each query's own window,
and a second matmul applies the softmax weights to the halo values. Tiles are
processed a few at a time in a loop so that every intermediate stays in cache:
this machine's elementwise throughput is memory-bound, and one monolithic
[tiles, heads, 64, halo] score tensor measured 2x slower than the loop.

All-keys attention: every query attends to every key of every frame, by
batched matmuls over chunks of queries (the [heads, chunk, T*h*w] score block
is the memory bound). This is the honest vanilla baseline of the benchmark.
"""

import tensorflow as tf

from stt_keras import kernels
from stt_keras.layers import windows

_MASKED = -1e9  # finite, so tile-padding rows with no valid key stay NaN-free


def _split_heads(x, num_heads):
    """[..., n, d_r] -> [..., heads, n, d_head]."""
    shape = tf.shape(x)
    d_r = x.shape[-1]
    x = tf.reshape(x, tf.concat([shape[:-1], [num_heads, d_r // num_heads]], 0))
    rank = len(x.shape)
    perm = list(range(rank - 3)) + [rank - 2, rank - 3, rank - 1]
    return tf.transpose(x, perm)


def _merge_heads(x):
    """[..., heads, n, d_head] -> [..., n, heads * d_head]."""
    rank = len(x.shape)
    perm = list(range(rank - 3)) + [rank - 2, rank - 3, rank - 1]
    x = tf.transpose(x, perm)
    shape = tf.shape(x)
    return tf.reshape(x, tf.concat([shape[:-2], [x.shape[-2] * x.shape[-1]]], 0))


# Query tile edge of the windowed attention. 4x4 measured fastest at the paper
# setting (benchmarks/stt_attention.py): larger tiles waste more scores on halo
# points outside each query's window, smaller ones copy each halo more often.
ATTENTION_TILE = 4


def windowed_attention(queries, key_values, radii, num_heads, tiles_per_step=4, tile=ATTENTION_TILE):
    """Attention of every point of `queries` to its key windows.

    Args:
        queries: float32 [B, h, w, d_r], projected and scaled.
        key_values: float32 [B, T, h, w, 2 * d_r]: projected keys, then values.
        radii: T Python ints, window radius per key frame (farthest first).
        num_heads: number of heads; d_r must be divisible by it.
        tiles_per_step: tiles processed per loop iteration.
        tile: query tile edge.

    Returns:
        float32 [B, h, w, d_r].
    """
    shape = tf.shape(queries)
    batch, h, w = shape[0], shape[1], shape[2]
    if queries.shape[1] is not None and queries.shape[2] is not None:
        h, w = queries.shape[1], queries.shape[2]
    d_r = queries.shape[-1]
    d_head = d_r // num_heads
    frames = len(radii)
    points = tile * tile

    index, valid, window = windows.halo_tables(h, w, radii, tile)
    n_tiles = windows.num_tiles(h, tile) * windows.num_tiles(w, tile)
    n_halo = tf.shape(index)[-1]
    rows = frames * h * w + 1  # table rows per batch element, the last one zeros

    # Head-major rows, so one gather yields [tiles, halo, heads, k|v, d_head]
    # and tile t of batch b reads rows b * rows + index[t].
    table = tf.reshape(key_values, [batch, frames * h * w, 2, num_heads, d_head])
    table = tf.concat([table, tf.zeros([batch, 1, 2, num_heads, d_head], table.dtype)], axis=1)
    table = tf.reshape(tf.transpose(table, [0, 1, 3, 2, 4]), [-1, num_heads, 2, d_head])
    offsets = tf.range(batch) * rows
    tile_index = tf.reshape(index[None] + offsets[:, None, None], [-1, n_halo])
    tile_valid = tf.reshape(tf.tile(valid[None], [batch, 1, 1]), [-1, n_halo])
    tile_queries = tf.reshape(windows.to_tiles(queries, h, w, tile), [-1, points, num_heads, d_head])
    tile_queries = tf.transpose(tile_queries, [0, 2, 1, 3])  # [tiles, H, points, dh]

    # Pad the tile count to a multiple of tiles_per_step (padded tiles read the
    # zero row and are dropped afterwards).
    total = batch * n_tiles
    steps = (total + tiles_per_step - 1) // tiles_per_step
    pad = steps * tiles_per_step - total
    tile_index = tf.pad(tile_index, [[0, pad], [0, 0]], constant_values=rows - 1)
    tile_valid = tf.pad(tile_valid, [[0, pad], [0, 0]])
    tile_queries = tf.pad(tile_queries, [[0, pad], [0, 0], [0, 0], [0, 0]])
    tile_index = tf.reshape(tile_index, [steps, tiles_per_step, n_halo])
    tile_valid = tf.reshape(tile_valid, [steps, tiles_per_step, n_halo])
    tile_queries = tf.reshape(tile_queries, [steps, tiles_per_step, num_heads, points, d_head])
    window_bias = tf.where(window, 0.0, _MASKED)  # [points, n_halo]

    def step(args):
        q, idx, ok = args
        kv = tf.transpose(tf.gather(table, idx), [0, 2, 3, 1, 4])  # [tiles, H, 2, halo, dh]
        logits = tf.matmul(q, kv[:, :, 0], transpose_b=True)  # [tiles, H, points, halo]
        logits += (window_bias[None] + tf.where(ok, 0.0, _MASKED)[:, None, :])[:, None]
        # Softmax with the normalisation applied after the value matmul: one pass
        # less over the [points, halo] block than tf.nn.softmax then matmul.
        e = tf.exp(logits - tf.reduce_max(logits, axis=-1, keepdims=True))
        return tf.matmul(e, kv[:, :, 1]) / tf.reduce_sum(e, axis=-1, keepdims=True)

    out = tf.map_fn(
        step,
        (tile_queries, tile_index, tile_valid),
        fn_output_signature=tf.TensorSpec([tiles_per_step, num_heads, points, d_head], tf.float32),
    )
    out = tf.reshape(out, [-1, num_heads, points, d_head])[:total]
    out = tf.reshape(tf.transpose(out, [0, 2, 1, 3]), [batch, n_tiles, points, d_r])
    return windows.from_tiles(out, h, w, tile)


def selected_windowed_attention(queries, positions, key_values, radii, num_heads, tiles_per_step=4):
    """Windowed attention of selected queries only, by the native kernel.

    Same result as `windowed_attention` on the full map gathered at
    `positions`, but only the N selected queries are computed, over their exact
    windows. Gradients (training) go through the pure-TF path.

    Args:
        queries: float32 [B, N, d_r], projected and scaled.
        positions: int32 [B, N], flat positions u * w + v (distinct per batch row).
        key_values: float32 [B, T, h, w, 2 * d_r].
        radii: T Python ints.
        num_heads: number of heads.
        tiles_per_step: for the pure-TF gradient path.

    Returns:
        float32 [B, N, d_r].
    """
    module = kernels.load()
    radii = [int(r) for r in radii]

    def reference(q, kv):
        shape = tf.shape(kv)
        batch, h, w = shape[0], shape[2], shape[3]
        if kv.shape[2] is not None and kv.shape[3] is not None:
            h, w = kv.shape[2], kv.shape[3]
        batch_index = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(positions))
        where = tf.stack([batch_index, positions], axis=-1)
        full = tf.scatter_nd(where, q, tf.stack([batch, h * w, q.shape[-1]]))
        out = windowed_attention(tf.reshape(full, [batch, h, w, q.shape[-1]]), kv, radii, num_heads, tiles_per_step)
        return tf.gather(tf.reshape(out, [batch, h * w, q.shape[-1]]), positions, batch_dims=1)

    @tf.custom_gradient
    def attend(q, kv):
        out = module.stt_windowed_attention(q, positions, kv, radii=radii, num_heads=num_heads)

        def grad(upstream):
            with tf.GradientTape() as tape:
                tape.watch([q, kv])
                again = reference(q, kv)
            return tape.gradient(again, [q, kv], output_gradients=upstream)

        return out, grad

    return attend(tf.cast(queries, tf.float32), tf.cast(key_values, tf.float32))


def full_attention(queries, key_values, num_heads, query_chunk=256):
    """Attention of every query to every key (the vanilla temporal transformer).

    Args:
        queries: float32 [B, N_q, d_r], projected and scaled.
        key_values: float32 [B, n_keys, 2 * d_r].
        num_heads: number of heads.
        query_chunk: queries per loop iteration; bounds the score block at
            heads * query_chunk * n_keys floats.

    Returns:
        float32 [B, N_q, d_r].
    """
    d_r = queries.shape[-1]
    k = _split_heads(key_values[..., :d_r], num_heads)  # [B, H, n_keys, dh]
    v = _split_heads(key_values[..., d_r:], num_heads)
    n_q = tf.shape(queries)[1]
    steps = (n_q + query_chunk - 1) // query_chunk
    padded = tf.pad(queries, [[0, 0], [0, steps * query_chunk - n_q], [0, 0]])
    chunks = tf.transpose(tf.reshape(padded, [tf.shape(queries)[0], steps, query_chunk, d_r]), [1, 0, 2, 3])

    def step(q):
        logits = tf.matmul(_split_heads(q, num_heads), k, transpose_b=True)
        return _merge_heads(tf.matmul(tf.nn.softmax(logits, axis=-1), v))

    out = tf.map_fn(step, chunks, fn_output_signature=tf.TensorSpec([None, query_chunk, d_r], tf.float32))
    out = tf.reshape(tf.transpose(out, [1, 0, 2, 3]), [tf.shape(queries)[0], -1, d_r])
    return out[:, :n_q]
