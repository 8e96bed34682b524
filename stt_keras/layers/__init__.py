"""STT core layers: NSM query selection, key windows, the sparse temporal transformer."""

from stt_keras.layers.nsm import NSMQuerySelection, nsm_score
from stt_keras.layers.sparse_temporal_transformer import SparseTemporalTransformer
from stt_keras.layers.windows import key_set_size, key_window_radii

__all__ = [
    "NSMQuerySelection",
    "SparseTemporalTransformer",
    "key_set_size",
    "key_window_radii",
    "nsm_score",
]
