"""Analysis: per-layer image-text alignment (mutual k-NN) of UniFork's two paths, of any HF LM, or of given features."""

from unifork.analysis.align import align_checkpoint, align_features, align_hf_model
from unifork.analysis.feature_alignment import feature_alignment, load_feature_pairs
from unifork.analysis.hf_alignment import hf_alignment
from unifork.analysis.knn_alignment import chance_alignment, layerwise_alignment, mutual_knn_alignment
from unifork.analysis.model_alignment import model_alignment
from unifork.analysis.plot import plot_alignment

__all__ = [
    "align_checkpoint", "align_features", "align_hf_model", "chance_alignment", "feature_alignment", "hf_alignment",
    "layerwise_alignment", "load_feature_pairs", "model_alignment", "mutual_knn_alignment", "plot_alignment",
]
