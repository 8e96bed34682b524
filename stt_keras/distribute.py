"""Keras 3 `fit()` / `evaluate()` under MultiWorkerMirroredStrategy: the two fixes a model needs.

`MultiWorkerFit` is a mixin for a `keras.Model` subclass (`STTSegmenter` uses it);
under any other strategy it changes nothing. Needed up to Keras 3.15 at least
(keras-team/keras#20585); stt-train's `--distribute multiworker` runs on it.
"""

import tensorflow as tf


def is_multi_worker(strategy):
    """MultiWorkerMirroredStrategy across several workers: where Keras 3.15's fit() needs help."""
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode())


def logs_for_multi_worker_reduce(logs):
    """Scalar step logs as shape [1] under MultiWorkerMirroredStrategy.

    Keras 3 (up to 3.15 at least) reduces a multi-worker step's outputs with
    strategy.reduce("MEAN", value, axis=0), which fails on the scalar loss and
    metric values every step returns. Given a length-1 axis, that reduce is the
    mean over all replicas of all workers and comes back a scalar, as Keras
    expects. Every other strategy gets the logs unchanged.
    """
    if not is_multi_worker(tf.distribute.get_strategy()):
        return logs
    return {k: tf.reshape(v, [1]) if getattr(v, "shape", None) is not None and v.shape.rank == 0 else v
            for k, v in logs.items()}


class MultiWorkerFit:
    """Mixin for a keras.Model: `fit()` and `evaluate()` run under MultiWorkerMirroredStrategy."""

    def train_step(self, data):
        return logs_for_multi_worker_reduce(super().train_step(data))

    def test_step(self, data):
        return logs_for_multi_worker_reduce(super().test_step(data))

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3 (up to 3.15 at least, keras-team/keras#20585) builds the metrics
        # and optimizer before fit() from a first batch that it averages across
        # replicas with strategy.reduce("MEAN"); under MultiWorkerMirroredStrategy
        # that eager reduce cannot take a PerReplica batch and fit() fails at once.
        # Only the batch's shapes and dtypes are needed, so give it the per-replica
        # element spec instead (no batch is consumed, no collective is run).
        if iterator is not None and is_multi_worker(self._distribute_strategy):
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(
                    lambda spec: getattr(spec, "_value_specs", (spec,))[0], it.element_spec)
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
