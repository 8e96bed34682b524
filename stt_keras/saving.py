"""Loading saved stt-keras models, always in Keras safe mode."""

import os

import keras


def load_model(path, compile=True):
    """Loads a `.keras` file saved from an stt-keras model (safe mode: no arbitrary code).

    Registers every stt-keras class first (layers, models and, when the training
    package is installed, the MeanIoU metric a compiled model refers to).
    """
    import stt_keras.layers  # noqa: F401  (registration)
    import stt_keras.models  # noqa: F401

    try:
        import training.metrics  # noqa: F401
    except ImportError:
        pass
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No model file at {path}.")
    return keras.saving.load_model(path, safe_mode=True, compile=compile)
