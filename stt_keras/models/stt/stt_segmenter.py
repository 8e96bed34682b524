"""STTSegmenter: shared encoder on every frame -> Sparse Temporal Transformer -> decoder."""

import types

import keras
import numpy as np
import tensorflow as tf

from stt_keras import kernels, losses, streaming
from stt_keras.distribute import MultiWorkerFit
from stt_keras.layers import dense_masked
from stt_keras.layers.sparse_temporal_transformer import IMPLEMENTATIONS
from stt_keras.metrics import IGNORE_LABEL, MeanIoU
from stt_keras.models.stt import stt_builders
from stt_keras.models.stt.stt_presets import PRESETS, list_presets  # noqa: F401 (list_presets: its old home)


def _fully_built(layer):
    """True if `layer` and every layer inside it is built."""
    return layer.built and all(_fully_built(sublayer) for sublayer in layer._layers)


@keras.saving.register_keras_serializable(package="stt_keras")
class STTSegmenter(MultiWorkerFit, keras.Model):
    """Video semantic segmentation: logits for the last frame of a clip.

    With an STT (`stt` not None): input a clip [B, T+1, H, W, 3], uint8 or float in
    [0, 255], the LAST frame the one segmented. Every frame goes through the same
    encoder; the last frame's features are the query, the T earlier ones the keys
    (clip[:, 0] the farthest); the STT output goes through the decoder together
    with the last frame's skip features. Output: float32 logits [B, H, W, classes].

    Without an STT it is the per-frame baseline: input [B, H, W, 3] (a clip is
    accepted too and its last frame used).

    Args:
        encoder: PSPNetEncoder or BiSeNetEncoder.
        decoder: the matching decoder.
        stt: a SparseTemporalTransformer, or None for the per-frame model.
        stop_key_gradients: no gradient into the key frames' encoder passes
            (saves activation memory; the paper trains with gradients).
        aux_weight: weight of the auxiliary head's loss in `fit` (0 disables it).

    Example:
    >>> import numpy as np
    >>> model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=5)
    >>> clip = np.zeros((1, 4, 64, 64, 3), "uint8")
    >>> tuple(model(clip).shape)
    (1, 64, 64, 5)
    """

    # The built-in presets, name -> recipe (with its "description"), as KerasHub models list theirs.
    presets = types.MappingProxyType(PRESETS)

    def __init__(self, encoder, decoder, stt=None, stop_key_gradients=False, aux_weight=0.4, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.stt = stt
        self.stop_key_gradients = stop_key_gradients
        self.aux_weight = float(aux_weight)
        self.num_key_frames = 0 if stt is None else stt.num_key_frames
        self.num_classes = decoder.num_classes
        self._aux_logits = None

    # ----------------------------------------------------------- construction
    @classmethod
    def from_preset(cls, preset: str, num_classes: int | None = None, backbone_weights: str | None = None,
                    load_weights: bool = True, verify: bool = True, **overrides) -> "STTSegmenter":
        """A model from a built-in preset name or a preset directory, as in keras-hub.

        - A built-in name (see `list_presets()`), e.g. `from_preset("stt_psp18",
          num_classes=19)`: the architecture recipe, with random weights (or the
          backbone's pretrained ones, `backbone_weights`). `num_classes` is required.
        - A preset that starts from a KerasHub segmenter (`stt_segformer_b0`,
          `stt_deeplabv3plus_r50`, ...; docs/pretrained.md): loads the KerasHub preset
          it names; `image_segmenter_weights` replaces it (another KerasHub preset
          name or a local KerasHub preset directory), None builds the architecture
          with random weights. `num_classes` is optional (default: the preset's).
        - A directory written by `save_to_preset`: its config and trained weights
          (`load_weights=False`: the architecture only, freshly initialised).
          `num_classes`, if given, must match; no other arguments apply.
          `model.preset_metadata` then holds its metadata (classes, versions, ...).

        Args:
            preset: built-in preset name or preset directory.
            num_classes: output classes.
            backbone_weights: None, "imagenet" (KerasHub preset of the backbone) or a
                KerasHub preset directory; built-in names only.
            load_weights: for a directory, load its trained weights.
            verify: for a directory, check its files against the SHA-256 and sizes
                its metadata.json records, and refuse one that records none
                (verify=False: a hand-made preset directory).
            **overrides: built-in names only: STT arguments (top_ratio=0.3,
                key_selection="all", ...), encoder/decoder arguments
                (feature_channels, head_channels, output_stride, backbone) or
                stop_key_gradients / aux_weight.
        """
        if stt_builders.is_directory(preset):
            return stt_builders.from_directory(preset, num_classes, load_weights, verify,
                                               backbone_weights=backbone_weights, **overrides)
        return stt_builders.from_recipe(cls, preset, num_classes, backbone_weights, **overrides)

    @classmethod
    def from_image_segmenter(cls, segmenter_or_preset, stt="auto", num_classes=None, features_stage=None,
                             dtype=None, name=None):
        """An STT model (or its per-frame twin) from a KerasHub image segmenter, its trained weights untouched.

        The segmenter is split where its decoder's work stays per frame (SegFormer:
        after the MiT encoder, the STT on the stage `features_stage` map; the other
        stages are the decoder's skips) and its variables are copied one to one;
        its image converter's normalisation goes inside the encoder, so the model
        takes raw RGB in [0, 255], at any frame size. See docs/pretrained.md.

        Args:
            segmenter_or_preset: a KerasHub `SegFormerImageSegmenter` or
                `DeepLabV3ImageSegmenter`, a KerasHub preset name
                ("segformer_b0_cityscapes_1024", ...) or a local KerasHub preset
                directory (`save_to_preset`).
            stt: "auto" (a small block that starts as the identity: `TINY_STT` with
                `norm_first=True`, zero-initialised residual gates and as many heads, up to
                4, as keep each at least 8 channels wide: one on SegFormer-B0's stage 1),
                a dict of `SparseTemporalTransformer` arguments (over those defaults), a
                `SparseTemporalTransformer`, or None for the per-frame twin.
            num_classes: None keeps the segmenter's classes and classifier; another
                number gives a new, randomly initialised classifier.
            features_stage: SegFormer: the MiT stage (1..4) the STT mixes (default 1,
                the 1/4 map: docs/pretrained.md says why).
            dtype: dtype policy of the new layers (e.g. "mixed_float16").
        """
        return stt_builders.from_image_segmenter(cls, segmenter_or_preset, stt, num_classes, features_stage, dtype,
                                                 name)

    # ------------------------------------------------------------------ build
    def build(self, input_shape=None):
        """Creates every variable from shapes alone (nothing runs), as Keras' Functional models are built.

        The variables do not depend on the frame size, so the encoder is built for
        frames [None, None, None, 3], the STT and decoder for the encoder's output
        shapes. A part that is built already is left as it is, and one restored
        half-built from an older file (its sublayers build with `build_sublayer`)
        is finished.

        Args:
            input_shape: None, or the input's shape (a clip [B, T+1, H, W, 3], frames
                [B, H, W, 3] per frame): its rank, T+1 and channels are checked.
        """
        if input_shape is not None:
            self._check_shape(tuple(input_shape))
        frames = (None, None, None, 3)
        if not _fully_built(self.encoder):
            self.encoder.build(frames)
        shapes = self.encoder.compute_output_shape(frames)
        features = shapes.pop("features")
        if self.stt is not None and not self.stt.built:
            self.stt.build(features, (None, self.num_key_frames, *features[1:]))
        if not _fully_built(self.decoder):
            self.decoder.build(features, shapes)

    def get_build_config(self):
        # The input with free batch and frame sizes: any size builds the same variables.
        if not self.built:
            return None
        return {"input_shape": [None, self.num_key_frames + 1, None, None, 3] if self.stt is not None
                else [None, None, None, 3]}

    def build_from_config(self, config):
        # Files written before build() existed record the shape of the batch the model was first called on
        # (a per-frame model may have seen a clip); none of it changes the variables.
        self.build()

    # ------------------------------------------------------------------ call
    def _encode(self, frames, training):
        """Encoder on [N, H, W, 3]; returns (features, skips)."""
        out = self.encoder(frames, training=training)
        features = out.pop("features")
        return features, out

    def _check_shape(self, shape):
        """ValueError naming the problem unless `shape` is a clip [B, T+1, H, W, 3] (or, per frame, [B, H, W, 3])."""
        rank = shape.rank if isinstance(shape, tf.TensorShape) else len(shape)
        if self.stt is None:
            if rank not in (4, 5):
                raise ValueError(f"Expected frames [B, H, W, 3] or a clip [B, T+1, H, W, 3], got shape {shape}.")
        else:
            if rank != 5:
                raise ValueError(f"Expected a clip [B, T+1, H, W, 3] with T+1={self.num_key_frames + 1}, got shape {shape}.")
            if shape[1] is not None and shape[1] != self.num_key_frames + 1:
                raise ValueError(
                    f"Clip has {shape[1]} frames but this model needs T+1={self.num_key_frames + 1} "
                    f"(T={self.num_key_frames} key frames and the frame to segment)."
                )
        if shape[-1] != 3:
            raise ValueError(f"Frames must have 3 (RGB) channels, got shape {shape}.")
        if any(size is not None and size < 1 for size in shape[-3:-1]):
            raise ValueError(f"Frames must be at least 1 pixel high and wide, got shape {shape}.")

    def _check_input(self, x):
        self._check_shape(x.shape)
        if x.dtype not in (tf.uint8, tf.float16, tf.bfloat16, tf.float32, tf.float64):
            raise ValueError(f"Frames must be uint8 or float in [0, 255], got dtype {x.dtype.name}.")

    def call(self, inputs, training=None):
        x = tf.convert_to_tensor(inputs)
        self._check_input(x)
        size = (tf.shape(x)[-3], tf.shape(x)[-2])
        if x.shape[-3] is not None and x.shape[-2] is not None:
            size = (x.shape[-3], x.shape[-2])
        if self.stt is None:
            frame = x[:, -1] if x.shape.rank == 5 else x
            features, skips = self._encode(frame, training)
            mixed = features
        else:
            frames = x.shape[1]
            if self.stop_key_gradients:
                key_frames = tf.reshape(x[:, :-1], tf.concat([[-1], tf.shape(x)[2:]], 0))
                keys, _ = self._encode(key_frames, training)
                keys = tf.stop_gradient(keys)
                query, skips = self._encode(x[:, -1], training)
                keys = tf.reshape(keys, tf.concat([[-1, frames - 1], tf.shape(keys)[1:]], 0))
            else:
                all_frames = tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0))
                features, skips = self._encode(all_frames, training)
                features = tf.reshape(features, tf.concat([[-1, frames], tf.shape(features)[1:]], 0))
                skips = {
                    k: tf.reshape(v, tf.concat([[-1, frames], tf.shape(v)[1:]], 0))[:, -1] for k, v in skips.items()
                }
                query, keys = features[:, -1], features[:, :-1]
            mixed = self.stt(query, keys)
        self._aux_logits = None
        if training and self.aux_weight > 0 and getattr(self.decoder, "aux_head", False):
            # One decoder pass gives both: the context path runs (and moves its
            # BatchNorm statistics) once. The decoder builds its aux head with the
            # rest, so inference makes the same variables without running it.
            logits, aux = self.decoder(mixed, skips, output_size=size, training=training, return_aux=True)
            self._aux_logits = tf.cast(aux, tf.float32)
        else:
            logits = self.decoder(mixed, skips, output_size=size, training=training)
        return tf.cast(logits, tf.float32)

    def segment(self, frames) -> np.ndarray:
        """Class labels (int32, argmax over classes) of one image or of every frame of a video.

        - One image [H, W, 3] -> labels [H, W]. An STT model sees the image as its
          own history (the first-frame policy: a clip of T+1 copies).
        - A video: frames [N, H, W, 3] or a list/iterable of [H, W, 3] -> labels
          [N, H, W]. An STT model streams them (`StreamingSegmenter`: one encoder
          pass per frame, the first frame starts the stream); a per-frame model
          segments each frame alone.

        Example:
        >>> import numpy as np
        >>> model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=5)
        >>> model.segment(np.zeros((64, 96, 3), "uint8")).shape
        (64, 96)
        >>> model.segment(np.zeros((4, 64, 96, 3), "uint8")).shape
        (4, 64, 96)
        """
        if isinstance(frames, np.ndarray) or tf.is_tensor(frames):
            array = np.asarray(frames)
            if array.ndim == 3:
                clip = array[None, None] if self.stt is None else np.repeat(array[None, None], self.num_key_frames + 1, 1)
                logits = self(clip[:, -1] if self.stt is None else clip, training=False)
                return np.argmax(np.asarray(logits)[0], axis=-1).astype(np.int32)
            if array.ndim != 4:
                raise ValueError(f"segment() takes an image [H, W, 3] or frames [N, H, W, 3], got shape {array.shape}.")
            frames = list(array)
        if self.stt is None:
            labels = [np.argmax(np.asarray(self(np.asarray(f)[None], training=False))[0], -1) for f in frames]
            if not labels:
                raise ValueError("segment() got no frames.")
            return np.stack(labels).astype(np.int32)
        from stt_keras.streaming import StreamingSegmenter

        return StreamingSegmenter(self).segment(frames)

    # --------------------------------------------------------------- training
    def compile(self, optimizer="auto", loss="auto", *, metrics="auto", ignore_label=IGNORE_LABEL, **kwargs):
        """Configures training; every argument has a default, as keras-hub tasks do.

        `model.compile()` then `model.fit(dataset)` trains on batches of
        (clip uint8 [B, T+1, H, W, 3], labels int [B, H, W]) for an STT model, or
        (frames [B, H, W, 3], labels) for a per-frame one; the label is that of
        the clip's last frame, values 0..num_classes-1, and `ignore_label` (255)
        for pixels without a label.

        Args:
            optimizer: "auto" is SGD(learning_rate=0.01, momentum=0.9,
                weight_decay=1e-4), stt-train's optimizer without its polynomial
                decay (pass your own optimizer for a schedule).
            loss: "auto" is sparse categorical cross-entropy from logits that
                skips `ignore_label` pixels (mean over the labelled pixels). `fit`
                adds `aux_weight` times the same loss on the auxiliary head's
                logits (PSPNet/BiSeNet decoders). A loss object or function you
                pass is used for both; it receives logits. A loss given by name
                (e.g. "sparse_categorical_crossentropy") is refused with a
                ValueError: Keras computes those on probabilities
                (from_logits=False) and would count label 255 as a class.
            metrics: "auto" is `[stt_keras.metrics.MeanIoU(num_classes, ignore_label)]`.
            ignore_label: the label value of unlabelled pixels, for the "auto"
                loss and metric.
            **kwargs: the rest of `keras.Model.compile` (jit_compile, ...).

        Example:
        >>> model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=3)
        >>> model.compile()
        >>> config = model.loss.get_config()
        >>> config["from_logits"], config["ignore_class"], model.metrics_names
        (True, 255, ['loss', 'compile_metrics'])
        """
        if isinstance(optimizer, str) and optimizer == "auto":
            optimizer = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9, weight_decay=1e-4)
        if isinstance(loss, str) and loss == "auto":
            loss = losses.segmentation_loss(ignore_label)
        else:
            losses.check_loss(loss)
        if isinstance(metrics, str) and metrics == "auto":
            metrics = [MeanIoU(self.num_classes, ignore_label=ignore_label)]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit`, with `shuffle=False` by default for a `tf.data.Dataset` (clip pipelines shuffle
        themselves; Keras ignores `shuffle=True` for a dataset and warns about it)."""
        if isinstance(x, tf.data.Dataset) and "shuffle" not in kwargs and len(args) < 7:
            kwargs["shuffle"] = False
        return super().fit(x, y, *args, **kwargs)

    def compile_from_config(self, config):
        # Keras skips compile() on load for a model whose compile() is overridden;
        # this one takes the saved (already resolved) optimizer, loss and metrics.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        # The auxiliary head (computed in the same traced train step) adds its
        # loss with `aux_weight`, through the loss given to compile().
        # Keras' own wrapper of that loss (`_compile_loss`) reduces it exactly as
        # the main term (a plain function's ignore mask included).
        compiled = getattr(self, "_compile_loss", None)
        if training and self._aux_logits is not None and compiled is not None:
            loss = loss + self.aux_weight * tf.cast(compiled(y, self._aux_logits, sample_weight), loss.dtype)
        return loss

    # ------------------------------------------------------------ streaming
    # The state's layout is described once, in docs/models.md, "The streaming state contract".
    def summary(self, line_length=None, positions=None, print_fn=None, expand_nested=False, show_trainable=False,
                layer_range=None, size=None):
        """The model in one table: its input, then encoder, STT and decoder with their output per frame and
        their parameters (Keras's own layer table: `expand_nested=True`).

        Args:
            size: (H, W) the shapes are given for (default 512 x 1024).
            print_fn: where the lines go (default `print`).

        Example:
        >>> model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=5)
        >>> model.summary(size=(128, 256))  # doctest: +ELLIPSIS
        STTSegmenter 'stt_psp_tiny': one clip [batch, T+1 = 4, H, W, 3] -> logits [batch, H, W, 5] (...)
        part     layer                       output per frame at 128 x 256               parameters
        encoder  PSPNetEncoder               features [16, 32, 128], aux [16, 32, 96]       572,224
        stt      SparseTemporalTransformer   [16, 32, 128] (query + 3 key frames)            25,472
        decoder  PSPNetDecoder               logits [128, 256, 5]                           536,458
        total                                                                             1,134,154 (1,131,018 trainable)
        """
        if expand_nested or line_length or positions or show_trainable or layer_range:
            return super().summary(line_length=line_length, positions=positions, print_fn=print_fn,
                                   expand_nested=expand_nested, show_trainable=show_trainable, layer_range=layer_range)
        print_fn = print_fn or print
        if not self.built:  # parameter counts need the variables
            self.build()
        h, w = size or (512, 1024)

        def shape(value):
            return "[" + ", ".join(str(v) for v in tuple(value)[1:]) + "]"

        encoded = self.encoder.compute_output_shape((1, h, w, 3))
        features = encoded["features"]
        rows = [("encoder", type(self.encoder).__name__,
                 ", ".join(f"{k} {shape(v)}" for k, v in encoded.items()), self.encoder.count_params())]
        if self.stt is not None:
            rows.append(("stt", type(self.stt).__name__, f"{shape(features)} (query + {self.num_key_frames} key frames)",
                         self.stt.count_params()))
        rows.append(("decoder", type(self.decoder).__name__, f"logits [{h}, {w}, {self.num_classes}]",
                     self.decoder.count_params()))
        total = self.count_params()
        trainable = sum(int(np.prod(v.shape)) for v in self.trainable_weights)
        if self.stt is not None:
            head = (f"STTSegmenter {self.name!r}: one clip [batch, T+1 = {self.num_key_frames + 1}, H, W, 3] -> logits "
                    f"[batch, H, W, {self.num_classes}] (uint8 or float frames in [0, 255]; the last frame is segmented)")
        else:
            head = (f"STTSegmenter {self.name!r} (per frame): frames [batch, H, W, 3] -> logits "
                    f"[batch, H, W, {self.num_classes}] (uint8 or float in [0, 255])")
        widths = [8, max(26, max(len(r[1]) for r in rows) + 2), max(42, max(len(r[2]) for r in rows) + 2)]
        lines = [head, f"{'part':<{widths[0]}} {'layer':<{widths[1]}} {f'output per frame at {h} x {w}':<{widths[2]}}"
                       f"{'parameters':>12}"]
        lines += [f"{a:<{widths[0]}} {b:<{widths[1]}} {c:<{widths[2]}}{d:>12,}" for a, b, c, d in rows]
        lines.append(f"{'total':<{sum(widths) + 2}}{total:>12,} ({trainable:,} trainable)")
        for line in lines:
            print_fn(line)

    def compute_output_shape(self, input_shape):
        """[B, H, W, classes] (float32 logits) for a clip [B, T+1, H, W, 3] (or frames [B, H, W, 3])."""
        input_shape = tuple(input_shape)
        if len(input_shape) not in (4, 5):
            raise ValueError(f"Expected frames [B, H, W, 3] or a clip [B, T+1, H, W, 3], got shape {input_shape}.")
        return (input_shape[0], input_shape[-3], input_shape[-2], self.num_classes)

    def compute_output_spec(self, inputs, training=None):
        # The logits are float32 under every dtype policy (Keras would say the compute dtype).
        return keras.KerasTensor(self.compute_output_shape(inputs.shape), dtype="float32")

    # ---------------------------------------------------------------- streaming
    # The pure step lives on the model (it runs the encoder, the STT and the decoder); the stream that carries the
    # state from frame to frame, and the state's layout, live in stt_keras.streaming, which the layers also use
    # (so that module cannot import them back).
    def state_shape(self, height: int, width: int, packed: bool = False, batch: int = 1) -> tuple:
        """Shape of the streaming state for frames of height x width, from `compute_output_shape` (nothing runs).

        [batch, T, h, w, C] or, `packed`, [batch, h, w, T * C] (the exported steps'
        layout; `stt_keras.streaming.pack_frames` / `unpack_frames` convert). h x w is the
        encoder's feature map, C = 2 d_r the STT's projected key/value channels.
        See docs/models.md, "The streaming state contract".
        """
        if self.stt is None:
            raise ValueError("Only STT models stream; a per-frame model has no state.")
        for name, size in (("height", height), ("width", width)):
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(f"state_shape: {name} must be a positive int (frame pixels), got {size!r}.")
        features = self.encoder.compute_output_shape((batch, height, width, 3))["features"]
        _, h, w, channels = self.stt.compute_key_values_shape(features)
        frames = self.num_key_frames
        return (batch, h, w, frames * channels) if packed else (batch, frames, h, w, channels)

    def initial_state(self, batch: int, height: int, width: int, packed: bool = False) -> tf.Tensor:
        """All-zero float32 state of `state_shape` (start a stream with reset=True: its contents are not read)."""
        return tf.zeros(self.state_shape(height, width, packed=packed, batch=batch), tf.float32)

    def stream_step(self, frame, state, reset, implementation=None):
        """One streaming step as a pure function: (frame, state, reset) -> (logits, new_state).

        Encodes the frame once, attends from it to the state, decodes, and returns
        the state with this frame's projected key/value map appended (the oldest
        dropped). `reset` true: the state is first filled with this frame's own map
        (the first-frame policy). Layout, first-frame policy and what a step equals
        on a clip: docs/models.md, "The streaming state contract".

        Args:
            frame: [B, H, W, 3] uint8 or float in [0, 255].
            state: float32 of `state_shape(H, W)` or `state_shape(H, W, packed=True)`;
                the new state comes back in the same layout.
            reset: a Python bool, or a bool scalar (or [B]) tensor; "dense_masked" also takes
                float 0/1 (> 0.5 is true). With reset true the incoming state is not read at
                all: a NaN or inf state gives the same outputs as zeros. Under `tf.function` a
                Python bool is decided while tracing (a graph per value, no branch in it: the
                faster step on a CPU); a tensor makes one graph that branches.
            implementation: None (the STT layer's) or "sparse" / "dense_masked" (see
                `SparseTemporalTransformer`). "dense_masked" with a packed state is
                the delegate-friendly step the GPU export traces: no loops, top-k,
                scatter or rank-5 tensors, the STT ops under the name scope
                `dense_masked.SCOPE` (int8 export keeps them float).
        """
        if self.stt is None:
            raise ValueError("stream_step needs an STT model; a per-frame model has no state.")
        if implementation is None:
            implementation = self.stt.implementation
        elif implementation not in IMPLEMENTATIONS:
            raise ValueError(f"`implementation` must be one of {IMPLEMENTATIONS}, got {implementation!r}.")
        frame = tf.convert_to_tensor(frame)
        state = tf.convert_to_tensor(state)
        frames = self.num_key_frames
        if frame.shape.rank != 4:
            raise ValueError(f"stream_step expects a frame batch [B, H, W, 3], got shape {frame.shape}.")
        packed = state.shape.rank == 4
        if packed and state.shape[-1] is not None and state.shape[-1] % frames:
            raise ValueError(f"stream_step expects a packed state [B, h, w, T * C] with T={frames}, "
                             f"got shape {state.shape}.")
        if not packed and (state.shape.rank != 5 or (state.shape[1] is not None and state.shape[1] != frames)):
            raise ValueError(f"stream_step expects a state [B, T={frames}, h, w, C] (or packed [B, h, w, T * C]), "
                             f"got shape {state.shape}.")
        if frame.shape[0] is not None and state.shape[0] is not None and frame.shape[0] != state.shape[0]:
            raise ValueError(f"The frame batch ({frame.shape[0]}) and the state batch ({state.shape[0]}) differ.")
        size = (frame.shape[1], frame.shape[2])
        if implementation == "dense_masked":
            logits, new_state = self._dense_masked_step(frame, state if packed else streaming.pack_frames(state),
                                                        reset, size)
            return logits, new_state if packed else streaming.unpack_frames(new_state, frames)
        if packed:
            state = streaming.unpack_frames(state, frames)
        features, skips = self._encode(frame, False)
        current = self.stt.project_keys(features)[:, None]  # [B, 1, h, w, 2 d_r]
        if isinstance(reset, (bool, np.bool_)):
            # A Python flag decides while tracing: no cond and no select in the graph (`StreamingSegmenter`
            # traces one step of each kind). A cond around the state made STT-PSP18's CPU step 3-6% slower
            # (docs/performance.md, "Streaming latency of the whole model").
            if reset:
                state = tf.repeat(current, frames, axis=1)
        else:
            reset = tf.reshape(tf.cast(reset, tf.bool), [-1])
            # One flag for the batch: a step that does not reset builds no T copies of `current` (exported graphs
            # keep the select: no control flow enters the files).
            if reset.shape[0] == 1 and not kernels.exporting():
                incoming = state
                state = tf.cond(reset[0], lambda: tf.repeat(current, frames, axis=1), lambda: incoming)
            else:
                state = tf.where(tf.reshape(reset, [-1, 1, 1, 1, 1]), tf.repeat(current, frames, axis=1), state)
        mixed = self.stt.attend(features, state, implementation="sparse")
        logits = tf.cast(self.decoder(mixed, skips, output_size=size, training=False), tf.float32)
        new_state = tf.concat([state[:, 1:], current], axis=1)
        return logits, streaming.pack_frames(new_state) if packed else new_state

    def _dense_masked_step(self, frame, state, reset, size):
        """stream_step with a packed state and the dense-masked STT (float32 throughout the STT)."""
        features, skips = self._encode(frame, False)
        features = tf.cast(features, tf.float32)
        # One name scope around the STT and the state, so int8 export can keep exactly these ops in float.
        with tf.name_scope(dense_masked.SCOPE):
            current = dense_masked.project_keys(self.stt, features)
            reset = tf.reshape(tf.cast(reset, tf.float32), [-1, 1, 1, 1]) > 0.5
            fresh = tf.concat([current] * self.num_key_frames, axis=-1)
            # A select, not a 0/1 blend: NaN * 0 is NaN, and a reset must ignore the incoming state
            # whatever it holds. SELECT_V2 with a broadcast condition runs on LiteRT's GPU accelerator.
            state = tf.where(reset, fresh, state)
            mixed = dense_masked.attend(self.stt, features, state)
            # The ring-buffer shift belongs to the scope too (int8 export keeps the state float).
            next_state = tf.concat([state[..., current.shape[-1]:], current], axis=-1)
        logits = self.decoder(tf.cast(mixed, self.decoder.compute_dtype), skips, output_size=size, training=False)
        return tf.cast(logits, tf.float32), next_state

    def save_to_preset(self, preset_dir: str, classes: list | None = None, colors: list | None = None,
                       labels: list | None = None) -> None:
        """Writes this (trained) model as a preset directory that `from_preset(preset_dir)` loads.

        Writes config.json, model.weights.h5 and metadata.json (class count, the
        class names and RGB colours if given, the architecture preset name,
        library versions, checksums), atomically: the directory appears complete
        or not at all, and only an empty folder or an earlier preset is replaced.

        Args:
            preset_dir: the folder to write.
            classes: optional class names, one per class.
            colors: optional [r, g, b] (0..255) per class; needs `classes`.
            labels: the deprecated name of `classes`.

        Returns the metadata dict.
        """
        from stt_keras import saving

        classes = saving.old_labels_keyword(classes, labels)
        if classes is None and colors is None and getattr(self, "preset_metadata", None):
            classes, colors = self.preset_metadata.get("classes"), self.preset_metadata.get("colors")
        return saving.save_preset(self, preset_dir, classes=classes, colors=colors)

    # ---------------------------------------------------------------- config
    def get_config(self):
        return {
            **super().get_config(),  # name, trainable, dtype policy
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
            "stt": None if self.stt is None else keras.saving.serialize_keras_object(self.stt),
            "stop_key_gradients": self.stop_key_gradients,
            "aux_weight": self.aux_weight,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("encoder", "decoder", "stt"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
