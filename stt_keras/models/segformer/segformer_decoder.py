"""SegFormer's all-MLP decoder (KerasHub's `SegFormerBackbone` head plus the segmenter's classifier)."""

import keras
from keras import ops

from stt_keras.models.blocks import SegmentationDecoder, build_sublayer, resize_to, with_channels


@keras.saving.register_keras_serializable(package="stt_keras")
class SegFormerDecoder(SegmentationDecoder):
    """(features, skips, output size) -> logits [N, H, W, num_classes], the SegFormer head.

    Every stage map goes through its own Dense to `projection_filters`, is
    resized (bilinear) to the stride-4 map's size, the four are concatenated
    (deepest first, as KerasHub does), fused by a 1x1 conv + BatchNorm + ReLU,
    then dropout, a 1x1 classifier and a bilinear resize to the output size.
    `features` is the map of stage `features_stage` (the STT output in an STT
    model); `skips` holds the other stages as `SegFormerEncoder` returns them.
    The variables are those of KerasHub's SegFormer head, copied one to one.

    Args:
        num_classes: output classes.
        hidden_dims: channels of the four stage maps.
        projection_filters: the MLP width (B0/B1: 256).
        features_stage: 1..4, which stage `features` is.
        dropout: dropout before the classifier (KerasHub: 0.1).

    Example:
    >>> import numpy as np
    >>> decoder = SegFormerDecoder(5, [8, 16, 24, 32], projection_filters=16)
    >>> skips = {f"P{i}": np.random.rand(1, 32 // 2 ** i, 32 // 2 ** i, c).astype("float32")
    ...          for i, c in ((1, 8), (2, 16), (3, 24))}
    >>> features = np.random.rand(1, 2, 2, 32).astype("float32")
    >>> tuple(decoder(features, skips, output_size=(64, 64)).shape)
    (1, 64, 64, 5)
    """

    def __init__(self, num_classes, hidden_dims, projection_filters=256, features_stage=4, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.hidden_dims = [int(d) for d in hidden_dims]
        self.projection_filters = projection_filters
        self.features_stage = int(features_stage)
        self.dropout_rate = dropout
        self.aux_head = False
        policy = self.dtype_policy
        self.mlps = [keras.layers.Dense(projection_filters, dtype=policy, name=f"linear_{i}")
                     for i in range(len(self.hidden_dims))]
        self.fuse = keras.layers.Conv2D(projection_filters, 1, use_bias=False, dtype=policy, name="fuse")
        self.fuse_bn = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, dtype=policy, name="fuse_bn")
        self.dropout = keras.layers.Dropout(dropout, dtype=policy, name="dropout")
        self.classifier = keras.layers.Conv2D(num_classes, 1, dtype=policy, name="classifier")

    def _maps(self, features, skips):
        maps = dict(skips)
        maps[f"P{self.features_stage}"] = features
        missing = [f"P{i + 1}" for i in range(len(self.hidden_dims)) if f"P{i + 1}" not in maps]
        if missing:
            raise ValueError(f"SegFormerDecoder {self.name!r} needs skips {missing} (the encoder's other stages); "
                             f"got {sorted(skips)}.")
        return [maps[f"P{i + 1}"] for i in range(len(self.hidden_dims))]

    def build(self, features_shape=None, skips_shape=None):
        if features_shape is None or skips_shape is None:
            return
        shapes = self._maps(features_shape, skips_shape)
        for mlp, shape in zip(self.mlps, shapes):
            build_sublayer(mlp, shape)
        fused = with_channels(shapes[0], self.projection_filters * len(shapes))
        build_sublayer(self.fuse_bn, build_sublayer(self.fuse, fused))
        build_sublayer(self.classifier, with_channels(shapes[0], self.projection_filters))
        self.built = True

    def call(self, features, skips, output_size, training=None, return_aux=False):
        self.check_return_aux(return_aux)
        if not self.classifier.built:
            self.build(tuple(features.shape), keras.tree.map_structure(lambda t: tuple(t.shape), skips))
        maps = self._maps(features, skips)
        h, w = maps[0].shape[1], maps[0].shape[2]
        if h is None or w is None:
            h, w = ops.shape(maps[0])[1], ops.shape(maps[0])[2]
        outs = []
        for i, (mlp, x) in enumerate(zip(self.mlps, maps)):
            x = mlp(x)
            if i > 0:  # the stride-4 map is already at that size (KerasHub's resize of it is the identity)
                x = resize_to(x, h, w)
            outs.append(x)
        x = ops.concatenate(outs[::-1], axis=-1)
        x = ops.relu(self.fuse_bn(self.fuse(x), training=training))
        return resize_to(self.classifier(self.dropout(x, training=training)), *output_size)

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "hidden_dims": self.hidden_dims,
                       "projection_filters": self.projection_filters, "features_stage": self.features_stage,
                       "dropout": self.dropout_rate})
        return config
