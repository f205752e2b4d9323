"""Every metric of the harness, defined once; tasks call these."""

from harness.metrics.clustering import adjusted_rand_index, clustering_accuracy, normalized_mutual_info

__all__ = ["adjusted_rand_index", "clustering_accuracy", "normalized_mutual_info"]
