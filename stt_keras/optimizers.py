"""The optimizers stt-train builds, with one learning-rate multiplier for a part of the model.

A temporal block added to a trained segmenter starts from nothing while the rest is already
trained, so it is given a larger learning rate (stt-train --stt-lr-multiplier). The multiplier
lives in the optimizer, not in the gradients: scaling gradients is a learning-rate multiplier
for SGD but does nothing for Adam, which divides every gradient by its own running size.

- `SGD`: momentum SGD, the paper's recipe (and stt-train's default).
- `AdamW`: SegFormer's own fine-tuning optimizer, the usual choice for a pretrained
  transformer encoder (stt-train --optimizer adamw).

Both are the Keras optimizers with `scale_learning_rate(variables, multiplier)`; the multiplier
applies to the gradient step only (decoupled weight decay stays at the base rate) and is a
training setting, not saved with the optimizer's config.

>>> import keras
>>> from stt_keras.optimizers import SGD
>>> fast, slow = keras.Variable([1.0]), keras.Variable([1.0])
>>> optimizer = SGD(learning_rate=0.1)
>>> optimizer.scale_learning_rate([fast], 10.0)
>>> optimizer.apply([keras.ops.ones(1), keras.ops.ones(1)], [fast, slow])
>>> [round(float(v.numpy()[0]), 4) for v in (fast, slow)]
[0.0, 0.9]
"""

import keras


class _PartLearningRate:
    """Mixin for a Keras optimizer: the variables given to `scale_learning_rate` step at
    `multiplier` x the learning rate."""

    def scale_learning_rate(self, variables, multiplier):
        """Makes `variables` learn at `multiplier` x the learning rate (1.0: as the others)."""
        multiplier = float(multiplier)
        if not multiplier > 0:
            raise ValueError(f"a learning-rate multiplier must be positive, got {multiplier}.")
        variables = list(variables)
        if multiplier != 1.0 and not variables:  # an unbuilt layer has no variables yet: nothing would be scaled
            raise ValueError(f"a learning-rate multiplier of {multiplier} was given no variables (build the layer first).")
        self._lr_multiplier = multiplier
        self._scaled_keys = {self._var_key(v) for v in variables} if multiplier != 1.0 else set()

    def update_step(self, gradient, variable, learning_rate):
        if self._var_key(variable) in getattr(self, "_scaled_keys", ()):
            learning_rate = learning_rate * self._lr_multiplier
        return super().update_step(gradient, variable, learning_rate)


@keras.saving.register_keras_serializable(package="stt_keras")
class SGD(_PartLearningRate, keras.optimizers.SGD):
    """`keras.optimizers.SGD` with `scale_learning_rate` (see the module docstring)."""


@keras.saving.register_keras_serializable(package="stt_keras")
class AdamW(_PartLearningRate, keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` with `scale_learning_rate` (see the module docstring)."""
