"""The STT block without loops, top-k or scatter: the `implementation="dense_masked"` of
`SparseTemporalTransformer` and `STTSegmenter.stream_step`.

The same function as the default ("sparse") implementation, built only from ops a
mobile GPU runs (LiteRT's GPU accelerator, the classic TFLite GPU delegate):
- No loops: the tile loops of the NSM score and the windowed attention become one
  batched computation over all tiles (WHILE is not a GPU op).
- No rank-5 tensors and no GATHER: tiles and their halos are cut from the zero-padded
  map by shifted slices, rank-4 reshapes, one transpose and concatenations (not by
  reshape/transpose through rank 6; LiteRT.js's WebGPU delegate cannot build 1-D-index
  gathers), and the key frames are packed along channels, [B, h, w, T * 2 d_r] (`pack_frames`).
- No top-k: the top `top_ratio` points are found by bisection on a score threshold
  (a fixed number of halvings, unrolled), giving a 0/1 mask. This selects exactly
  the top-k set unless the k-th and (k+1)-th scores are within float rounding of
  each other (ties), where top-k keeps the lower index and the mask keeps both.
- No scatter: every point goes through the transformer and the mask blends the
  result in (unselected points keep their features). That costs the attention,
  FFN and expansion of the unselected points too, in exchange for a graph a GPU
  runs in one piece.
- Masks are additive biases (-1e9: exactly zero weight after exp, -inf in float16
  with the same result), small and broadcast, never a folded [tiles, points, halo]
  constant (a map small enough to be one query block has one [points, frames x points]
  mask, `MAX_WHOLE_MAP_POINTS`). Large values never enter data tensors (see
  `windowed_attention`).
- Dense layers on maps are 1x1 convolutions (CONV_2D is every delegate's first op).

Workarounds for LiteRT's GPU accelerator (ai-edge-litert 2.3.0, docs/gpu_accelerator.md):
rank-0 operands are refused (every reduction keeps its axes, the bisection works on
[1, 1, 1, 1] tensors); rank-3 elementwise ops against a constant whose leading
dimension is > 1 compute wrongly (the NSM score runs at rank 4); tensors live in 2-D
textures of at most MAX_TEXTURE_SIDE texels a side (the attention runs in tile groups).

Differences from "sparse" besides ties: the spatial size must be static; only
key_selection="window"; non-finite features are not given the score -inf (a NaN
feature spreads to its neighbours instead of being passed through); batch elements
other than the first of a batch of 1 go through `tf.map_fn`. Differentiable: the
mask is piecewise constant (no gradient through the selection, as with "sparse").
"""


import numpy as np
import tensorflow as tf

from stt_keras.layers import block, nsm, validation, windows
from stt_keras.streaming import pack_frames, unpack_frames  # noqa: F401 (the state layout; also dense_masked.*)

NSM_TILE = windows.TILE  # query tile of the NSM score (8, as in the sparse implementation)
ATTENTION_TILES = (4, 8)  # query tiles of the windowed attention (t x t points share one halo per frame):
# `attention_tiling` picks one from the block's shape (on a CPU the attention is the halo copies and the
# logits, docs/performance.md; the masked extra logits are exactly zero weight)
ATTENTION_TILE = None  # None: `attention_tiling` chooses; 4, 8 or WHOLE_MAP forces that tile (tests, benchmarks)
WHOLE_MAP = 0  # the "tile" of a small map that is one query block: every frame's whole map is the halo, no copies
MAX_WHOLE_MAP_POINTS = 256  # its window mask is a constant [points, frames x points] (STT-BiSe18, 8 x 16: 0.46 MB)
BISECTION_STEPS = 40  # halvings of the threshold interval: far below float32 spacing
SCOPE = "stt_block"  # name scope of the STT ops in `STTSegmenter.stream_step`: int8 export keeps them float,
# except those under these sub-scopes (the key/value and query projections, W^O and the FFN: plain 1x1
# convolutions, quantized; the NSM score, top-k mask, windowed attention and LayerNorms stay float32:
# measured group by group, docs/export.md, "Int8")
QUANTIZABLE = ("keys", "query", "output", "ffn")
MAX_TEXTURE_SIDE = 8192  # WebGPU's default maxTextureDimension2D (SwiftShader's too)
MAX_HALO_ROWS = 4096  # key rows (tiles x halo points) per tile group (see windowed_attention)
EPS = 1e-6  # cosine denominator floor; unlike 1e-12 it survives float16 (a zero row must give 0, not 0/0)
_FILL = 1.0e9  # masked logits get -_FILL: exp underflows to exactly 0 (-inf in float16, same result)


# ---------------------------------------------------------------- constant tables
# Constants are kept small on purpose: a full [tiles, points, halo] mask is 30 MB at
# the paper's size and the converter folds (1 - mask) into a second copy. The masks
# here are per-tile [tiles, halo] or per-point-in-tile [points, halo] and meet by
# broadcasting.
def _tile_tables(h, w, radii, tile):
    """Numpy mask tables of `tile x tile` query blocks and their halos (windows.halo_tables' layout).

    Returns (valid [n_tiles, n_halo] bool: the halo point lies inside the map, window
    [tile^2, n_halo] bool: inside that query point's window, count [n_tiles, tile^2]:
    in-map window points). Tiles are row-major over the map; halos are frame-major, then
    row-major (the order `_halos` cuts them in).
    """
    with tf.init_scope():  # evaluate eagerly even while a tf.function traces
        _, valid, window = (t.numpy() for t in windows.halo_tables(h, w, radii, tile))
    count = np.einsum("pk,tk->tp", window.astype(np.float32), valid.astype(np.float32))
    return valid, window, np.maximum(count, 1.0).astype(np.float32)


# ------------------------------------------------------------ gather-free tiling
# Tiles and their halos are cut from the zero-padded map by slices, reshapes, one
# transpose and concatenations of shifted slices (no GATHER: LiteRT.js's WebGPU
# delegate cannot build 1-D-index gathers, and every op here is one LiteRT's GPU
# accelerator and LiteRT.js's WebGPU both run). Out-of-map points read the padding's
# zeros. Every tensor keeps its channels as the last axis (no spatial axis is folded
# into channels): the GPU stores tensors in 2-D textures of <= MAX_TEXTURE_SIDE texels.
# Tile groups: a rectangle of `rows x cols` tiles; inside a group tiles are ordered
# column-major ((j, i), the order the one transpose leaves them in).
def _pad_for_halos(x, h, w, tile, radius):
    """Zero-pads [1, h, w, C] so that the halo (side tile + 2 radius) of tile (i, j) is
    x[0, tile i : tile i + side, tile j : tile j + side] for every tile of the map."""
    blocks = -(-(tile + 2 * radius) // tile) - 1  # extra tile-sized blocks a halo reaches into
    bottom = tile * (windows.num_tiles(h, tile) + blocks) - h - radius
    right = tile * (windows.num_tiles(w, tile) + blocks) - w - radius
    return tf.pad(x, [[0, 0], [radius, bottom], [radius, right], [0, 0]])


def _halos(padded, tile, radius, top, left, rows, cols):
    """Halos [cols * rows, side, side, C] (side = tile + 2 radius) of the `rows x cols` tiles whose
    first is tile (top, left), from a map padded by `_pad_for_halos`; tiles column-major.

    A halo spans `blocks` tile-wide column (row) blocks; the concatenation of the `blocks`
    shifted block slices puts, next to every tile, the columns (rows) its halo reads, and a
    slice drops the surplus. radius = 0 cuts the tiles themselves.
    """
    side = tile + 2 * radius
    blocks = -(-side // tile)
    c = padded.shape[-1]
    hb, wb = rows + blocks - 1, cols + blocks - 1
    x = padded[:, tile * top: tile * (top + hb), tile * left: tile * (left + wb), :]
    x = tf.reshape(x, [tile * hb, wb, tile, c])  # [map rows, column blocks, tile columns, C]
    if blocks > 1:
        x = tf.concat([x[:, b: b + cols] for b in range(blocks)], axis=2)
    if blocks * tile != side:
        x = x[:, :, :side]
    x = tf.transpose(x, [1, 0, 2, 3])  # [cols, map rows, side, C]
    x = tf.reshape(x, [cols, hb, tile * side, c])  # [cols, row blocks, tile rows x side, C]
    if blocks > 1:
        x = tf.concat([x[:, b: b + rows] for b in range(blocks)], axis=2)
    if blocks * tile != side:
        x = x[:, :, :side * side]
    return tf.reshape(x, [cols * rows, side, side, c])


def _untile(tiled, tile, rows, cols):
    """[cols * rows, tile^2, C] (column-major tiles) -> the map block [1, rows tile, cols tile, C]."""
    c = tiled.shape[-1]
    x = tf.transpose(tf.reshape(tiled, [cols, rows * tile, tile, c]), [1, 0, 2, 3])
    return tf.reshape(x, [1, rows * tile, cols * tile, c])


def _tile_order(top, left, rows, cols, tiles_wide):
    """Row-major tile indices of a group in its column-major order (for the row-major tables)."""
    return np.array([(top + i) * tiles_wide + left + j for j in range(cols) for i in range(rows)])


def _tile_groups(tiles_high, tiles_wide, per_group):
    """Rectangles (top, left, rows, cols) of at most `per_group` tiles covering the tile grid:
    whole tile rows when a row fits, else runs of tiles along a row."""
    if per_group >= tiles_wide:
        band = min(tiles_high, per_group // tiles_wide)
        return [(top, 0, min(band, tiles_high - top), tiles_wide) for top in range(0, tiles_high, band)]
    return [(top, left, 1, min(per_group, tiles_wide - left))
            for top in range(tiles_high) for left in range(0, tiles_wide, per_group)]


def _assemble(blocks, h, w):
    """Map blocks [((top, left, rows, cols), [1, ., ., C])], row bands in order -> [1, h, w, C]."""
    bands, row = [], []
    for index, (group, block) in enumerate(blocks):
        row.append(block)
        if index + 1 == len(blocks) or blocks[index + 1][0][0] != group[0]:
            bands.append(row[0] if len(row) == 1 else tf.concat(row, axis=2))
            row = []
    x = bands[0] if len(bands) == 1 else tf.concat(bands, axis=1)
    return x[:, :h, :w, :] if (x.shape[1], x.shape[2]) != (h, w) else x


def _bias(mask):
    """0 where allowed, -_FILL elsewhere: exp() of a masked logit is exactly 0."""
    return np.where(mask, 0.0, -_FILL).astype(np.float32)


def _float16_split(values):
    """(high, low) float32 arrays, both exact in float16, with high + low = values to ~1e-7 relative."""
    values = np.asarray(values, np.float64)
    high = values.astype(np.float16).astype(np.float64)
    low = (values - high).astype(np.float16).astype(np.float64)
    return high.astype(np.float32), low.astype(np.float32)


def _float16_exact_scale(factor, power=256.0):
    """x -> x * factor with a float32-accurate factor from float16-exact constants.

    factor * power is split (power a power of two keeps the remainder out of float16's
    subnormals), x * high + x * low is formed and scaled back by the exact 1 / power.
    """
    high, low = _float16_split(np.asarray(factor, np.float64) * power)
    high, low = tf.constant(high), tf.constant(low)
    return lambda x: (x * high + x * low) * (1.0 / power)


def _static_size(x, what):
    h, w = x.shape[1], x.shape[2]
    if h is None or w is None:
        raise ValueError(f"implementation='dense_masked' needs a static height and width of `{what}`, "
                         f"got shape {x.shape} (its index tables are constants).")
    return h, w


def _per_example(fn, *tensors):
    """fn on batch-1 slices: called directly for a batch of 1 (the exported graph), else by map_fn."""
    if tensors[0].shape[0] == 1:
        return fn(*tensors)
    return tf.map_fn(lambda args: fn(*(a[None] for a in args))[0], tensors,
                     fn_output_signature=tf.TensorSpec(None, tf.float32))


# ------------------------------------------------------------------- the pieces
def nsm_score(features, radius):
    """NSM score [B, h, w, 1] of float32 features [B, h, w, d]; equals `nsm.nsm_score` (finite features).

    Out-of-map halo points read the zero row, so their dot products and cosines
    are exactly 0: they drop out of the masked sums by themselves, and their
    exp(0 - peak) terms are subtracted from the log-sum-exp by count. The peak
    is >= the point's own squared norm >= 0, so those terms never dominate.

    Everything runs at rank 4, [1, tiles, 64, .]: LiteRT's GPU accelerator gets a
    rank-3 elementwise op wrong when its constant operand has a leading dimension
    above 1 (it reads the constant's first slice for every tile; a [tiles, 64, 1]
    count divisor gave scores off by 170 of 290), and rank-4 operands are mapped
    the same way for data and constants.
    """
    features = tf.cast(features, tf.float32)
    h, w = _static_size(features, "features")
    windows._check_positive_int("radius", radius, allow_zero=True)
    return _per_example(lambda x: _nsm_score_one(x, radius, h, w), features)


def _nsm_score_one(features, radius, h, w):
    d = features.shape[-1]
    valid, window, count = _tile_tables(h, w, [radius], NSM_TILE)
    rows, cols = windows.num_tiles(h, NSM_TILE), windows.num_tiles(w, NSM_TILE)
    count = count[_tile_order(0, 0, rows, cols, cols)]  # the halos' tile order (column-major)
    tiles = rows * cols
    q = _halos(_pad_for_halos(features, h, w, NSM_TILE, 0), NSM_TILE, 0, 0, 0, rows, cols)
    q = tf.reshape(q, [1, tiles, NSM_TILE**2, d])  # [1, tiles, 64, d]
    halo = _halos(_pad_for_halos(features, h, w, NSM_TILE, radius), NSM_TILE, radius, 0, 0, rows, cols)
    halo = tf.reshape(halo, [1, tiles, window.shape[1], d])  # [1, tiles, halo, d]
    dots = tf.matmul(q, tf.transpose(halo, [0, 1, 3, 2]))  # [1, tiles, 64, halo]
    # Every reduction keeps its axis ([1, tiles, 64, 1]): dropping it costs a
    # shrink-axis slice, which the GPU delegate rejects.
    in_window = tf.constant(window.astype(np.float32)[None, None])  # [1, 1, 64, halo], broadcast over tiles
    outside = tf.constant((window.sum(-1)[None] - count)[None, ..., None].astype(np.float32))  # in-window, out-of-map
    # Constants that survive float16 storage (a float16 export stores every constant in float16,
    # and the converter turns a division by a constant into a multiplication by its reciprocal):
    # 1/count and log(count) are each split into a float16 part and a float16-exact remainder,
    # applied one after the other (relative error ~1e-7 instead of 5e-4). Rounded, they moved
    # scores by up to 5e-3, above the score gap at the top-k threshold (1e-3 and less):
    # STT-PSP18's float16 export flipped 2-6 of 2048 selected points per step, and PSPNet's
    # global pooling spread each flip over the whole map (labels 99.45-99.65% of Keras').
    per_count = _float16_exact_scale(1.0 / count[None, ..., None])
    log_high, log_low = _float16_split(np.log(count[None, ..., None]))
    bias = tf.constant(_bias(window)[None, None])
    peak = tf.reduce_max(dots + bias, axis=-1, keepdims=True)
    exp = tf.exp(dots + bias - peak)
    total = tf.reduce_sum(exp, axis=-1, keepdims=True) - outside * tf.exp(-peak)
    logsumexp = peak + tf.math.log(total)
    mean_dot = per_count(tf.reduce_sum(dots * in_window, axis=-1, keepdims=True))
    q_norm = tf.sqrt(tf.reduce_sum(q * q, axis=-1, keepdims=True))  # [1, tiles, 64, 1]
    halo_norm = tf.sqrt(tf.reduce_sum(halo * halo, axis=-1, keepdims=True))  # [1, tiles, halo, 1]
    norms = tf.matmul(q_norm, tf.transpose(halo_norm, [0, 1, 3, 2]))  # outer product as a matmul (not a GPU MUL)
    cosine = dots / tf.maximum(norms, EPS)
    cos_term = 1.0 - per_count(tf.reduce_sum(cosine * in_window, axis=-1, keepdims=True))
    score = (logsumexp - mean_dot + cos_term - tf.constant(log_high)) - tf.constant(log_low)  # [1, tiles, 64, 1]
    return _assemble([((0, 0, rows, cols), _untile(tf.reshape(score, [tiles, NSM_TILE**2, 1]), NSM_TILE, rows, cols))],
                     h, w)


def top_mask(scores, top_ratio):
    """0/1 float mask [B, h, w, 1] of the round(top_ratio * h * w) highest scores of each map.

    Bisection keeps lo <= k-th largest score < hi; after BISECTION_STEPS halvings
    the interval is below float32 spacing, so `scores >= lo` is the top-k set
    (plus any exact ties at the threshold).

    Every value stays a [B, 1, 1, 1] tensor: LiteRT's GPU accelerator refuses
    rank-0 operands ("bad input dims size: 0"), which a full reduction or a
    Python-float comparison would make.
    """
    h, w = _static_size(scores, "scores")
    top_ratio = validation.check_top_ratio(top_ratio)
    if validation.coverage(top_ratio, h * w) == validation.ALL:
        return tf.ones_like(scores)
    k = float(validation.query_count(top_ratio, h * w))
    lo = tf.reduce_min(scores, axis=[1, 2], keepdims=True)  # [B, 1, 1, 1]
    hi = tf.reduce_max(scores, axis=[1, 2], keepdims=True) + 1.0
    for _ in range(BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        count = tf.reduce_sum(tf.cast(scores >= mid, tf.float32), axis=[1, 2], keepdims=True)
        enough = tf.cast(count >= tf.fill([1, 1, 1, 1], k), tf.float32)
        lo = lo + enough * (mid - lo)
        hi = mid + enough * (hi - mid)
    return tf.cast(scores >= lo, tf.float32)


def attention_tiling(radii, d_r, num_heads, h=None, w=None):
    """(query tile, tiles per group) of `windowed_attention` for a block of this shape (and map size h x w).

    The tile of ATTENTION_TILES with the least estimated work per query point: its logits,
    num_heads * halo, against the key/value rows copied into halos, 2 d_r * halo / tile^2, counted
    twice (a copy is written, then read by the transposes; halo = sum over frames of
    (tile + 2 r)^2). Many channels and large radii (STT-PSP18: d_r 128, radii 5..1) take 8 x 8 tiles,
    whose halos copy each key fewer times; few channels (STT-SegFormer's stage 1: d_r 8, 2 per head)
    take 4 x 4, whose halos hold fewer extra keys, so fewer logits. Groups hold at most
    MAX_HALO_ROWS key rows (the GPU's textures), at least one tile. A map of at most
    MAX_WHOLE_MAP_POINTS points whose frames fit in MAX_HALO_ROWS rows may be one block
    (WHOLE_MAP, `(WHOLE_MAP, 1)`): its halo is every frame's whole map, no key is copied into
    halos (each once by the transpose), and there are no border tiles padded with keys outside the
    map. STT-BiSe18 at 256 x 512 (8 x 16 points, 7 frames) takes it: 896 keys per point against
    1668 on 8 x 8 tiles. ATTENTION_TILE, if set, forces the tile.
    """
    def halo(tile):
        return sum((tile + 2 * r) ** 2 for r in radii)

    work = {tile: num_heads * halo(tile) + 2 * (2 * d_r) * halo(tile) / tile**2 for tile in ATTENTION_TILES}
    if h is not None and h * w <= MAX_WHOLE_MAP_POINTS and len(radii) * h * w <= MAX_HALO_ROWS:
        work[WHOLE_MAP] = num_heads * len(radii) * h * w + 2 * (2 * d_r) * len(radii)
    tile = ATTENTION_TILE if ATTENTION_TILE is not None else min(work, key=work.get)
    return tile, 1 if tile == WHOLE_MAP else max(1, MAX_HALO_ROWS // halo(tile))


def windowed_attention(queries, state, radii, num_heads):
    """Every point's attention to its key windows, from the packed key/value frames.

    Tiles are processed in groups (rectangles of tiles) of at most MAX_HALO_ROWS key
    rows: LiteRT's GPU accelerator keeps tensors in 2-D textures, at most
    MAX_TEXTURE_SIDE texels a side on WebGPU's default limits (SwiftShader's too).
    Every tile's halo at once at the paper's size (STT-PSP18, 256x512: 128 tiles x
    932 keys) needed 4 x 238592 textures; the accelerator could not create them and
    the attention came out wrong. Groups of 8192 rows still failed (4 x 14912); 4096
    rows fit. At the tiny presets' sizes there is one group. Each group cuts every
    frame's halos at that frame's radius from the frame's own padded key/values.

    Args:
        queries: float32 [B, h, w, d_r], projected and scaled.
        state: float32 [B, h, w, T * 2 d_r] (keys then values per frame, oldest first).
    Returns:
        float32 [B, h, w, d_r], as `temporal_attention.windowed_attention`.
    """
    h, w = _static_size(queries, "queries")
    return _per_example(lambda q, s: _windowed_attention_one(q, s, radii, num_heads, h, w),
                        tf.cast(queries, tf.float32), tf.cast(state, tf.float32))


def _windowed_attention_one(queries, state, radii, num_heads, h, w):
    d_r = queries.shape[-1]
    frames = len(radii)
    channels = 2 * d_r
    if state.shape[-1] != frames * channels:
        raise ValueError(f"The packed key/values have {state.shape[-1]} channels; {frames} frames of "
                         f"2 * {d_r} need {frames * channels}.")
    tile, per_group = attention_tiling(radii, d_r, num_heads, h, w)
    if tile == WHOLE_MAP:
        return _whole_map_attention(queries, state, radii, num_heads, h, w)
    valid, window, _ = _tile_tables(h, w, radii, tile)
    points = tile**2
    # One padded copy of each frame's key/values, padded for its own radius, and of the queries; each
    # group cuts every frame's halos at that frame's radius from its own channels (cutting the largest
    # radius' halos of the whole state and a centred square per frame moved 1.5x the data: on a CPU
    # the attention is copies, docs/performance.md).
    frame_maps = [_pad_for_halos(state[..., frame * channels: (frame + 1) * channels], h, w, tile, r)
                  for frame, r in enumerate(radii)]
    queries = _pad_for_halos(queries, h, w, tile, 0)
    window_bias = tf.constant(_bias(window))  # [16, halo], broadcast over tiles and heads
    tiles_high, tiles_wide = windows.num_tiles(h, tile), windows.num_tiles(w, tile)
    blocks = []
    for group in _tile_groups(tiles_high, tiles_wide, per_group):
        top, left, rows, cols = group
        tiles = rows * cols
        order = _tile_order(top, left, rows, cols, tiles_wide)
        kv = []
        for frame_map, r in zip(frame_maps, radii):  # halos frame-major, as the window table
            square = _halos(frame_map, tile, r, top, left, rows, cols)  # [tiles, tile + 2r, tile + 2r, 2 d_r]
            kv.append(tf.reshape(square, [tiles, (tile + 2 * r) ** 2, channels]))
        kv = kv[0] if frames == 1 else tf.concat(kv, axis=1)  # [tiles, halo, 2 d_r]
        q = _halos(queries, tile, 0, top, left, rows, cols)  # [tiles, tile, tile, d_r]
        # Masks as small broadcast constants: outside each point's window (per point in
        # the tile), outside the map (per tile). The big fill value lives only in these
        # arithmetic ops, never in the key table, so an int8 model that quantizes the
        # data-movement ops around the float STT block keeps sane key ranges (a -1e9
        # key channel there cost 6% of int8 labels).
        in_map = tf.constant(valid[order].astype(np.float32)[:, None, None, :])
        outside = tf.constant(_bias(valid[order])[:, None, None, :])
        out = _block_attention(q, kv, tiles, points, num_heads,
                               lambda logits: (logits + window_bias) * in_map + outside)
        blocks.append((group, _untile(out, tile, rows, cols)))
    return _assemble(blocks, h, w)


def _block_attention(q, kv, blocks, points, num_heads, mask):
    """Softmax attention of `blocks` query blocks of `points` points each (q [blocks, ..., d_r]) to their key rows
    (kv [blocks, keys, 2 d_r], keys then values), heads split from the channels; `mask(logits)` adds the blocks'
    masks to the logits [blocks, heads, points, keys]. Returns [blocks, points, d_r]."""
    d_r = q.shape[-1]
    d_head, keys = d_r // num_heads, kv.shape[1]
    k, v = tf.split(kv, 2, axis=-1)
    q = tf.transpose(tf.reshape(q, [blocks, points, num_heads, d_head]), [0, 2, 1, 3])  # [blocks, heads, points, dh]
    k = tf.transpose(tf.reshape(k, [blocks, keys, num_heads, d_head]), [0, 2, 3, 1])  # [blocks, heads, dh, keys]
    v = tf.transpose(tf.reshape(v, [blocks, keys, num_heads, d_head]), [0, 2, 1, 3])  # [blocks, heads, keys, dh]
    logits = mask(tf.matmul(q, k))
    e = tf.exp(logits - tf.reduce_max(logits, axis=-1, keepdims=True))
    out = tf.matmul(e, v) / tf.reduce_sum(e, axis=-1, keepdims=True)  # [blocks, heads, points, dh]
    return tf.reshape(tf.transpose(out, [0, 2, 1, 3]), [blocks, points, d_r])


def _whole_map_attention(queries, state, radii, num_heads, h, w):
    """`_windowed_attention_one` for a map that is one query block: every point against every frame's
    whole map, the keys outside its windows masked by one constant bias [points, frames x points]."""
    d_r = queries.shape[-1]
    frames, channels, points = len(radii), 2 * d_r, h * w
    y, x = np.divmod(np.arange(points), w)
    near = [(np.abs(y[:, None] - y[None]) <= r) & (np.abs(x[:, None] - x[None]) <= r) for r in radii]
    window_bias = tf.constant(_bias(np.concatenate(near, axis=1))[None, None])  # [1, 1, points, frames x points]
    kv = [tf.reshape(state[..., frame * channels: (frame + 1) * channels], [1, points, channels])
          for frame in range(frames)]
    kv = kv[0] if frames == 1 else tf.concat(kv, axis=1)  # [1, frames x points, 2 d_r], frame-major as the mask
    out = _block_attention(queries, kv, 1, points, num_heads, lambda logits: logits + window_bias)
    return tf.reshape(out, [1, h, w, d_r])


def dense(x, kernel, bias):
    """A Dense layer on a map [B, h, w, C] as a 1x1 convolution, float32."""
    kernel = tf.cast(kernel, tf.float32)
    out = tf.nn.conv2d(x, kernel[None, None], strides=1, padding="VALID")
    return out + tf.cast(bias, tf.float32)


def layer_norm(x, gamma, beta, epsilon):
    """Layer norm over channels from plain means (no MOMENTS op), float32."""
    with tf.name_scope("norm"):
        mean = tf.reduce_mean(x, axis=-1, keepdims=True)
        centred = x - mean
        var = tf.reduce_mean(centred * centred, axis=-1, keepdims=True)
        return centred * tf.math.rsqrt(var + epsilon) * tf.cast(gamma, tf.float32) + tf.cast(beta, tf.float32)


def _standardise(x):
    """(x - mean) / std over each map [B, h, w, 1], as `nsm.combine_with_change` (finite maps)."""
    centred = x - tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    std = tf.sqrt(tf.reduce_mean(centred * centred, axis=[1, 2], keepdims=True))
    return centred / tf.maximum(std, 1e-6)


# ------------------------------------------------------------------- the block
def project_keys(stt, features):
    """Key/values [B, h, w, 2 d_r] of a frame's features, as `stt.project_keys` (1x1 convolution)."""
    kernel, bias = block.key_value_weights(stt)
    with tf.name_scope("keys"):
        return dense(tf.cast(features, tf.float32), kernel, bias)


def selection_scores(stt, features, packed):
    """[B, h, w, 1] scores as `stt.selection_scores`: NSM (optionally scale-free), plus the change term."""
    scored = features
    if stt.nsm_temperature is not None:
        scored = nsm.scale_free(features, stt.nsm_temperature, eps=EPS)
    scores = nsm_score(scored, stt.neighborhood_radius)
    if stt.change_weight > 0:
        d_r = stt.reduced_channels
        start = (stt.num_key_frames - 1) * 2 * d_r  # the nearest frame's keys in the packed state
        previous = packed[..., start: start + d_r]
        current = dense(features, *stt.weights_of("key"))
        dot = tf.reduce_sum(current * previous, axis=-1, keepdims=True)
        norms = tf.sqrt(tf.reduce_sum(current * current, axis=-1, keepdims=True)
                        * tf.reduce_sum(previous * previous, axis=-1, keepdims=True))
        change = 1.0 - dot / tf.maximum(norms, EPS)
        scores = _standardise(scores) + stt.change_weight * _standardise(change)
    return scores


def attend(stt, features, packed):
    """`stt.attend` for float32 features [B, h, w, d] and packed key/values [B, h, w, T * 2 d_r]:
    every point is computed, the top-`top_ratio` mask blends the selected ones in. Float32 out."""
    if stt.key_selection != "window":
        raise ValueError("implementation='dense_masked' supports key_selection='window' only.")
    features = tf.cast(features, tf.float32)
    h, w = _static_size(features, "query")
    coverage = validation.coverage(stt.top_ratio, h * w)
    if coverage == validation.NONE:
        return features
    packed = tf.cast(packed, tf.float32)

    def norm(x, gamma, beta):
        return layer_norm(x, gamma, beta, stt.layer_norm_epsilon)

    # The query, output and ffn name scopes (in `block`) and keys: the QUANTIZABLE sub-scopes.
    q = block.project_queries(stt, features, dense, norm)
    with tf.name_scope("attention"):
        attended = windowed_attention(q, packed, stt.radii, stt.num_heads)
    out = block.post_attention(stt, features, attended, dense, norm)
    if coverage == validation.ALL:  # every point is a query: no score, no mask
        return out
    with tf.name_scope("select"):
        mask = tf.stop_gradient(top_mask(selection_scores(stt, tf.stop_gradient(features), tf.stop_gradient(packed)),
                                         stt.top_ratio))
    return mask * out + (1.0 - mask) * features
