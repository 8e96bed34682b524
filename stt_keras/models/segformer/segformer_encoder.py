"""SegFormer's Mix Transformer (MiT) encoder at any frame size, with KerasHub's weights.

KerasHub 0.32's `MiTBackbone` is a functional model built for one static
`image_shape`, and its attention and Mix-FFN recover the token map's height and
width as sqrt(number of tokens), so it only runs square frames. This encoder has
the same layers and the same variables (copied one to one from a KerasHub
`MiTBackbone` by `copy_mit_weights`) and computes on [N, h, w, C] maps, so one
set of weights runs at every frame size: the training crop, the evaluation size
and every export size, square or not.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from stt_keras.models.blocks import build_sublayer, with_channels

# ImageNet mean/std as KerasHub's SegFormer image converters apply them: x * scale + offset on [0, 255] pixels.
IMAGENET_SCALE = tuple(1.0 / (255.0 * s) for s in (0.229, 0.224, 0.225))
IMAGENET_OFFSET = tuple(-m / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))


def _dims(x):
    """(N, h, w, C) with static ints where known and scalar tensors elsewhere."""
    dynamic = ops.shape(x)
    return tuple(s if s is not None else dynamic[i] for i, s in enumerate(x.shape))


def conv_size(size, kernel, stride):
    """Output size of MiT's overlapping patch embedding (zero padding kernel // 2, 'valid' conv)."""
    return None if size is None else (size + 2 * (kernel // 2) - kernel) // stride + 1


@keras.saving.register_keras_serializable(package="stt_keras")
class MiTBlock(keras.layers.Layer):
    """One MiT transformer block (KerasHub's `HierarchicalTransformerEncoder`) on a map [N, h, w, C].

    x + DropPath(Attention(LN(x))), then + DropPath(MixFFN(LN(x))): efficient
    self-attention whose keys and values come from the map downsampled by a
    `sr_ratio` x `sr_ratio` strided conv, and a Mix-FFN (Dense to 4C, 3x3
    depthwise conv, GELU, Dense back to C). The same variables as KerasHub's
    block, but h and w are the map's own, so any frame size works.

    Args:
        dim: channels C.
        num_heads: attention heads.
        sr_ratio: sequence reduction of the keys/values (1: none).
        drop_path: stochastic depth rate (training only).
        dropout: dropout on the attention weights and output (KerasHub: 0.1).

    Example:
    >>> import numpy as np
    >>> block = MiTBlock(16, num_heads=2, sr_ratio=2)
    >>> tuple(block(np.random.rand(1, 6, 10, 16).astype("float32")).shape)
    (1, 6, 10, 16)
    """

    def __init__(self, dim, num_heads=1, sr_ratio=1, drop_path=0.0, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.drop_path = float(drop_path)
        self.dropout_rate = dropout
        policy = self.dtype_policy
        self.norm1 = keras.layers.LayerNormalization(epsilon=1e-6, dtype=policy, name="norm1")
        self.q = keras.layers.Dense(dim, dtype=policy, name="q")
        self.k = keras.layers.Dense(dim, dtype=policy, name="k")
        self.v = keras.layers.Dense(dim, dtype=policy, name="v")
        self.proj = keras.layers.Dense(dim, dtype=policy, name="proj")
        self.attn_drop = keras.layers.Dropout(dropout, dtype=policy, name="attn_drop")
        self.proj_drop = keras.layers.Dropout(dropout, dtype=policy, name="proj_drop")
        if sr_ratio > 1:
            self.sr = keras.layers.Conv2D(dim, sr_ratio, strides=sr_ratio, dtype=policy, name="sr")
            self.sr_norm = keras.layers.LayerNormalization(epsilon=1e-5, dtype=policy, name="sr_norm")
        self.norm2 = keras.layers.LayerNormalization(epsilon=1e-6, dtype=policy, name="norm2")
        self.fc1 = keras.layers.Dense(4 * dim, dtype=policy, name="fc1")
        self.dwconv = keras.layers.DepthwiseConv2D(3, padding="same", dtype=policy, name="dwconv")
        self.fc2 = keras.layers.Dense(dim, dtype=policy, name="fc2")
        self.seed = keras.random.SeedGenerator(0) if drop_path > 0 else None

    def build(self, input_shape):
        n, h, w, c = input_shape
        for layer in (self.norm1, self.q, self.k, self.v, self.proj, self.norm2, self.fc1):
            build_sublayer(layer, input_shape)
        if self.sr_ratio > 1:
            build_sublayer(self.sr_norm, build_sublayer(self.sr, input_shape))
        build_sublayer(self.dwconv, with_channels(input_shape, 4 * c))
        build_sublayer(self.fc2, with_channels(input_shape, 4 * c))
        self.built = True

    def _drop_path(self, x, training):
        if not training or self.drop_path == 0.0:
            return x
        keep = ops.cast(keras.random.uniform((ops.shape(x)[0], 1, 1, 1), seed=self.seed) > self.drop_path, x.dtype)
        return x / (1.0 - self.drop_path) * keep

    def _reduce(self, x):
        """The `sr` conv (kernel = stride = sr_ratio, 'valid') as space-to-depth and one matmul.

        The same function with the same variables; computed this way because TF 2.21's
        CPU bfloat16 convolution with kernel = stride gives wrong values (test_layer_contract's
        mixed_bfloat16 case), and a matmul is what every delegate runs well.
        """
        s = self.sr_ratio
        n, h, w, c = _dims(x)
        x = tf.nn.space_to_depth(x[:, : (h // s) * s, : (w // s) * s], s)
        kernel = ops.reshape(ops.cast(self.sr.kernel, x.dtype), (s * s * c, self.dim))
        return ops.matmul(x, kernel) + ops.cast(self.sr.bias, x.dtype)

    def _attention(self, x, training):
        n, h, w, c = _dims(x)
        heads, head_dim = self.num_heads, self.dim // self.num_heads

        def split(t):  # [N, h', w', C] -> [N, heads, h' w', head_dim]
            return ops.transpose(ops.reshape(t, (n, -1, heads, head_dim)), (0, 2, 1, 3))

        q = split(self.q(x))
        kv = x
        if self.sr_ratio > 1:
            kv = self.sr_norm(self._reduce(x))
        k, v = split(self.k(kv)), split(self.v(kv))
        attn = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) * ops.cast(head_dim ** -0.5, q.dtype)
        attn = self.attn_drop(ops.softmax(attn, axis=-1), training=training)
        out = ops.reshape(ops.transpose(ops.matmul(attn, v), (0, 2, 1, 3)), (n, h, w, c))
        return self.proj_drop(self.proj(out), training=training)

    def call(self, x, training=None):
        x = x + self._drop_path(self._attention(self.norm1(x), training), training)
        y = self.fc2(ops.gelu(self.dwconv(self.fc1(self.norm2(x)))))
        return x + self._drop_path(y, training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"dim": self.dim, "num_heads": self.num_heads, "sr_ratio": self.sr_ratio,
                       "drop_path": self.drop_path, "dropout": self.dropout_rate})
        return config


@keras.saving.register_keras_serializable(package="stt_keras")
class SegFormerEncoder(keras.layers.Layer):
    """Frames [N, H, W, 3] in [0, 255] -> the four MiT stage maps, one of them as "features".

    The preprocessing of KerasHub's SegFormer image converter is inside:
    x * scale + offset per channel (ImageNet mean/std by default), so the
    encoder takes raw RGB like every model here. Stage i (1..4) is a map at
    stride 4, 8, 16, 32 with `hidden_dims[i - 1]` channels; the map of stage
    `features_stage` is returned as "features" (what the STT mixes over time),
    the other three under their names "P1".."P4" (the decoder's skips).

    Args:
        hidden_dims: channels per stage (B0: [32, 64, 160, 256]).
        depths: blocks per stage (B0: [2, 2, 2, 2]).
        num_heads: attention heads per stage ([1, 2, 5, 8]).
        sr_ratios: sequence reduction per stage ([8, 4, 2, 1]).
        patch_sizes: patch embedding kernels ([7, 3, 3, 3]).
        strides: patch embedding strides ([4, 2, 2, 2]).
        drop_path_rate: the last block's stochastic depth (linear from 0).
        features_stage: 1..4, the stage whose map the STT mixes.
        scale, offset: the per-channel input normalisation (x * scale + offset).

    Example:
    >>> import numpy as np
    >>> encoder = SegFormerEncoder([8, 16, 24, 32], [1, 1, 1, 1], [1, 2, 3, 4])
    >>> out = encoder(np.zeros((1, 64, 96, 3), "uint8"))
    >>> {k: tuple(v.shape) for k, v in sorted(out.items())}
    {'P1': (1, 16, 24, 8), 'P2': (1, 8, 12, 16), 'P3': (1, 4, 6, 24), 'features': (1, 2, 3, 32)}
    """

    def __init__(self, hidden_dims, depths, num_heads, sr_ratios=(8, 4, 2, 1), patch_sizes=(7, 3, 3, 3),
                 strides=(4, 2, 2, 2), drop_path_rate=0.1, features_stage=4, scale=IMAGENET_SCALE,
                 offset=IMAGENET_OFFSET, **kwargs):
        super().__init__(**kwargs)
        stages = len(hidden_dims)
        for name, value in (("depths", depths), ("num_heads", num_heads), ("sr_ratios", sr_ratios),
                            ("patch_sizes", patch_sizes), ("strides", strides)):
            if len(value) != stages:
                raise ValueError(f"SegFormerEncoder: {name} has {len(value)} entries, hidden_dims {stages}.")
        if features_stage not in range(1, stages + 1):
            raise ValueError(f"SegFormerEncoder: features_stage must be 1..{stages}, got {features_stage!r}.")
        self.hidden_dims = [int(d) for d in hidden_dims]
        self.depths = [int(d) for d in depths]
        self.num_heads = [int(d) for d in num_heads]
        self.sr_ratios = [int(d) for d in sr_ratios]
        self.patch_sizes = [int(d) for d in patch_sizes]
        self.strides = [int(d) for d in strides]
        self.drop_path_rate = float(drop_path_rate)
        self.features_stage = int(features_stage)
        self.scale = [float(v) for v in np.broadcast_to(scale, (3,))]
        self.offset = [float(v) for v in np.broadcast_to(offset, (3,))]
        policy = self.dtype_policy
        rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths))
        self.patch_embeds, self.patch_norms, self.blocks, self.stage_norms = [], [], [], []
        index = 0
        for i, dim in enumerate(self.hidden_dims):
            self.patch_embeds.append(keras.layers.Conv2D(
                dim, self.patch_sizes[i], strides=self.strides[i], dtype=policy, name=f"patch_embed_{i}"))
            self.patch_norms.append(keras.layers.LayerNormalization(epsilon=1e-5, dtype=policy, name=f"patch_norm_{i}"))
            self.blocks.append([
                MiTBlock(dim, self.num_heads[i], self.sr_ratios[i], drop_path=float(rates[index + k]), dtype=policy,
                         name=f"block_{i}_{k}")
                for k in range(self.depths[i])
            ])
            index += self.depths[i]
            self.stage_norms.append(keras.layers.LayerNormalization(epsilon=1e-5, dtype=policy, name=f"stage_norm_{i}"))

    def _stage_shapes(self, frames_shape):
        n, h, w = frames_shape[0], frames_shape[1], frames_shape[2]
        shapes = []
        for i, dim in enumerate(self.hidden_dims):
            h, w = conv_size(h, self.patch_sizes[i], self.strides[i]), conv_size(w, self.patch_sizes[i], self.strides[i])
            shapes.append((n, h, w, dim))
        return shapes

    def build(self, frames_shape=None):
        if frames_shape is None:
            return
        shape = tuple(frames_shape)
        for i, out in enumerate(self._stage_shapes(frames_shape)):
            pad = self.patch_sizes[i] // 2
            padded = (shape[0], None if shape[1] is None else shape[1] + 2 * pad,
                      None if shape[2] is None else shape[2] + 2 * pad, shape[3])
            build_sublayer(self.patch_embeds[i], padded)
            build_sublayer(self.patch_norms[i], out)
            for block in self.blocks[i]:
                build_sublayer(block, out)
            build_sublayer(self.stage_norms[i], out)
            shape = out
        self.built = True

    def call(self, frames, training=None):
        x = ops.cast(frames, self.compute_dtype)
        x = x * ops.cast(self.scale, x.dtype) + ops.cast(self.offset, x.dtype)
        maps = {}
        for i in range(len(self.hidden_dims)):
            pad = self.patch_sizes[i] // 2
            x = ops.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
            x = self.patch_norms[i](self.patch_embeds[i](x))
            for block in self.blocks[i]:
                x = block(x, training=training)
            x = self.stage_norms[i](x)
            maps[f"P{i + 1}"] = x
        maps["features"] = maps.pop(f"P{self.features_stage}")
        return maps

    def compute_output_shape(self, frames_shape):
        maps = {f"P{i + 1}": s for i, s in enumerate(self._stage_shapes(frames_shape))}
        maps["features"] = maps.pop(f"P{self.features_stage}")
        return maps

    def get_config(self):
        config = super().get_config()
        config.update({
            "hidden_dims": self.hidden_dims, "depths": self.depths, "num_heads": self.num_heads,
            "sr_ratios": self.sr_ratios, "patch_sizes": self.patch_sizes, "strides": self.strides,
            "drop_path_rate": self.drop_path_rate, "features_stage": self.features_stage,
            "scale": self.scale, "offset": self.offset,
        })
        return config
